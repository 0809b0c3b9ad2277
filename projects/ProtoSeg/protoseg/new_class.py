"""Adding a class to a trained model from a few labelled images, without a gradient step.

ProtoSeg: the new class's pixel embeddings (the head's normalised embeddings at the decoder's
stride, exactly what the prototypes are compared with) are clustered into K prototypes by the
training's own within-class clustering: a one-class :class:`PrototypeMemory` with the model's
Sinkhorn settings assigns the pixels to the prototypes (Sinkhorn-Knopp, argmax of the plan) and
sets each prototype to the l2-normalised sum of its pixels (the memory's update with momentum 0:
there is no earlier value to keep), repeated until the assignment is stable. The prototypes start
as K distinct support embeddings (seeded); one that receives no pixel keeps its value, as in
training, so it stays an embedding of the class (a duplicate changes no max over k), never a
random vector that could win pixels of other classes.

The class-score LayerNorm over C classes becomes one over C + 1: the new class gets the mean of
the C learned weights and biases (a per-class temperature and offset learned from data the new
class never saw: the mean gives it the typical class's scale and prior, favouring it no more and
no less than the average class; weight 1 / bias 0 of a fresh LayerNorm would ignore the learned
scale). The C + 1 statistics also change the other classes' normalisation: ``ClassAddition``
reports the share of the support images' cells whose best old class changes.

The parametric baseline gets weight imprinting (Qi et al., CVPR 2018): the l2-normalised mean of
the class's decoder embeddings (l2-normalised first, so that no pixel dominates), K rows by the same
clustering when the head has K > 1, scaled to the mean norm of the existing rows (in an
unnormalised softmax classifier the row norm is the class's temperature), bias the mean of the
existing biases (an average class's prior).

Masks are downsampled to the embedding grid by area: a cell belongs to the class when at least
``min_share`` (default a majority) of its image pixels do. Training labels its cells by nearest
neighbour (one pixel per cell), which is unbiased over thousands of images; with one image, the
boundary cells, whose embeddings mix the class with its surroundings, would enter the prototypes
by the chance of where that pixel falls.

Every other tensor of the checkpoint is copied (``protoseg.vocabulary.expand_vocabulary`` lays
out the per-class tensors; the auxiliary head's new row, used in training only, starts as in a
fresh model).
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import ImageList

from .checkpoint import ProtoSegCheckpointer
from .data.class_names import dataset_class_names, model_class_names
from .data.image_io import read_image
from .modeling.prototypes import PrototypeMemory, pairwise_similarity
from .vocabulary import expand_vocabulary

__all__ = [
    "ClassAddition",
    "read_support_pair",
    "support_embeddings",
    "cluster_prototypes",
    "imprint_rows",
    "extend_score_norm",
    "add_class",
    "new_class_config",
    "write_added_class",
]

PROTOTYPES_KEY = "sem_seg_head.memory.prototypes"
SCORE_NORM_KEYS = ("sem_seg_head.score_norm.weight", "sem_seg_head.score_norm.bias")
CLASSIFIER_KEYS = ("sem_seg_head.classifier.weight", "sem_seg_head.classifier.bias")


@dataclass
class ClassAddition:
    """What :func:`add_class` made.

    Attributes:
        state: the model state dict with C + 1 classes.
        class_names: the C + 1 class names.
        support_cells: embedding cells of the new class in the support images (the clustered vectors).
        pixel_counts: (K,) cells each new prototype (or imprinted row) was built from.
        old_argmax_changed: share of the support images' cells whose best old class (argmax over
            the C old logits) changes once the new class is in the class-score normalisation (0 for
            heads without one).
    """

    state: Dict[str, torch.Tensor]
    class_names: List[str]
    support_cells: int
    pixel_counts: List[int] = field(default_factory=list)
    old_argmax_changed: float = 0.0


def read_support_pair(image_path, mask_path, input_format: str) -> Tuple[np.ndarray, np.ndarray]:
    """An image (H, W, 3) uint8 in ``input_format`` and its mask (H, W) bool (non-zero = the class).

    Raises:
        FileNotFoundError / ValueError: naming the file that is missing, unreadable, of another
            size than its image, or a mask with no pixel of the class.
    """
    for path in (image_path, mask_path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such file")
    try:
        image = read_image(str(image_path), format=input_format)
        with Image.open(mask_path) as m:
            mask = np.asarray(m.convert("L") if m.mode not in ("L", "I", "I;16", "1", "P") else m) != 0
    except Exception as e:  # PIL: UnidentifiedImageError, OSError (truncated)
        raise ValueError(f"cannot read {image_path} / {mask_path}: {type(e).__name__}: {e}") from e
    if mask.ndim != 2 or mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask_path} is {mask.shape} but its image {image_path} is {image.shape[:2]} (H, W)")
    if not mask.any():
        raise ValueError(f"mask {mask_path} has no pixel of the class (non-zero)")
    return image, mask


@torch.no_grad()
def support_embeddings(model, cfg, image: np.ndarray, mask: np.ndarray, min_share: float = 0.5):
    """The classifier's pixel embeddings of one support image, as at inference.

    The image gets the config's test-time resize (``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``, as
    ``DefaultPredictor``), normalisation and padding; the head's ``pixel_embeddings`` are read at
    the decoder's stride. The mask follows the image (nearest resize, zero padding) and is pooled
    by area onto the embedding grid.

    Args:
        image: (H, W, 3) uint8 in ``cfg.INPUT.FORMAT``; mask: (H, W) bool.
    Returns:
        (embeddings (M, D) float32 of the M grid cells that cover the image, (M,) bool: the cells
        at least ``min_share`` covered by the mask).
    """
    if cfg.INPUT.MIN_SIZE_TEST > 0:
        resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST).get_transform(image)
        image, mask = resize.apply_image(image), resize.apply_segmentation(mask.astype(np.uint8)) > 0
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)), dtype=torch.float32).to(model.device)
    batch = ImageList.from_tensors([(tensor - model.pixel_mean) / model.pixel_std], model.backbone.size_divisibility)
    emb = model.sem_seg_head.pixel_embeddings(model.backbone(batch.tensor))[0].float().cpu()  # (D, h, w)
    (h, w), (height, width) = emb.shape[-2:], batch.image_sizes[0]
    padded = torch.zeros(batch.tensor.shape[-2:])
    padded[:height, :width] = torch.as_tensor(mask, dtype=torch.float32)
    share = F.adaptive_avg_pool2d(padded[None, None], (h, w))[0, 0]
    stride = batch.tensor.shape[-2] / h
    hv, wv = min(h, int(np.ceil(height / stride))), min(w, int(np.ceil(width / stride)))
    cells = emb[:, :hv, :wv].permute(1, 2, 0).reshape(-1, emb.shape[0])
    return cells, (share[:hv, :wv] >= min_share).reshape(-1)


@torch.no_grad()
def cluster_prototypes(
    x: torch.Tensor, memory: PrototypeMemory, num_prototypes: int, *, max_rounds: int = 20, seed: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """K prototypes of one class's embeddings by the training's within-class clustering.

    Args:
        x: (n, D) embeddings of the class (unit vectors for the cosine distance).
        memory: the trained model's memory, for its distance and Sinkhorn settings.
        num_prototypes: K.
    Returns:
        ((K, D) prototypes, (K,) int64 embeddings assigned to each in the last round).
    """
    n = x.shape[0]
    one_class = PrototypeMemory(
        num_classes=1, num_prototypes=num_prototypes, dim=x.shape[1], momentum=0.0,
        sinkhorn_iters=memory.sinkhorn_iters, sinkhorn_kappa=memory.sinkhorn_kappa, assignment="argmax",
        distance=memory.distance, huber_delta=memory.huber_delta,
    )
    generator = torch.Generator().manual_seed(seed)
    start = torch.randperm(n, generator=generator)[:num_prototypes]
    if n < num_prototypes:  # fewer cells than prototypes: the rest repeat cells (duplicates)
        start = torch.cat([start, torch.randint(n, (num_prototypes - n,), generator=generator)])
    one_class.prototypes.copy_(x[start].view(1, num_prototypes, -1))
    labels = torch.zeros(n, dtype=torch.long)
    previous = None
    for _ in range(max_rounds):
        targets, _ = one_class.assign(one_class.similarity(x), labels)
        counts = one_class.update(x, targets)
        if previous is not None and torch.equal(previous, targets):
            break
        previous = targets
    return one_class.prototypes[0].clone(), counts[0].long()


def imprint_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, memory: PrototypeMemory,
                 num_rows: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weight imprinting of a linear classifier's new rows.

    Args:
        x: (n, D) decoder embeddings of the class. weight: (C*R, D, 1, 1), bias (C*R,): the
            classifier. memory: the settings of the clustering (cosine). num_rows: R rows per class.
    Returns:
        ((R, D, 1, 1) new rows, (R,) new biases, (R,) cells behind each row).
    """
    unit = F.normalize(x.float(), dim=1)
    directions, counts = cluster_prototypes(unit, memory, num_rows, seed=seed)
    scale = weight.flatten(1).norm(dim=1).mean()
    rows = F.normalize(directions, dim=1) * scale
    return rows.view(num_rows, -1, 1, 1).to(weight.dtype), bias.mean().expand(num_rows).clone(), counts


