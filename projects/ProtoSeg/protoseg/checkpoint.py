"""Checkpoint loading that refuses a prototype memory of the wrong shape.

fvcore's Checkpointer skips any tensor whose shape differs from the model's with a warning. For the
prototype buffer that would silently leave random prototypes in a model that then evaluates as if
it were trained, so a mismatch is an error that says which config keys decide the shape.
"""
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["ProtoSegCheckpointer", "check_prototype_shapes"]

PROTOTYPE_SUFFIX = "memory.prototypes"


def check_prototype_shapes(model_state: dict, checkpoint_state: dict, source: str = "checkpoint") -> None:
    """Raise ValueError if a prototype buffer of ``checkpoint_state`` has another (C, K, D) than the
    model's."""
    for key, value in checkpoint_state.items():
        if not key.endswith(PROTOTYPE_SUFFIX) or key not in model_state:
            continue
        expected = tuple(model_state[key].shape)
        if tuple(value.shape) != expected:
            raise ValueError(
                f"{source}: prototype buffer '{key}' has shape {tuple(value.shape)} (C, K, D) but the model "
                f"expects {expected}. Check MODEL.SEM_SEG_HEAD.NUM_CLASSES (C), MODEL.PROTOSEG.NUM_PROTOTYPES "
                f"(K) and the decoder width (D) against the config the checkpoint was trained with."
            )


class ProtoSegCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose loading fails clearly on a prototype shape mismatch."""

    def _load_model(self, checkpoint):
        check_prototype_shapes(self.model.state_dict(), checkpoint["model"], self._current_path)
        return super()._load_model(checkpoint)

    def load(self, path, *args, **kwargs):
        self._current_path = path
        return super().load(path, *args, **kwargs)
