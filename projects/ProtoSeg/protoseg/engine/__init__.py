from .console import config_summary, environment_summary, model_summary, setup_run
from .hooks import BestCheckpointHook, EarlyProgressHook, PrototypeStatisticsHook, PrototypeSyncCheckHook
from .launch import create_ddp_model, launch
from .train_loop import ProtoSegTrainLoop
from .trainer import Trainer, evaluate_checkpoint, setup_cfg

__all__ = [
    "BestCheckpointHook",
    "EarlyProgressHook",
    "PrototypeStatisticsHook",
    "PrototypeSyncCheckHook",
    "ProtoSegTrainLoop",
    "Trainer",
    "config_summary",
    "create_ddp_model",
    "environment_summary",
    "evaluate_checkpoint",
    "launch",
    "model_summary",
    "setup_cfg",
    "setup_run",
]
