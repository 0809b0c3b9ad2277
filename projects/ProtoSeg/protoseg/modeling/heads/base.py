"""What every segmentation head of the project shares: decoder -> classifier -> CE / prediction."""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import masked_cross_entropy

__all__ = ["DecoderClassifierHead", "resize_labels"]


def resize_labels(labels: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of label maps (B, H, W) -> (B, h, w), int64, any label range."""
    resized = F.interpolate(labels[:, None].float(), size=size, mode="nearest")
    return resized[:, 0].long()


class DecoderClassifierHead(nn.Module):
    """A ``SEM_SEG_HEAD``: a decoder (features -> embedding map) and a classifier on top.

    Subclasses implement :meth:`classify` (embedding map -> class scores at the decoder's stride)
    and may add losses in :meth:`auxiliary_losses`. Follows Detectron2's head contract: in training,
    returns ``(None, dict of named scalar losses)``; in inference ``(logits (B, C, H, W) at input
    resolution, {})``.

    An optional ``aux_head`` (mmseg's auxiliary FCN head, ``decoders/auxiliary.py``) reads the
    backbone features in training only and adds its weighted CE as ``loss_aux``. Every head has it
    through this class, the ProtoSeg head included: the paper's ProtoSeg models keep it (their
    parameter counts are the baseline's minus only the C-way classifier).
    """

    def __init__(
        self,
        decoder: nn.Module,
        *,
        num_classes: int,
        ignore_value: int,
        loss_weight: float = 1.0,
        aux_head: Optional[nn.Module] = None,
    ):
        super().__init__()
        self.decoder = decoder
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.aux_head = aux_head

    def classify(self, embedding: torch.Tensor, targets: Optional[torch.Tensor] = None):
        """(B, D, h, w) embedding (and, in training, the (B, H, W) labels) -> ((B, C, h, w) class
        scores, anything the losses need)."""
        raise NotImplementedError

    def auxiliary_losses(self, scores: torch.Tensor, extras, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {}

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None):
        """
        Args:
            features: backbone outputs by name.
            targets: (B, H, W) int64 labels at input resolution (training only), ignore value where
                unlabelled.
        """
        scores, extras = self.classify(self.decoder(features), targets if self.training else None)
        if not self.training:
            stride = self.decoder.out_stride
            return F.interpolate(scores, scale_factor=stride, mode="bilinear", align_corners=False), {}
        if targets is None:
            raise ValueError(f"{type(self).__name__} needs targets (the 'sem_seg' of each input) in training")
        upsampled = F.interpolate(scores, size=targets.shape[-2:], mode="bilinear", align_corners=False)
        losses = {"loss_ce": self.loss_weight * masked_cross_entropy(upsampled, targets, self.ignore_value)}
        losses.update(self.auxiliary_losses(scores, extras, targets))
        if self.aux_head is not None:
            losses["loss_aux"] = self.aux_head(features, targets)
        return None, losses
