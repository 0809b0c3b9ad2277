"""The meta-architecture: Detectron2's ``SemanticSegmentor`` with the test protocols of the paper
(Sec. 5.1: whole image with the short side resized for ADE20K / COCO-Stuff, sliding window for
Cityscapes) and optional multi-scale + flip test-time augmentation."""
import logging
from functools import partial
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from detectron2.config import configurable
from detectron2.data import transforms as T
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

from ..config_checks import check_config
from .heads.base import DecoderClassifierHead
from .unknown_score import UNKNOWN_SCORES, logit_unknown_score

__all__ = ["ProtoSegSemanticSegmentor", "sliding_windows", "upsampled_argmax", "upsampled_scores", "LABEL_CHUNK_BYTES"]

logger = logging.getLogger("protoseg")

#: inference resizes the class scores to the output size as many classes at a time as fit in
#: this many bytes there (upsampled_argmax, upsampled_scores)
LABEL_CHUNK_BYTES = 128 * 2**20
#: chunks of classes start at multiples of this: PyTorch's CPU bilinear kernel computes some
#: resizes (downscaling) over vectors of channels, and a channel's value depends on its place in
#: them; chunks aligned to 16 (AVX-512: 16 floats) give every channel the one-call value
CHANNEL_ALIGNMENT = 16


def sliding_windows(
    height: int, width: int, size: Tuple[int, int], stride: Tuple[int, int]
) -> List[Tuple[int, int, int, int]]:
    """Windows ``(y0, y1, x0, x1)`` over an (height, width) image, as mmseg's ``slide_inference``:
    a grid of ``stride`` steps, the last row/column shifted back to end at the border, windows
    clipped to the image where it is smaller than ``size``. Every pixel is in at least one window
    when ``stride <= size``."""
    (win_h, win_w), (step_h, step_w) = size, stride
    rows = max(height - win_h + step_h - 1, 0) // step_h + 1
    cols = max(width - win_w + step_w - 1, 0) // step_w + 1
    boxes = []
    for i in range(rows):
        for j in range(cols):
            y1, x1 = min(i * step_h + win_h, height), min(j * step_w + win_w, width)
            boxes.append((max(y1 - win_h, 0), y1, max(x1 - win_w, 0), x1))
    return boxes


