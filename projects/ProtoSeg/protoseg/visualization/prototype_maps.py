"""Pixel-prototype similarity maps of one class (the paper's Fig. 3).

For a class c with K prototypes:

- the *assignment map* colours every pixel of class c (predicted, or labelled when a label map is
  given) with the colour of its closest prototype among c's K, brighter the more similar; all
  other pixels show the image, grey and dimmed;
- the *heat maps* show, for each of the K prototypes, the similarity (cosine for the paper's
  distance) of every pixel of the image to it.

Similarities are computed on the embedding grid (D, h, w) and upsampled to the image size exactly
as the model upsamples its class scores (:func:`~protoseg.visualization.inference.upsample_to_image`),
so "closest prototype" at a pixel is the prototype that decides the class score there.
"""
import colorsys
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .inference import EmbeddingOutput, upsample_to_image  # noqa: E402

__all__ = [
    "ClassPrototypeMaps",
    "prototype_colors",
    "class_similarity_maps",
    "compute_class_maps",
    "assignment_image",
    "plot_assignment",
    "plot_similarity_heatmaps",
    "save_figure",
    "class_index",
]


def prototype_colors(num_prototypes: int) -> np.ndarray:
    """(K, 3) uint8 distinct, fully saturated colours (evenly spaced hues), one per prototype.

    Saturated on purpose: the rest of an assignment map is grey (R = G = B), so prototype colours
    and background can never be confused.
    """
    hues = np.arange(num_prototypes) / max(num_prototypes, 1)
    colors = [colorsys.hsv_to_rgb(float(h), 1.0, 1.0) for h in hues]
    return np.round(np.asarray(colors) * 255).astype(np.uint8).reshape(num_prototypes, 3)


def class_similarity_maps(output: EmbeddingOutput, memory, class_id: int) -> torch.Tensor:
    """Similarity of every pixel to each prototype of class ``class_id``.

    Args:
        output: :func:`~protoseg.visualization.inference.embed_image` result, embeddings (D, h, w).
        memory: the model's ``PrototypeMemory`` (prototypes (C, K, D)).
        class_id: c in [0, C).
    Returns:
        (K, H, W) float32 similarities at the original image size (cosine in [-1, 1] for the
        paper's distance; minus a distance for "euclidean"/"huber").
    """
    if not 0 <= class_id < memory.num_classes:
        raise ValueError(f"class id {class_id} is not in [0, {memory.num_classes})")
    emb = output.embeddings
    d, h, w = emb.shape
    flat = emb.permute(1, 2, 0).reshape(-1, d)
    with torch.no_grad():
        sims = memory.similarity(flat.to(memory.prototypes.device)).float().cpu()  # (h*w, C*K)
    k = memory.num_prototypes
    own = sims[:, class_id * k : (class_id + 1) * k].t().reshape(k, h, w)
    return upsample_to_image(own, output.info)


@dataclass
class ClassPrototypeMaps:
    """The maps of one class on one image.

    Attributes:
        class_id: c.
        similarities: (K, H, W) float32 numpy, similarity of every pixel to prototype (c, k).
        mask: (H, W) bool, the pixels of class c (predicted, or labelled if a label map was given).
        assignment: (H, W) int64, index k of the closest of c's prototypes inside ``mask``, -1 outside.
        counts: (K,) int64, pixels of ``mask`` assigned to each prototype (sums to mask.sum()).
        from_labels: whether ``mask`` comes from a label map (True) or the prediction (False).
    """

    class_id: int
    similarities: np.ndarray
    mask: np.ndarray
    assignment: np.ndarray
    counts: np.ndarray
    from_labels: bool

    @property
    def num_prototypes(self) -> int:
        return self.similarities.shape[0]

    @property
    def nearest_similarity(self) -> np.ndarray:
        """(H, W) similarity to the closest of c's prototypes (every pixel)."""
        return self.similarities.max(0)


def compute_class_maps(
    output: EmbeddingOutput, memory, class_id: int, labels: Optional[np.ndarray] = None
) -> ClassPrototypeMaps:
    """Similarities, class mask, closest-prototype assignment and counts of class ``class_id``.

    Args:
        output: embeddings (D, h, w) and prediction (H, W) of the image.
        memory: the model's prototype memory.
        class_id: c.
        labels: optional (H, W) ground-truth label map; when given, the mask is ``labels == c``
            instead of ``prediction == c``.
    """
    sims = class_similarity_maps(output, memory, class_id).numpy()
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != output.prediction.shape:
            raise ValueError(f"label map {labels.shape} does not match the image {output.prediction.shape}")
        mask = labels == class_id
    else:
        mask = output.prediction == class_id
    nearest = sims.argmax(0)
    assignment = np.where(mask, nearest, -1).astype(np.int64)
    counts = np.bincount(assignment[mask], minlength=sims.shape[0]).astype(np.int64)
    return ClassPrototypeMaps(class_id, sims, mask, assignment, counts, labels is not None)


