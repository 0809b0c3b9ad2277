"""Configuration keys of the training loop and its hooks; called by ``add_protoseg_config``."""

__all__ = ["add_engine_config"]


def add_engine_config(cfg):
    """Add the training-loop keys (best checkpoint, non-finite steps) to ``cfg`` in place."""
    # Metric that selects the best checkpoint (model_best.pth) at each evaluation; "" disables.
    cfg.SOLVER.BEST_CHECKPOINT_METRIC = "sem_seg/mIoU"
    # A step whose loss is NaN/Inf is skipped (parameters, optimizer state and prototypes left
    # unchanged, a warning logged); training stops with FloatingPointError after this many
    # consecutive such steps. 0: stop at the first (Detectron2's behaviour).
    cfg.SOLVER.NONFINITE_SKIP_LIMIT = 10
