"""Pixel embeddings and predictions of a ProtoSeg model for one image, as the prototypes see them.

The model is run as Detectron2's ``DefaultPredictor`` + ``SemanticSegmentor`` run it (test-time
shortest-edge resize, normalisation with ``MODEL.PIXEL_MEAN/STD``, padding to
``backbone.size_divisibility``), but the head is asked for its pixel embeddings
(``ProtoSegHead.pixel_embeddings``) rather than for class scores, so that every map of
:mod:`protoseg.visualization` is computed from the same vectors the prototypes are compared with.

Shapes: an image is (H, W, 3) uint8; the network sees it resized to (H', W') and padded to
(Hp, Wp); embeddings are (D, h, w) with (h, w) = (Hp, Wp) / stride (the decoder's output stride),
of which the top-left (hv, wv) = ceil((H', W') / stride) cells cover the image.
"""
import math
from dataclasses import dataclass
from functools import partial
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import ImageList

from ..checkpoint import ProtoSegCheckpointer
from ..config import load_config
from ..data.image_io import read_image
from ..data.labels import REDUCE_ZERO_LABEL_KEY, read_label_map, reduce_zero_label
from ..modeling.segmentor import upsampled_argmax

__all__ = [
    "InputInfo",
    "EmbeddingOutput",
    "build_cfg",
    "load_model",
    "prototype_memory",
    "embed_image",
    "upsample_to_image",
    "labels_to_grid",
    "read_dataset_sample",
]


@dataclass(frozen=True)
class InputInfo:
    """Where the embedding grid lies on the image.

    Attributes:
        original_size: (H, W) of the image given to :func:`embed_image`.
        image_size: (H', W') after the test-time resize (what the network sees, before padding).
        padded_size: (Hp, Wp) after padding to the backbone's size divisibility.
        stride: output stride of the decoder (image pixels per embedding cell).
        grid_size: (h, w) of the embedding map (about (Hp, Wp) / stride, rounded up).
    """

    original_size: Tuple[int, int]
    image_size: Tuple[int, int]
    padded_size: Tuple[int, int]
    stride: int
    grid_size: Tuple[int, int]

    @property
    def valid_grid_size(self) -> Tuple[int, int]:
        """(hv, wv): the top-left cells of the embedding map that cover the (resized) image."""
        return (
            min(math.ceil(self.image_size[0] / self.stride), self.grid_size[0]),
            min(math.ceil(self.image_size[1] / self.stride), self.grid_size[1]),
        )


@dataclass
class EmbeddingOutput:
    """What :func:`embed_image` returns.

    Attributes:
        embeddings: (D, h, w) float32 CPU tensor, pixel embeddings at the decoder's stride (unit
            vectors for the cosine distance), for the whole padded input (see ``info``).
        prediction: (H, W) int64 numpy array, the model's predicted class of every image pixel
            (identical to ``model([{"image", "height", "width"}])[0]["sem_seg"].argmax(0)``).
        info: sizes that relate the embedding grid to the image.
    """

    embeddings: torch.Tensor
    prediction: np.ndarray
    info: InputInfo


def build_cfg(config_file: str, opts: Sequence = ()):
    """A frozen config from a YAML file and ``KEY VALUE`` overrides, with the project's keys.

    Unlike ``train_net.setup`` it does not call ``default_setup``, which would write a
    ``config.yaml`` into ``OUTPUT_DIR`` (usually a training folder) for a mere visualisation.
    """
    return load_config(config_file, opts, freeze=True)


def prototype_memory(model):
    """The ``PrototypeMemory`` of ``model.sem_seg_head`` ((C, K, D) buffer ``prototypes``).

    Raises:
        ValueError: the head has no prototype memory (e.g. ``ParametricSegHead``): the
            interpretability tools need a ProtoSeg model.
    """
    head = getattr(model, "sem_seg_head", None)
    memory = getattr(head, "memory", None)
    if memory is None or not hasattr(memory, "prototypes") or not hasattr(head, "pixel_embeddings"):
        raise ValueError(
            f"the model's segmentation head ({type(head).__name__}) has no prototype memory: the prototype "
            f"interpretability tools need a ProtoSeg model (MODEL.SEM_SEG_HEAD.NAME 'ProtoSegHead'), not a "
            f"parametric baseline"
        )
    return memory


def load_model(cfg, weights: Optional[str] = None):
    """Build the model of ``cfg``, load ``weights`` (default ``cfg.MODEL.WEIGHTS``) with the
    project's DetectionCheckpointer, and put it in eval mode on ``cfg.MODEL.DEVICE``.

    Raises:
        ValueError: the model has no prototype memory (see :func:`prototype_memory`).
    """
    model = build_model(cfg)
    prototype_memory(model)
    weights = cfg.MODEL.WEIGHTS if weights is None else weights
    if not weights:
        raise ValueError("no weights to load: pass MODEL.WEIGHTS (e.g. --opts MODEL.WEIGHTS path/to/model_final.pth)")
    ProtoSegCheckpointer(model).load(weights)
    return model.eval()


def _test_resize(cfg):
    if cfg.INPUT.MIN_SIZE_TEST <= 0:
        return None
    return T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)