def assignment_image(
    image_rgb: np.ndarray,
    maps: ClassPrototypeMaps,
    colors: Optional[np.ndarray] = None,
    shade: bool = True,
    similarity_range: Optional[Tuple[float, float]] = (0.0, 1.0),
    min_brightness: float = 0.35,
    dim: float = 0.45,
) -> np.ndarray:
    """The assignment map as an image.

    Args:
        image_rgb: (H, W, 3) uint8 RGB image.
        maps: :func:`compute_class_maps` of the image.
        colors: (K, 3) uint8 prototype colours (default :func:`prototype_colors`).
        shade: scale each pixel's colour by its similarity to its prototype: brightness goes
            linearly from ``min_brightness`` at ``similarity_range[0]`` (or below) to 1 at
            ``similarity_range[1]`` (or above). ``similarity_range`` None: the range of the
            class's pixels in this image. False: flat prototype colours.
        dim: brightness of the grey image outside the class (0 black, 1 unchanged).
    Returns:
        (H, W, 3) uint8 RGB: inside the mask, prototype colours (times the brightness); outside,
        the image as dimmed grey (R = G = B).
    """
    colors = prototype_colors(maps.num_prototypes) if colors is None else np.asarray(colors, dtype=np.uint8)
    grey = image_rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out = np.repeat((grey * dim)[:, :, None], 3, axis=2)
    if maps.mask.any():
        inside = maps.mask
        rgb = colors[maps.assignment[inside]].astype(np.float32)
        if shade:
            sim = maps.nearest_similarity[inside]
            lo, hi = similarity_range if similarity_range is not None else (float(sim.min()), float(sim.max()))
            t = np.clip((sim - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
            rgb = rgb * (min_brightness + (1.0 - min_brightness) * t)[:, None]
        out[inside] = rgb
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


LEGEND_WIDTH = 2.5  # inches right of the panels of plot_assignment


def _legend_handles(colors: np.ndarray, counts: np.ndarray):
    return [
        Patch(facecolor=colors[k] / 255.0, edgecolor="black", label=f"prototype {k} ({int(counts[k])} px)")
        for k in range(len(counts))
    ]


def plot_assignment(
    images_rgb,
    maps,
    class_name: str,
    titles: Optional[Sequence[str]] = None,
    colors: Optional[np.ndarray] = None,
    panel_size: float = 3.0,
    dpi: int = 100,
    **image_kwargs,
):
    """Figure: one column per image, the input on top and its assignment map below, with a legend
    of the K prototype colours and their pixel counts (summed over the images).

    Args:
        images_rgb: an (H, W, 3) uint8 RGB image, or a list of them.
        maps: the :class:`ClassPrototypeMaps` of the image (a list for a list of images).
        titles: column titles (default "input").
        image_kwargs: go to :func:`assignment_image`.
    Returns:
        (matplotlib Figure of ``(n * (panel_size + 0.1) + 0.1 + LEGEND_WIDTH, 2 * panel_size + 0.6)``
        inches at ``dpi`` for n images (:data:`LEGEND_WIDTH` = 2.5), the list of the n assignment
        maps (H, W, 3) uint8).
    """
    if isinstance(maps, ClassPrototypeMaps):
        images_rgb, maps = [images_rgb], [maps]
    if len(images_rgb) != len(maps) or not maps:
        raise ValueError(f"{len(images_rgb)} images for {len(maps)} maps")
    k = maps[0].num_prototypes
    colors = prototype_colors(k) if colors is None else np.asarray(colors, dtype=np.uint8)
    titles = list(titles) if titles is not None else ["input"] * len(maps)
    n, gap = len(maps), 0.1
    width, height = n * (panel_size + gap) + gap + LEGEND_WIDTH, 2 * panel_size + 0.6
    fig = plt.figure(figsize=(width, height), dpi=dpi)
    source = "labelled" if maps[0].from_labels else "predicted"
    visuals = []
    for i, (image, m) in enumerate(zip(images_rgb, maps)):
        vis = assignment_image(image, m, colors=colors, **image_kwargs)
        visuals.append(vis)
        left = (gap + i * (panel_size + gap)) / width
        top_ax = fig.add_axes([left, (panel_size + 0.35) / height, panel_size / width, panel_size / height])
        bottom_ax = fig.add_axes([left, gap / height, panel_size / width, panel_size / height])
        top_ax.imshow(image, interpolation="nearest")
        top_ax.set_title(titles[i], fontsize=10)
        bottom_ax.imshow(vis, interpolation="nearest")
        bottom_ax.set_title(f"{source} '{class_name}': closest prototype", fontsize=9)
        for ax in (top_ax, bottom_ax):
            ax.set_xticks([])
            ax.set_yticks([])
    counts = np.sum([m.counts for m in maps], axis=0)
    pixels = int(sum(m.mask.sum() for m in maps))
    fig.legend(
        handles=_legend_handles(colors, counts), loc="center left",
        bbox_to_anchor=((n * (panel_size + gap) + gap) / width, 0.5), fontsize=8, frameon=False,
        title=f"{pixels} px of '{class_name}'" + (f"\nin {n} images" if n > 1 else ""), title_fontsize=8,
    )
    return fig, visuals


def plot_similarity_heatmaps(
    image_rgb: np.ndarray,
    maps: ClassPrototypeMaps,
    class_name: str,
    distance: str = "cosine",
    ncols: int = 4,
    panel_size: float = 2.2,
    dpi: int = 100,
    cmap: str = "viridis",
    value_range: Optional[Tuple[float, float]] = None,
):
    """Figure: the input image, then one heat map per prototype of the similarity of every pixel to
    it (titles "prototype k (n px)", n = pixels of the class assigned to it), all on one colour
    scale with a colour bar; the outline of the class's pixels is drawn in white on each map.

    Args:
        value_range: (vmin, vmax) of the colour scale; default the range of all K maps.
    Returns:
        matplotlib Figure of ``(ncols * panel_size + 0.8, nrows * panel_size + 0.5)`` inches at
        ``dpi``, nrows = ceil((K + 1) / ncols).
    """
    k = maps.num_prototypes
    nrows = -(-(k + 1) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(ncols * panel_size + 0.8, nrows * panel_size + 0.5), dpi=dpi, squeeze=False,
        gridspec_kw={"left": 0.01, "right": 0.88, "bottom": 0.01, "top": 1 - 0.5 / (nrows * panel_size + 0.5),
                     "wspace": 0.05, "hspace": 0.18},
    )
    if value_range is None:
        value_range = (float(maps.similarities.min()), float(maps.similarities.max()))
    vmin, vmax = value_range
    axes = axes.ravel()
    axes[0].imshow(image_rgb, interpolation="nearest")
    axes[0].set_title("input", fontsize=9)
    image = None
    for i in range(k):
        ax = axes[i + 1]
        image = ax.imshow(maps.similarities[i], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        if maps.mask.any() and not maps.mask.all():
            ax.contour(maps.mask.astype(np.float32), levels=[0.5], colors="white", linewidths=0.8)
        ax.set_title(f"prototype {i} ({int(maps.counts[i])} px)", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[k + 1 :]:
        ax.axis("off")
    cax = fig.add_axes([0.90, 0.1, 0.02, 0.75])
    label = "cosine similarity" if distance == "cosine" else f"similarity (minus {distance} distance)"
    fig.colorbar(image, cax=cax).set_label(label)
    source = "labelled" if maps.from_labels else "predicted"
    fig.suptitle(
        f"'{class_name}': similarity to its {k} prototypes (white line: border of the {source} '{class_name}' pixels)",
        fontsize=10,
    )
    return fig


def save_figure(fig, path: str) -> str:
    """Save a figure as PNG at its own size and dpi (no tight bbox: the size is predictable) and
    close it."""
    fig.savefig(path, dpi=fig.dpi, format="png")
    plt.close(fig)
    return path


def class_index(name_or_id: str, class_names: Sequence[str]) -> int:
    """A class given by name (case-insensitive) or by id -> its id."""
    text = str(name_or_id).strip()
    lowered = [n.lower() for n in class_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    if text.lstrip("-").isdigit():
        idx = int(text)
        if 0 <= idx < len(class_names):
            return idx
    raise ValueError(
        f"unknown class {name_or_id!r}: give a name of {list(class_names)} or an id in [0, {len(class_names)})"
    )
