from .hooks import BestCheckpointHook, PrototypeStatisticsHook, PrototypeSyncCheckHook
from .launch import create_ddp_model, launch
from .train_loop import ProtoSegTrainLoop
from .trainer import Trainer, evaluate_checkpoint, setup_cfg

__all__ = [
    "BestCheckpointHook",
    "PrototypeStatisticsHook",
    "PrototypeSyncCheckHook",
    "ProtoSegTrainLoop",
    "Trainer",
    "create_ddp_model",
    "evaluate_checkpoint",
    "launch",
    "setup_cfg",
]
