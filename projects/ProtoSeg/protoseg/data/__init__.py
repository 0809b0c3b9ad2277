from .datasets import datasets_root, load_sem_seg_folder, register_all, register_sem_seg_dataset, register_toy_scenes

__all__ = ["datasets_root", "load_sem_seg_folder", "register_all", "register_sem_seg_dataset", "register_toy_scenes"]