def _class_chunks(
    scores: torch.Tensor, upsample: Callable[[torch.Tensor], torch.Tensor], max_chunk_bytes: int
) -> Iterator[Tuple[int, torch.Tensor]]:
    """(first class, ``upsample(scores[first : first + n])``) over the classes of (C, h, w)
    ``scores``: n a multiple of ``CHANNEL_ALIGNMENT`` such that a chunk at the output size has at
    most ``max_chunk_bytes`` (at least ``CHANNEL_ALIGNMENT`` classes)."""
    first = upsample(scores[:CHANNEL_ALIGNMENT])
    yield 0, first
    per_block = first[0].numel() * first.element_size() * CHANNEL_ALIGNMENT
    step = max(1, max_chunk_bytes // per_block) * CHANNEL_ALIGNMENT
    for start in range(CHANNEL_ALIGNMENT, scores.shape[0], step):
        yield start, upsample(scores[start : start + step])


def upsampled_argmax(
    scores: torch.Tensor,
    upsample: Callable[[torch.Tensor], torch.Tensor],
    max_chunk_bytes: int = LABEL_CHUNK_BYTES,
) -> torch.Tensor:
    """``upsample(scores).argmax(0)`` without holding ``upsample(scores)``.

    Args:
        scores: (C, h, w) class scores.
        upsample: a resize that treats every channel on its own, (c, h, w) -> (c, H, W) (bilinear
            interpolation, cropping).
        max_chunk_bytes: the classes are resized a chunk at a time, each chunk at most this many
            bytes at (H, W) (at least ``CHANNEL_ALIGNMENT`` classes).
    Returns:
        (H, W) int64 labels. Every class is resized by the same call on fewer (aligned) channels,
        so its values are those of the one-call resize, and a running maximum keeps the lower
        class on a tie, as ``argmax``: the labels are equal to ``upsample(scores).argmax(0)``.
        Memory: one chunk and two (H, W) maps instead of (C, H, W).
    """
    best = labels = None
    for start, chunk in _class_chunks(scores, upsample, max_chunk_bytes):
        value, index = chunk.max(dim=0)
        if best is None:
            best, labels = value, index
            continue
        better = value > best
        best = torch.where(better, value, best)
        labels = torch.where(better, index + start, labels)
    return labels


def upsampled_scores(
    scores: torch.Tensor,
    upsample: Callable[[torch.Tensor], torch.Tensor],
    max_chunk_bytes: int = LABEL_CHUNK_BYTES,
) -> torch.Tensor:
    """``upsample(scores)`` ((C, h, w) -> (C, H, W), each channel on its own, as
    :func:`upsampled_argmax`'s), equal to it, computed into its output a chunk of classes at a
    time: (C, H, W) plus one chunk, not the resize's temporaries of every class."""
    out = None
    for start, chunk in _class_chunks(scores, upsample, max_chunk_bytes):
        if out is None:
            out = chunk.new_empty((scores.shape[0], *chunk.shape[1:]))
        out[start : start + chunk.shape[0]] = chunk
    return out


@META_ARCH_REGISTRY.register()
class ProtoSegSemanticSegmentor(SemanticSegmentor):
    """``SemanticSegmentor`` (training unchanged) whose inference runs:

    * "whole": Detectron2's (the batch padded to ``backbone.size_divisibility``, logits cropped
      back), when neither sliding window nor TTA is on, except that the project's heads resize
      their scores straight to the padded batch's size (as mmseg and the reference code do; the
      same as Detectron2's stride-times-size when the size is a multiple of the stride);
    * "slide": windows of ``window_size`` every ``window_stride`` (:func:`sliding_windows`), each
      through the backbone and ``sem_seg_head`` (``window_batch_size`` windows per pass), the logits
      of overlapping windows averaged. An image smaller than the window is padded at the
      bottom/right with 0 after normalisation (the pixel mean) and the logits cropped back;
    * TTA: for every short side of ``test_min_sizes`` (0: the image as given) and, with
      ``test_flip``, its horizontal flip, the logits (whole or slide, flipped back) are resized to
      the output size and turned into softmax probabilities, which are averaged (as mmseg's
      ``aug_test``).

    Output, as Detectron2's: ``[{"sem_seg": (C, height, width)}]`` with ``height``/``width`` of the
    input dict (the original image size; default: the image tensor's), logits without TTA,
    probabilities with TTA; the resize to that size goes a chunk of classes at a time
    (:func:`upsampled_scores`); with ``unknown_score`` also ``"unknown_score"``: (height, width)
    (:mod:`.unknown_score`). :meth:`predict_labels` gives only the argmax, without the
    (C, height, width) tensor (the demo and the web page).
    """

    @configurable
    def __init__(
        self,
        *,
        sliding_window: bool = False,
        window_size: Tuple[int, int] = (768, 768),
        window_stride: Tuple[int, int] = (512, 512),
        window_batch_size: int = 4,
        test_min_sizes: Sequence[int] = (),
        test_max_size: int = 4000,
        test_flip: bool = False,
        label_chunk_bytes: int = LABEL_CHUNK_BYTES,
        unknown_score: str = "",
        **kwargs,
    ):
        """
        Args:
            sliding_window: "slide" rather than "whole" inference.
            window_size, window_stride: (height, width) of a window and of a step between windows.
            window_batch_size: windows per forward pass (bounds memory on large images).
            test_min_sizes: TTA short sides (long side at most ``test_max_size``); empty: one pass
                at the input's size.
            test_flip: TTA with the horizontal flip of every scale.
            label_chunk_bytes: :meth:`predict_labels` resizes the class scores to the output size
                in chunks of classes of at most this many bytes (:func:`upsampled_argmax`).
            unknown_score: ``TEST.UNKNOWN_SCORE``, one of ``UNKNOWN_SCORES`` ("" none).
            kwargs: ``SemanticSegmentor``'s (backbone, sem_seg_head, pixel_mean, pixel_std).
        """
        super().__init__(**kwargs)
        window_size, window_stride = tuple(window_size), tuple(window_stride)
        if sliding_window and not all(0 < s <= w for s, w in zip(window_stride, window_size)):
            raise ValueError(
                f"TEST.SLIDING_WINDOW.STRIDE {window_stride} must be positive and at most SIZE {window_size}, "
                f"or some pixels are in no window"
            )
        if window_batch_size < 1:
            raise ValueError(f"TEST.SLIDING_WINDOW.BATCH_SIZE must be >= 1, got {window_batch_size}")
        self.sliding_window = sliding_window
        self.window_size, self.window_stride = window_size, window_stride
        self.window_batch_size = window_batch_size
        self.test_min_sizes = tuple(test_min_sizes)
        self.test_max_size = test_max_size
        self.test_flip = test_flip
        self.label_chunk_bytes = label_chunk_bytes
        self.unknown_score = unknown_score
        self._check_unknown_score()
        logger.info("Test protocol: %s", self.test_protocol)

    @classmethod
    def from_config(cls, cfg):
        check_config(cfg)  # every setting, before anything is built: one error listing all problems
        ret = super().from_config(cfg)
        window, aug = cfg.TEST.SLIDING_WINDOW, cfg.TEST.AUG
        ret.update(
            sliding_window=window.ENABLED,
            window_size=tuple(window.SIZE),
            window_stride=tuple(window.STRIDE),
            window_batch_size=window.BATCH_SIZE,
            test_min_sizes=tuple(aug.MIN_SIZES) if aug.ENABLED else (),
            test_max_size=aug.MAX_SIZE,
            test_flip=aug.ENABLED and aug.FLIP,
            unknown_score=cfg.TEST.UNKNOWN_SCORE,
        )
        return ret

    @property
    def uses_tta(self) -> bool:
        return bool(self.test_min_sizes) or self.test_flip

    @property
    def test_protocol(self) -> str:
        """e.g. "SS whole", "MS (384, 512)+flip slide 768x768 stride 512x512": label results with it."""
        mode = "whole"
        if self.sliding_window:
            mode = "slide {}x{} stride {}x{}".format(*self.window_size, *self.window_stride)
        scales = f"MS {self.test_min_sizes}" if len(self.test_min_sizes) > 1 else "SS"
        return f"{scales}{'+flip' if self.test_flip else ''} {mode}"

    def prototype_memories(self) -> List[torch.nn.Module]:
        """The model's prototype memories (the head's; empty for a parametric head): the interface
        through which the trainer reads prototype statistics and checks them across processes."""
        return self.sem_seg_head.prototype_memories()

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            return super().forward(batched_inputs)
        if self.unknown_score == "nearest_prototype":
            return self.nearest_prototype_inference(batched_inputs)
        outputs = self.closed_set_inference(batched_inputs)
        for output in outputs if self.unknown_score else ():
            output["unknown_score"] = logit_unknown_score(output["sem_seg"], self.unknown_score)
        return outputs

    def closed_set_inference(self, batched_inputs: List[Dict]) -> List[Dict]:
        """``[{"sem_seg": (C, height, width)}]`` by the test protocol (whole, slide, TTA)."""
        if self.sliding_window or self.uses_tta:
            return [{"sem_seg": self.inference_one(x)} for x in batched_inputs]
        return [{"sem_seg": upsampled_scores(scores, resize, self.label_chunk_bytes)}
                for scores, resize in self._whole_scores(batched_inputs)]

    @torch.no_grad()
    def predict_labels(self, batched_inputs: List[Dict]) -> List[torch.Tensor]:
        """Input dicts as :meth:`forward`'s -> per input a (height, width) int64 label map, equal
        to ``forward(batched_inputs)[i]["sem_seg"].argmax(0)`` without its (C, height, width)
        scores: the whole-image and sliding-window paths resize the class scores to the output
        size a chunk of classes at a time (:func:`upsampled_argmax`); the project's heads from
        their (C, h/s, w/s) scores at the decoder's stride, other heads and the sliding window
        from the (C, H, W) logits at the network's input size. TTA (a softmax over the classes
        at the output size) runs :meth:`forward`."""
        if self.uses_tta:
            return [out["sem_seg"].argmax(0) for out in self(batched_inputs)]
        if self.sliding_window:
            return [upsampled_argmax(*self._input_size_scores(x), self.label_chunk_bytes) for x in batched_inputs]
        return [upsampled_argmax(scores, resize, self.label_chunk_bytes)
                for scores, resize in self._whole_scores(batched_inputs)]

    def _whole_scores(self, batched_inputs: List[Dict]) -> List[Tuple[torch.Tensor, Callable]]:
        """Whole-image inference of a batch, up to the resize: per input, its scores and the resize
        to its output size (channel by channel). The project's heads: (C, h/s, w/s) scores at the
        decoder's stride and the head's resize to the padded batch, crop, resize (what
        ``head.forward`` and ``sem_seg_postprocess`` compute); other heads: their (C, Hp, Wp)
        logits, crop, resize."""
        batch = self._padded_batch(batched_inputs)
        head = self.sem_seg_head
        if isinstance(head, DecoderClassifierHead):
            scores = head.class_scores(head.decoder(self.backbone(batch.tensor)))
            resize = partial(_resize_batch_scores, head, tuple(batch.tensor.shape[-2:]))
        else:
            scores, resize = self._padded_logits(batch.tensor), None
        out = []
        for image_scores, size, x in zip(scores, batch.image_sizes, batched_inputs):
            out_size = (x.get("height", size[0]), x.get("width", size[1]))
            out.append((image_scores, partial(_postprocess, resize, size, out_size)))
        return out

    def _padded_batch(self, batched_inputs: List[Dict]) -> ImageList:
        """The inputs' images, normalised and padded to one (B, 3, Hp, Wp) batch (the backbone's
        size divisibility), with their sizes."""
        images = [self._normalize(x["image"].to(self.device).float()) for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def _input_size_scores(self, batched_input: Dict) -> Tuple[torch.Tensor, Callable]:
        """One image's logits (C, H, W) at the network's input size (whole or sliding window) and
        the resize to its output size."""
        image = self._normalize(batched_input["image"].to(self.device).float())
        size = tuple(image.shape[-2:])
        out_size = (batched_input.get("height", size[0]), batched_input.get("width", size[1]))
        return self.predict_logits(image), partial(_postprocess, None, size, out_size)

    def _check_unknown_score(self) -> None:
        """ValueError naming TEST.UNKNOWN_SCORE when the score does not fit the head or protocol."""
        if self.unknown_score not in UNKNOWN_SCORES:
            raise ValueError(f"TEST.UNKNOWN_SCORE must be one of {UNKNOWN_SCORES}, got {self.unknown_score!r}")
        if self.unknown_score and self.uses_tta:
            raise ValueError(f"TEST.UNKNOWN_SCORE {self.unknown_score!r} is computed from one pass's logits; "
                             f"TTA (TEST.AUG.ENABLED) averages probabilities: switch one of them off")
        if self.unknown_score != "nearest_prototype":
            return
        memory = getattr(self.sem_seg_head, "memory", None)
        if memory is None or not memory.normalized:
            raise ValueError("TEST.UNKNOWN_SCORE 'nearest_prototype' needs a ProtoSeg head with the cosine "
                             "distance (MODEL.PROTOSEG.DISTANCE cosine); use 'max_softmax' or 'max_logit' otherwise")
        if self.sliding_window:
            raise ValueError("TEST.UNKNOWN_SCORE 'nearest_prototype' is computed on the whole image: "
                             "set TEST.SLIDING_WINDOW.ENABLED False")

    def nearest_prototype_inference(self, batched_inputs: List[Dict]) -> List[Dict]:
        """Whole-image inference with ``"unknown_score"`` 1 - max_c max_k cos(x, p_ck) (height,
        width): the head's "nearest_similarity" map, upsampled, cropped and resized as the logits."""
        batch = self._padded_batch(batched_inputs)
        logits, maps = self.sem_seg_head(self.backbone(batch.tensor), None, batch.tensor.shape[-2:], with_maps=True)
        outputs = []
        for scores, nearest, size, x in zip(logits, maps["nearest_similarity"], batch.image_sizes, batched_inputs):
            out_size = (x.get("height", size[0]), x.get("width", size[1]))
            outputs.append({"sem_seg": sem_seg_postprocess(scores, size, *out_size),
                            "unknown_score": 1.0 - sem_seg_postprocess(nearest, size, *out_size)[0]})
        return outputs

    def inference_one(self, batched_input: Dict) -> torch.Tensor:
        """One input dict ("image": (3, H, W), optional "height"/"width") -> (C, height, width)."""
        if not self.uses_tta:
            return upsampled_scores(*self._input_size_scores(batched_input), self.label_chunk_bytes)
        image = batched_input["image"].to(self.device).float()
        h, w = image.shape[-2:]
        out_size = (batched_input.get("height", h), batched_input.get("width", w))
        min_sizes, flips = self.test_min_sizes or (0,), (False, True) if self.test_flip else (False,)
        probs = None
        for min_size in min_sizes:
            scaled = self._resize_short_side(image, min_size)
            for flip in flips:
                logits = self.predict_logits(self._normalize(scaled.flip(-1) if flip else scaled))
                logits = sem_seg_postprocess(logits.flip(-1) if flip else logits, logits.shape[-2:], *out_size)
                p = logits.softmax(dim=0)
                probs = p if probs is None else probs.add_(p)
        return probs / (len(min_sizes) * len(flips))

    def predict_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Normalised (3, H, W) -> (C, H, W) logits, by the whole image or sliding window."""
        if self.sliding_window:
            return self._slide_logits(image)
        return self._head_logits([image])[0]

    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.pixel_mean) / self.pixel_std

    def _resize_short_side(self, image: torch.Tensor, min_size: int) -> torch.Tensor:
        if min_size == 0:
            return image
        size = T.ResizeShortestEdge.get_output_shape(*image.shape[-2:], min_size, self.test_max_size)
        if size == tuple(image.shape[-2:]):
            return image
        return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]

    def _head_logits(self, images: List[torch.Tensor]) -> torch.Tensor:
        """Normalised images of one size (3, h, w) -> (B, C, h, w) logits (padded to the backbone's
        size divisibility for the forward, cropped back)."""
        h, w = images[0].shape[-2:]
        batch = ImageList.from_tensors(images, self.backbone.size_divisibility)
        return self._padded_logits(batch.tensor)[:, :, :h, :w]

    def _padded_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised, padded batch -> (B, C, H, W) logits. The project's heads resize
        their scores straight to (H, W); any other SEM_SEG_HEAD is called with Detectron2's
        contract, ``(features, targets)``."""
        features = self.backbone(images)
        if isinstance(self.sem_seg_head, DecoderClassifierHead):
            return self.sem_seg_head(features, None, images.shape[-2:])[0]
        return self.sem_seg_head(features, None)[0]

    def _slide_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Normalised (3, H, W) -> (C, H, W): windows' logits summed, divided by the window count."""
        h, w = image.shape[-2:]
        win_h, win_w = self.window_size
        image = F.pad(image, (0, max(win_w - w, 0), 0, max(win_h - h, 0)))
        height, width = image.shape[-2:]
        boxes = sliding_windows(height, width, self.window_size, self.window_stride)
        logits, count = None, image.new_zeros((1, height, width))
        for start in range(0, len(boxes), self.window_batch_size):
            chunk = boxes[start : start + self.window_batch_size]
            out = self._head_logits([image[:, y0:y1, x0:x1] for y0, y1, x0, x1 in chunk])
            if logits is None:
                logits = out.new_zeros((out.shape[1], height, width))
            for window_logits, (y0, y1, x0, x1) in zip(out, chunk):
                logits[:, y0:y1, x0:x1] += window_logits
                count[:, y0:y1, x0:x1] += 1
        return (logits / count)[:, :h, :w]


def _resize_batch_scores(head: DecoderClassifierHead, padded_size: Tuple[int, int],
                         scores: torch.Tensor) -> torch.Tensor:
    """(c, h, w) scores of one image at the decoder's stride -> (c, Hp, Wp) at the padded batch's
    size, as the head resizes them at inference."""
    return head.upsample_to_input(scores[None], padded_size)[0]


def _postprocess(resize, image_size, out_size, scores: torch.Tensor) -> torch.Tensor:
    """(c, ...) scores -> (c, height, width): ``resize`` (None: the scores are at the network's
    input size), then Detectron2's ``sem_seg_postprocess`` (crop the padding, resize)."""
    scores = scores if resize is None else resize(scores)
    return sem_seg_postprocess(scores, image_size, *out_size)
