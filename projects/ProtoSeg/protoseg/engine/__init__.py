from .hooks import PrototypeStatisticsHook
from .trainer import Trainer, build_train_augmentation, evaluate_checkpoint, setup_cfg

__all__ = ["PrototypeStatisticsHook", "Trainer", "build_train_augmentation", "evaluate_checkpoint", "setup_cfg"]
