"""The names of the four backbone stages, shared by every backbone family and by the keys that
name backbone features."""

__all__ = ["ALL_STAGES", "stage_indices"]

#: res2..res5, strides 4/8/16/32 (Detectron2's ResNet names)
ALL_STAGES = ["res2", "res3", "res4", "res5"]


def stage_indices(out_features, key: str) -> dict:
    """{name: stage index 0..3} of the ``out_features`` read from config key ``key``; ValueError
    naming the key if the list is empty or has a name outside res2..res5."""
    if not out_features or any(f not in ALL_STAGES for f in out_features):
        raise ValueError(f"{key} must be a non-empty subset of {ALL_STAGES}, got {list(out_features)}")
    return {f: ALL_STAGES.index(f) for f in out_features}
