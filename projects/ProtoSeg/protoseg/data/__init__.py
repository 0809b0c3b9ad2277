from .datasets import (
    datasets_root,
    default_stuff_colors,
    load_sem_seg_folder,
    register_folder_dataset,
    register_sem_seg_dataset,
    register_toy_scenes,
)
from .builtin import register_all
from .mapper import SemSegDatasetMapper
from .transforms import build_test_augmentation, build_train_augmentation

__all__ = [
    "datasets_root",
    "default_stuff_colors",
    "load_sem_seg_folder",
    "register_all",
    "register_folder_dataset",
    "register_sem_seg_dataset",
    "register_toy_scenes",
    "SemSegDatasetMapper",
    "build_train_augmentation",
    "build_test_augmentation",
]
