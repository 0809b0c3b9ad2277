"""2-D view of the pixel embedding space with the prototypes in it (the paper's Fig. 5).

Pixel embeddings (at the decoder's stride) of a few dataset images are subsampled at random
(seeded), projected to 2-D together with the prototypes of the chosen classes by t-SNE or PCA
(scikit-learn), and drawn as small points coloured by their ground-truth class, the prototypes as
large points of their class's colour with a black edge. A well-trained ProtoSeg model shows one
group of points per class, with that class's prototypes inside its group.
"""
from dataclasses import dataclass
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from .inference import labelled_cell_embeddings, prototype_memory  # noqa: E402

__all__ = ["PixelSample", "collect_pixel_embeddings", "project_2d", "plot_embedding", "embedding_view", "PROJECTIONS"]

PROJECTIONS = ("tsne", "pca")


@dataclass
class PixelSample:
    """Labelled pixel embeddings of some images.

    Attributes:
        embeddings: (N, D) float32, one row per embedding cell with a valid label.
        labels: (N,) int64 ground-truth class of each (labels resized to the embedding grid by
            nearest neighbour, as in training; ignored cells are left out).
        num_images: images they come from.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    num_images: int

    def subsample(self, num_pixels: int, seed: int = 0) -> "PixelSample":
        """A uniform random subset of ``num_pixels`` rows (all if fewer), reproducible by ``seed``."""
        n = len(self.labels)
        if num_pixels <= 0 or num_pixels >= n:
            return self
        keep = np.sort(np.random.default_rng(seed).choice(n, size=num_pixels, replace=False))
        return PixelSample(self.embeddings[keep], self.labels[keep], self.num_images)


def collect_pixel_embeddings(
    model, cfg, dataset_dicts: Sequence[dict], num_classes: Optional[int] = None
) -> PixelSample:
    """Run the model on every image of ``dataset_dicts`` (Detectron2 dicts with ``file_name`` and
    ``sem_seg_file_name``) and keep the embedding of every labelled cell of the covered grid.

    Returns:
        :class:`PixelSample` with embeddings (N, D) and labels (N,), N = labelled cells in total.
    """
    xs, ys = [], []
    for emb, labels in labelled_cell_embeddings(model, cfg, dataset_dicts):
        keep = labels < (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES if num_classes is None else num_classes)
        xs.append(emb[keep].numpy())
        ys.append(labels[keep].numpy())
    d = model.sem_seg_head.memory.dim if hasattr(model.sem_seg_head, "memory") else 0
    x = np.concatenate(xs).astype(np.float32) if xs else np.zeros((0, d), np.float32)
    y = np.concatenate(ys).astype(np.int64) if ys else np.zeros((0,), np.int64)
    return PixelSample(x, y, len(dataset_dicts))


def project_2d(points: np.ndarray, method: str = "tsne", seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """(N, D) -> (N, 2) with scikit-learn's ``TSNE`` (PCA initialisation) or ``PCA``.

    For unit vectors (cosine distance), the Euclidean distance t-SNE uses is a monotone function of
    the cosine, so the neighbourhoods are the model's.
    """
    if method not in PROJECTIONS:
        raise ValueError(f"method must be one of {PROJECTIONS}, got {method!r}")
    points = np.asarray(points, dtype=np.float32)
    if len(points) < 3:
        raise ValueError(f"need at least 3 points to project, got {len(points)}")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(points)
    from sklearn.manifold import TSNE

    perplexity = min(perplexity, (len(points) - 1) / 3.0)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)


def plot_embedding(
    pixel_xy: np.ndarray,
    pixel_labels: np.ndarray,
    proto_xy: np.ndarray,
    proto_classes: np.ndarray,
    class_names: Sequence[str],
    class_colors: Sequence[Sequence[int]],
    title: str = "",
    figsize=(7.5, 6.0),
    dpi: int = 100,
    point_size: float = 9.0,
    prototype_size: float = 150.0,
):
    """Scatter plot of projected pixels (small points, class colour) and prototypes (large points,
    class colour, black edge), with a legend of the classes present.

    Args:
        pixel_xy: (N, 2) projected pixels; pixel_labels: (N,) their classes.
        proto_xy: (P, 2) projected prototypes; proto_classes: (P,) their classes.
        class_colors: (C, 3) RGB 0-255 (a dataset's ``stuff_colors``).
    Returns:
        matplotlib Figure of ``figsize`` inches at ``dpi``.
    """
    colors = np.asarray(class_colors, dtype=np.float64) / 255.0
    fig, ax = plt.subplots(
        figsize=figsize, dpi=dpi, gridspec_kw={"left": 0.03, "right": 0.75, "bottom": 0.03, "top": 0.92}
    )
    present = sorted(set(np.unique(pixel_labels).tolist()) | set(np.unique(proto_classes).tolist()))
    # Pixels in a random order, so that no class is drawn systematically on top.
    order = np.random.default_rng(0).permutation(len(pixel_labels))
    ax.scatter(
        pixel_xy[order, 0], pixel_xy[order, 1], s=point_size, c=colors[pixel_labels[order]],
        linewidths=0, alpha=1.0, rasterized=True,
    )
    if len(proto_xy):
        ax.scatter(
            proto_xy[:, 0], proto_xy[:, 1], s=prototype_size, c=colors[proto_classes], marker="o",
            edgecolors="black", linewidths=1.5, zorder=3,
        )
    ax.set_xticks([])
    ax.set_yticks([])
    handles = [
        Line2D([], [], marker="o", linestyle="", markersize=6, markerfacecolor=colors[c], markeredgecolor=colors[c],
               label=f"{class_names[c]} ({int((pixel_labels == c).sum())} px)")
        for c in present
    ]
    if len(proto_xy):
        handles.append(
            Line2D([], [], marker="o", linestyle="", markersize=11, markerfacecolor="white", markeredgecolor="black",
                   markeredgewidth=1.5, label="prototype (class colour)")
        )
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.76, 0.5), fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def embedding_view(
    model,
    cfg,
    dataset_dicts: Sequence[dict],
    class_names: Sequence[str],
    class_colors: Sequence[Sequence[int]],
    classes: Optional[Sequence[int]] = None,
    method: str = "tsne",
    num_pixels: int = 2000,
    seed: int = 0,
    pixels_of_chosen_classes_only: bool = False,
    dpi: int = 100,
):
    """Collect, subsample, project (pixels and prototypes together) and plot.

    Args:
        classes: classes whose prototypes are drawn (default all).
        num_pixels: size of the random pixel subsample (seeded by ``seed``).
        pixels_of_chosen_classes_only: draw only the pixels of ``classes`` (the paper's Fig. 5
            shows five classes); default: the pixels of every class.
        dpi: of the figure (7.5 x 6 inches).
    Returns:
        (Figure, dict with "pixel_xy" (N, 2), "pixel_labels" (N,), "proto_xy" (P, 2),
        "proto_classes" (P,), "proto_index" (P,) k of each prototype).
    """
    memory = prototype_memory(model)
    protos = memory.prototypes.detach().float().cpu().numpy()  # (C, K, D)
    num_classes, k = protos.shape[:2]
    classes = list(range(num_classes)) if classes is None else [int(c) for c in classes]
    sample = collect_pixel_embeddings(model, cfg, dataset_dicts, num_classes)
    if pixels_of_chosen_classes_only:
        keep = np.isin(sample.labels, classes)
        sample = PixelSample(sample.embeddings[keep], sample.labels[keep], sample.num_images)
    sample = sample.subsample(num_pixels, seed)
    if len(sample.labels) == 0:
        raise ValueError("no labelled pixel in the chosen images")
    chosen = protos[classes].reshape(-1, protos.shape[-1])
    proto_classes = np.repeat(np.asarray(classes, dtype=np.int64), k)
    xy = project_2d(np.concatenate([sample.embeddings, chosen]), method, seed)
    n = len(sample.labels)
    title = (
        f"{method.upper() if method == 'pca' else 't-SNE'} of {n} pixel embeddings ({sample.num_images} images) "
        f"and {len(chosen)} prototypes ({k} per class)"
    )
    fig = plot_embedding(xy[:n], sample.labels, xy[n:], proto_classes, class_names, class_colors, title=title, dpi=dpi)
    result = {
        "pixel_xy": xy[:n],
        "pixel_labels": sample.labels,
        "proto_xy": xy[n:],
        "proto_classes": proto_classes,
        "proto_index": np.tile(np.arange(k), len(classes)),
    }
    return fig, result
