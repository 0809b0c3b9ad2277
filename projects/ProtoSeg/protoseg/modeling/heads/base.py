"""What every segmentation head of the project shares: decoder -> class scores -> CE / prediction."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .cross_entropy import class_weight_tensor, upsampled_cross_entropy

__all__ = ["DecoderClassifierHead"]


class DecoderClassifierHead(nn.Module):
    """A ``SEM_SEG_HEAD``: a decoder (features -> embedding map) and a classifier on top.

    Subclasses implement :meth:`class_scores` (embedding map -> class scores at the decoder's
    stride) and may override :meth:`training_scores` to add losses of their own. Follows
    Detectron2's head contract: in training, returns ``(None, dict of named scalar losses)``; in
    inference ``(logits (B, C, H, W) at input resolution, {})``.

    An optional ``aux_head`` (mmseg's auxiliary FCN head, ``heads/auxiliary.py``) reads the
    backbone features in training only and adds its weighted CE as ``loss_aux``. Every head has it
    through this class, the ProtoSeg head included: the paper's ProtoSeg models keep it (their
    parameter counts are the baseline's minus only the C-way classifier).

    The CE (and the auxiliary head's) weights its classes by ``class_weights`` when given (a
    weighted mean, as the reference code's ``ce_weight``). The class scores are upsampled
    bilinearly with ``upsample_align_corners``, for the CE to the labels' size and at inference to
    the input's size (the reference code: align_corners=True in both,
    lib/loss/loss_proto.py and segmentor/tester.py ``ss_test``).
    """

    def __init__(
        self,
        decoder: nn.Module,
        *,
        num_classes: int,
        ignore_value: int,
        loss_weight: float = 1.0,
        aux_head: Optional[nn.Module] = None,
        class_weights: Optional[Sequence[float]] = None,
        upsample_align_corners: bool = False,
    ):
        """
        Args:
            class_weights: C positive CE weights (``MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS``), None or
                empty: unweighted.
            upsample_align_corners: ``MODEL.SEM_SEG_HEAD.UPSAMPLE_ALIGN_CORNERS``.
        """
        super().__init__()
        self.decoder = decoder
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.aux_head = aux_head
        self.upsample_align_corners = upsample_align_corners
        # checked here (ValueError naming the key); a buffer, so that it moves with the module (no
        # copy in the step), not persistent: a config value, not in checkpoints
        self.register_buffer("class_weights", class_weight_tensor(class_weights, num_classes), persistent=False)

    @staticmethod
    def loss_config(cfg) -> Dict[str, object]:
        """The CE arguments of this class from ``cfg``, for the subclasses' ``from_config``."""
        head = cfg.MODEL.SEM_SEG_HEAD
        return {"class_weights": tuple(head.CLASS_WEIGHTS), "upsample_align_corners": head.UPSAMPLE_ALIGN_CORNERS}

    def prototype_memories(self) -> List[nn.Module]:
        """The prototype memories this head keeps (none for a parametric head); what the trainer's
        hooks read statistics from and check across processes."""
        return []

    def pixel_embeddings(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Backbone features -> (B, D, h, w): the vectors the classifier reads, at the decoder's
        stride (here the decoder's output; the prototype head's after its projection and
        normalisation). For adding a class from examples (``protoseg/new_class.py``)."""
        return self.decoder(features)

    def class_scores(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) embedding -> (B, C, h, w) class scores (logits at the decoder's stride)."""
        raise NotImplementedError

    def inference_scores(self, embedding: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Inference with maps beside the class scores: (B, D, h, w) embedding -> ((B, C, h, w)
        class scores, named (B, 1, h, w) maps at the same stride). Here none; the prototype head
        gives "nearest_similarity" (the unknown score ``nearest_prototype``)."""
        return self.class_scores(embedding), {}

    def training_scores(
        self, embedding: torch.Tensor, targets: torch.Tensor
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Training: (B, D, h, w) embedding and (B, H, W) labels -> ((B, C, h, w) class scores for
        the CE, the head's own named losses). By default the scores of :meth:`class_scores` and no
        loss of its own."""
        return self.class_scores(embedding), {}

    def upsample_to_input(self, scores: torch.Tensor, image_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """(B, C, h, w) scores at the decoder's stride s -> (B, C, H, W), bilinear with
        ``upsample_align_corners``, straight to the input size (H, W) = ``image_size`` (as mmseg's
        and the reference's ``ss_test`` do); s*h x s*w when it is not given (it is the same size
        when H and W are multiples of s)."""
        if image_size is None:
            stride = self.decoder.out_stride
            image_size = (scores.shape[-2] * stride, scores.shape[-1] * stride)
        return F.interpolate(scores, size=tuple(image_size), mode="bilinear", align_corners=self.upsample_align_corners)

    def forward(
        self,
        features: Dict[str, torch.Tensor],
        targets: Optional[torch.Tensor] = None,
        image_size: Optional[Tuple[int, int]] = None,
        with_maps: bool = False,
    ):
        """
        Args:
            features: backbone outputs by name.
            targets: (B, H, W) int64 labels at input resolution (training only), ignore value where
                unlabelled.
            image_size: (H, W) of the input batch, the size of the logits at inference (default:
                the decoder's stride times the scores' size).
            with_maps: inference: return the maps of :meth:`inference_scores`, upsampled as the
                logits, as the second value (else {}).
        """
        embedding = self.decoder(features)
        if not self.training and with_maps:
            scores, maps = self.inference_scores(embedding)
            return self.upsample_to_input(scores, image_size), {k: self.upsample_to_input(v, image_size)
                                                                for k, v in maps.items()}
        if not self.training:
            return self.upsample_to_input(self.class_scores(embedding), image_size), {}
        if targets is None:
            raise ValueError(f"{type(self).__name__} needs targets (the 'sem_seg' of each input) in training")
        scores, own_losses = self.training_scores(embedding, targets)
        ce = upsampled_cross_entropy(
            scores, targets, self.ignore_value, self.class_weights, align_corners=self.upsample_align_corners
        )
        losses = {"loss_ce": self.loss_weight * ce, **own_losses}
        if self.aux_head is not None:
            losses["loss_aux"] = self.aux_head(features, targets)
        return None, losses