@torch.no_grad()
def embed_image(model, cfg, image: np.ndarray) -> EmbeddingOutput:
    """Pixel embeddings and prediction of one image.

    Args:
        model: a ProtoSeg model in eval mode (:func:`load_model`).
        cfg: its config (``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST`` for the test-time resize, as
            ``DefaultPredictor``).
        image: (H, W, 3) uint8 in ``cfg.INPUT.FORMAT`` channel order (RGB for the toy configs).
    Returns:
        :class:`EmbeddingOutput`: embeddings (D, h, w), prediction (H, W), sizes.
    """
    head = model.sem_seg_head
    memory = prototype_memory(model)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    height, width = image.shape[:2]
    aug = _test_resize(cfg)
    resized = aug.get_transform(image).apply_image(image) if aug is not None else image
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)), dtype=torch.float32)
    tensor = (tensor.to(model.device) - model.pixel_mean) / model.pixel_std
    images = ImageList.from_tensors([tensor], model.backbone.size_divisibility)
    features = model.backbone(images.tensor)
    emb = head.pixel_embeddings(features)  # (1, D, h, w)
    info = InputInfo(
        original_size=(height, width),
        image_size=tuple(int(s) for s in images.image_sizes[0]),
        padded_size=tuple(int(s) for s in images.tensor.shape[-2:]),
        stride=int(head.decoder.out_stride),
        grid_size=(int(emb.shape[-2]), int(emb.shape[-1])),
    )
    # Class scores exactly as ProtoSegHead.class_scores computes them at inference, then the
    # model's upsampling and sem_seg_postprocess.
    _, d, h, w = emb.shape
    flat = emb[0].permute(1, 2, 0).reshape(-1, d)
    scores = head.normalize_scores(memory.nearest_class_scores(flat))  # (h*w, C)
    scores = scores.t().reshape(-1, h, w)
    # argmax of upsample_to_image(scores, info), a chunk of classes at a time: no (C, H, W)
    prediction = upsampled_argmax(scores, partial(upsample_to_image, info=info))
    return EmbeddingOutput(embeddings=emb[0].float().cpu(), prediction=prediction.cpu().numpy(), info=info)


def upsample_to_image(maps: torch.Tensor, info: InputInfo) -> torch.Tensor:
    """(M, h, w) maps on the embedding grid -> (M, H, W) at the original image size, as the model
    upsamples its class scores (bilinear by the stride, crop the padding, bilinear to (H, W))."""
    x = F.interpolate(maps[None].float(), scale_factor=info.stride, mode="bilinear", align_corners=False)
    x = x[:, :, : info.image_size[0], : info.image_size[1]]
    if tuple(x.shape[-2:]) != tuple(info.original_size):
        x = F.interpolate(x, size=info.original_size, mode="bilinear", align_corners=False)
    return x[0]


def labels_to_grid(labels: np.ndarray, info: InputInfo, ignore_value: int = 255) -> np.ndarray:
    """(H, W) label map at the original image size -> (h, w) labels of the embedding cells, as
    training sees them: resized with the image (nearest), padded with ``ignore_value``, then
    nearest-neighbour downsampled to the embedding grid (``resize_labels`` of the heads)."""
    x = torch.as_tensor(np.asarray(labels, dtype=np.int64))[None, None].float()
    if tuple(x.shape[-2:]) != tuple(info.image_size):
        x = F.interpolate(x, size=info.image_size, mode="nearest")
    padded = torch.full((1, 1, *info.padded_size), float(ignore_value))
    padded[:, :, : info.image_size[0], : info.image_size[1]] = x
    return F.interpolate(padded, size=info.grid_size, mode="nearest")[0, 0].long().numpy()


def read_dataset_sample(
    dataset_dict: dict, input_format: str, ignore_value: int = 255
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Image (H, W, 3) uint8 in ``input_format`` and label map (H, W) int64, 8 or 16 bits, with
    the dataset's reduce_zero_label applied (None without ``sem_seg_file_name``) of a Detectron2
    dataset dict."""
    image = read_image(dataset_dict["file_name"], format=input_format)
    labels = None
    if dataset_dict.get("sem_seg_file_name"):
        labels = read_label_map(dataset_dict["sem_seg_file_name"])
        if dataset_dict.get(REDUCE_ZERO_LABEL_KEY, False):
            labels = reduce_zero_label(labels, ignore_value)
    return image, labels


@torch.no_grad()
def labelled_cell_embeddings(model, cfg, dataset_dicts: Sequence[dict]) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """For each image of ``dataset_dicts`` (Detectron2 dicts with ``file_name`` and
    ``sem_seg_file_name``): the embeddings (n, D) and labels (n,) of the labelled cells of the
    embedding grid (labels in [0, NUM_CLASSES); ignore and padding dropped)."""
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    for d in dataset_dicts:
        image, labels = read_dataset_sample(d, cfg.INPUT.FORMAT, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
        if labels is None:
            raise ValueError(f"{d['file_name']} has no label map (sem_seg_file_name)")
        out = embed_image(model, cfg, image)
        hv, wv = out.info.valid_grid_size
        grid = torch.as_tensor(labels_to_grid(labels, out.info, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)[:hv, :wv])
        emb = out.embeddings[:, :hv, :wv].permute(1, 2, 0).reshape(-1, out.embeddings.shape[0])
        flat = grid.reshape(-1)
        valid = (flat >= 0) & (flat < num_classes)
        yield emb[valid], flat[valid]
