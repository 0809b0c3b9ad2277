from .console import config_summary, environment_summary, model_summary, setup_run
from .hooks import BestCheckpointHook, EarlyProgressHook, PrototypeStatisticsHook, PrototypeSyncCheckHook
from .launch import create_ddp_model, launch
from .train_loop import ProtoSegTrainLoop
from .run_lock import OutputDirInUseError, output_dir_lock
from .trainer import Trainer, evaluate_checkpoint

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
    "output_dir_lock",
    "OutputDirInUseError",
    "model_summary",
    "setup_run",
]