def extend_score_norm(weight: torch.Tensor, bias: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(C,) LayerNorm weight and bias over classes -> (C + 1,): the new class gets their means."""
    return torch.cat([weight, weight.mean()[None]]), torch.cat([bias, bias.mean()[None]])


def _clustering_settings(head) -> PrototypeMemory:
    """The head's memory, or for a parametric head one with the default (cosine) settings."""
    memory = getattr(head, "memory", None)
    if memory is not None:
        return memory
    return PrototypeMemory(num_classes=1, num_prototypes=1, dim=1)


def _old_argmax_changed(head, cells: torch.Tensor, protos: torch.Tensor, norm: Tuple[torch.Tensor, torch.Tensor]) -> float:
    """Share of ``cells`` (M, D) whose argmax over the C old logits differs between the C-class
    LayerNorm and the (C + 1)-class one with the new class's ``protos`` (K, D)."""
    memory = head.memory
    scores = memory.nearest_class_scores(cells)  # (M, C)
    new_score = pairwise_similarity(cells, protos, memory.distance, memory.huber_delta).amax(dim=1, keepdim=True)
    old = head.score_norm(scores)
    new = F.layer_norm(torch.cat([scores, new_score], dim=1), (scores.shape[1] + 1,), *norm, head.score_norm.eps)
    return float((old.argmax(1) != new[:, :-1].argmax(1)).float().mean())


@torch.no_grad()
def add_class(cfg, weights: str, examples: Sequence[Tuple[str, str]], name: str, *,
              min_share: float = 0.5, seed: int = 0) -> ClassAddition:
    """A model of ``cfg`` with ``weights``, plus the class ``name`` learned from ``examples``.

    Args:
        cfg: the trained model's config (``MODEL.WEIGHTS`` is not read: ``weights`` is).
        examples: (image file, mask file) pairs; mask non-zero = the class.
        min_share: share of a grid cell the mask must cover for the cell to count.
    Raises:
        ValueError: the name is already a class, the masks cover no grid cell, or the model holds
            out a dataset class of another name at the new id.
    """
    old_names = model_class_names(cfg)
    if name in old_names:
        raise ValueError(f"class {name!r} is already class {old_names.index(name)} of the model")
    held_out = cfg.INPUT.HELD_OUT_CLASSES
    dataset_names = dataset_class_names((list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN) or [None])[0])
    if held_out and len(dataset_names) > len(old_names) and dataset_names[len(old_names)] != name:
        raise ValueError(
            f"the model holds out the dataset's last {held_out} class(es) (INPUT.HELD_OUT_CLASSES); the added class "
            f"takes id {len(old_names)}, which the dataset calls {dataset_names[len(old_names)]!r}, not {name!r}"
        )
    model = build_model(cfg)
    ProtoSegCheckpointer(model).load(weights, checkpointables=[])
    model.eval()
    head = model.sem_seg_head
    cells, positive = [], []
    for image_path, mask_path in examples:
        image, mask = read_support_pair(image_path, mask_path, cfg.INPUT.FORMAT)
        emb, pos = support_embeddings(model, cfg, image, mask, min_share)
        cells.append(emb)
        positive.append(pos)
    cells, positive = torch.cat(cells), torch.cat(positive)
    x = cells[positive]
    if x.shape[0] == 0:
        raise ValueError(f"the masks cover no embedding cell by at least {min_share:.0%}: give larger regions "
                         f"or a smaller --min-share")
    state, _ = expand_vocabulary({k: v.cpu() for k, v in model.state_dict().items()}, old_names, old_names + [name])
    C = len(old_names)
    memory = _clustering_settings(head)
    result = ClassAddition(state, old_names + [name], int(x.shape[0]))
    if PROTOTYPES_KEY in state:
        K = state[PROTOTYPES_KEY].shape[1]  # (C + 1, K, D)
        protos, counts = cluster_prototypes(x, memory, K, seed=seed)
        state[PROTOTYPES_KEY][C] = protos
        if SCORE_NORM_KEYS[0] in state:
            norm = extend_score_norm(state[SCORE_NORM_KEYS[0]][:C], state[SCORE_NORM_KEYS[1]][:C])
            state[SCORE_NORM_KEYS[0]], state[SCORE_NORM_KEYS[1]] = norm
            result.old_argmax_changed = _old_argmax_changed(head, cells, protos, norm)
    elif CLASSIFIER_KEYS[0] in state:
        rows_per_class = state[CLASSIFIER_KEYS[0]].shape[0] // (C + 1)
        weight, bias = (state[k][: C * rows_per_class] for k in CLASSIFIER_KEYS)
        rows, biases, counts = imprint_rows(x, weight, bias, memory, rows_per_class, seed=seed)
        state[CLASSIFIER_KEYS[0]][C * rows_per_class:] = rows
        state[CLASSIFIER_KEYS[1]][C * rows_per_class:] = biases
    else:
        raise ValueError(f"{type(head).__name__} has neither prototypes ({PROTOTYPES_KEY}) nor a classifier "
                         f"({CLASSIFIER_KEYS[0]}) to add a class to")
    result.pixel_counts = [int(c) for c in counts]
    return result


def new_class_config(cfg, class_names: Sequence[str], weights: str, output_dir: str):
    """A copy of ``cfg`` for the model with the added class: NUM_CLASSES, CLASS_NAMES, one
    held-out class less, the CE class weights extended by their mean, MODEL.WEIGHTS and OUTPUT_DIR."""
    new = cfg.clone()
    new.defrost()
    head = new.MODEL.SEM_SEG_HEAD
    head.NUM_CLASSES = len(class_names)
    head.CLASS_NAMES = list(class_names)
    if len(head.CLASS_WEIGHTS):
        head.CLASS_WEIGHTS = list(head.CLASS_WEIGHTS) + [float(np.mean(head.CLASS_WEIGHTS))]
    new.INPUT.HELD_OUT_CLASSES = max(0, new.INPUT.HELD_OUT_CLASSES - 1)
    new.MODEL.WEIGHTS = str(weights)
    new.OUTPUT_DIR = str(output_dir)
    return new


def write_added_class(cfg, addition: ClassAddition, output_dir) -> Tuple[Path, Path]:
    """Write ``model_final.pth`` (loaded into the C + 1 model first: every key checked) and
    ``config.yaml`` (the full config, as train_net.py writes one) into ``output_dir``.
    Returns their paths."""
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    weights, config = output_dir / "model_final.pth", output_dir / "config.yaml"
    new_cfg = new_class_config(cfg, addition.class_names, weights, output_dir)
    model = build_model(new_cfg)
    model.load_state_dict(addition.state, strict=True)
    ProtoSegCheckpointer(model, str(output_dir)).save("model_final", tag_last=False)
    config.write_text(new_cfg.dump())
    return weights, config
