"""The prototype pictures of the web page (``demo/web.py``) for one image: the pixel embeddings are
computed once per image (:func:`~protoseg.visualization.inference.embed_image`), then, for a chosen
class, which of its K prototypes each of its pixels is closest to (the assignment picture of
``tools/visualize_prototypes.py maps``), the similarity of every pixel to one chosen prototype, and
the heat maps of all K (the same tool's second picture). Everything is drawn by
:mod:`~protoseg.visualization.prototype_maps`; this module only picks and renders.
"""
import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .inference import EmbeddingOutput, embed_image, prototype_memory, upsample_to_image  # noqa: E402
from .prototype_maps import (  # noqa: E402
    ClassPrototypeMaps,
    compute_class_maps,
    plot_assignment,
    plot_similarity_heatmaps,
)

__all__ = ["PrototypeViews", "PrototypeExplorer", "figure_to_array", "similarity_image", "unknown_score_map"]


def figure_to_array(fig) -> np.ndarray:
    """Render a matplotlib figure (Agg) to an (H, W, 3) uint8 RGB array and close it."""
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()
    plt.close(fig)
    return rgb


def similarity_image(maps: ClassPrototypeMaps, prototype: int, value_range: Tuple[float, float],
                     cmap: str = "viridis", min_size: int = 0) -> np.ndarray:
    """(s*H, s*W, 3) uint8: the similarity of every pixel to prototype ``prototype`` of the class,
    coloured with ``cmap`` from ``value_range[0]`` (dark) to ``value_range[1]`` (bright) (the colour
    scale of :func:`plot_similarity_heatmaps`), each pixel repeated s x s times, s the least integer
    that makes the short side at least ``min_size`` (1 when the image is large enough)."""
    lo, hi = value_range
    t = np.clip((maps.similarities[prototype] - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    rgb = np.round(matplotlib.colormaps[cmap](t)[:, :, :3] * 255).astype(np.uint8)
    scale = max(1, -(-min_size // min(rgb.shape[:2])))
    return rgb.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else rgb


def unknown_score_map(output: EmbeddingOutput, memory) -> np.ndarray:
    """(H, W) float32: every pixel's distance to its nearest prototype of any class, the model's
    ``TEST.UNKNOWN_SCORE`` "nearest_prototype" (1 - max_c max_k cos(x, p_ck) for the cosine
    distance; minus the largest similarity for the others), from the embeddings at the decoder's
    stride (N = h*w pixels, the memory's chunks of them at a time) upsampled to the image as the
    model upsamples its scores."""
    d, h, w = output.embeddings.shape
    flat = output.embeddings.permute(1, 2, 0).reshape(-1, d).to(memory.prototypes.device)
    with torch.no_grad():
        nearest = memory.nearest_similarity(flat).float().cpu().reshape(1, h, w)  # (1, h, w)
    similarity = upsample_to_image(nearest, output.info)[0]
    return ((1.0 - similarity) if memory.normalized else -similarity).numpy()


@dataclass
class PrototypeViews:
    """The pictures of one class (and one of its prototypes) on one image.

    Attributes:
        assignment: (h, w, 3) uint8, ``plot_assignment``'s figure: the image, and its pixels of the
            class coloured by their closest prototype, with a legend of the K colours and counts.
        similarity: (s*H, s*W, 3) uint8, :func:`similarity_image` of the chosen prototype.
        heatmaps: (h', w', 3) uint8, ``plot_similarity_heatmaps``'s figure (all K prototypes).
        caption: one line: pixels of the class, of the prototype, similarity range.
    """

    assignment: np.ndarray
    similarity: np.ndarray
    heatmaps: np.ndarray
    caption: str


class PrototypeExplorer:
    """The prototype pictures of one ProtoSeg model (ValueError for a model without prototypes)."""

    def __init__(self, model, cfg, class_names: Sequence[str], dpi: int = 80, min_size: int = 512):
        """
        Args:
            model: the loaded model in eval mode (e.g. the demo predictor's).
            cfg: its config (test resize, ``INPUT.FORMAT``).
            class_names: C names.
            dpi: resolution of the figures.
            min_size: the similarity picture of a smaller image is enlarged to this short side
                (as the demo enlarges its pictures).
        """
        self.memory = prototype_memory(model)
        self.model, self.cfg, self.dpi, self.min_size = model, cfg, dpi, min_size
        self.class_names = list(class_names)

    @property
    def num_prototypes(self) -> int:
        return self.memory.num_prototypes

    def embed(self, image: np.ndarray) -> EmbeddingOutput:
        """(H, W, 3) uint8 image in ``cfg.INPUT.FORMAT`` -> embeddings (D, h, w) at the decoder's
        stride and prediction (H, W), the prediction as uint8 (up to 256 classes) or uint16: what
        the web page keeps of an image between its requests."""
        output = embed_image(self.model, self.cfg, image)
        dtype = np.uint8 if len(self.class_names) <= 256 else np.uint16
        return dataclasses.replace(output, prediction=output.prediction.astype(dtype))

    def class_choices(self, prediction: np.ndarray) -> List[Tuple[str, int]]:
        """(label, class id) of every class, the predicted ones first by pixel count, labelled
        "name (n px)"; the others follow in class order."""
        counts = np.bincount(prediction.ravel(), minlength=len(self.class_names))[: len(self.class_names)]
        order = sorted(range(len(self.class_names)), key=lambda c: (-counts[c], c))
        return [(f"{self.class_names[c]} ({counts[c]} px)" if counts[c] else self.class_names[c], c) for c in order]

    def unknown_image(self, output: EmbeddingOutput, cmap: str = "magma") -> Tuple[np.ndarray, str]:
        """(s*H, s*W, 3) uint8 picture of :func:`unknown_score_map` (enlarged as the similarity
        picture) and its caption. Cosine: one colour scale for every image, 0 (dark: on a
        prototype) to 1 (bright: orthogonal to every prototype, or further); other distances: the
        image's own range."""
        score = unknown_score_map(output, self.memory)
        lo, hi = (0.0, 1.0) if self.memory.normalized else (float(score.min()), float(score.max()))
        t = np.clip((score - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        rgb = np.round(matplotlib.colormaps[cmap](t)[:, :, :3] * 255).astype(np.uint8)
        scale = max(1, -(-self.min_size // min(rgb.shape[:2])))
        rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else rgb
        caption = (f"unknown score (distance to the nearest prototype of any class): {score.min():.2f} .. "
                   f"{score.max():.2f} on this image, colour scale {lo:.2f} (dark) .. {hi:.2f} (bright); "
                   f"high = unlike every known class (docs/OPEN_WORLD.md)")
        return rgb, caption

    def views(self, image_rgb: np.ndarray, output: EmbeddingOutput, class_id: int,
              prototype: Optional[int] = None) -> Tuple[PrototypeViews, int]:
        """The pictures of class ``class_id`` and of one of its prototypes on one image.

        Args:
            image_rgb: (H, W, 3) uint8 RGB, the image ``output`` was computed from.
            prototype: k in [0, K); None: the prototype closest to most of the class's pixels.
        Returns:
            (:class:`PrototypeViews`, the prototype shown).
        """
        name = self.class_names[class_id]
        maps = compute_class_maps(output, self.memory, class_id)
        if prototype is None:
            prototype = int(np.argmax(maps.counts))
        if not 0 <= prototype < maps.num_prototypes:
            raise ValueError(f"prototype {prototype} is not in [0, {maps.num_prototypes})")
        value_range = (float(maps.similarities.min()), float(maps.similarities.max()))
        shade = (0.0, 1.0) if self.memory.distance == "cosine" else None  # as tools/visualize_prototypes.py
        fig, _ = plot_assignment(image_rgb, maps, name, dpi=self.dpi, similarity_range=shade)
        heat = plot_similarity_heatmaps(image_rgb, maps, name, distance=self.memory.distance, dpi=self.dpi,
                                        value_range=value_range)
        caption = (f"'{name}': {int(maps.mask.sum())} predicted px, {int(maps.counts[prototype])} closest to "
                   f"prototype {prototype}; colour scale {value_range[0]:.2f} (dark) .. {value_range[1]:.2f} "
                   f"(bright) {'cosine similarity' if self.memory.distance == 'cosine' else 'similarity'}")
        similarity = similarity_image(maps, prototype, value_range, min_size=self.min_size)
        views = PrototypeViews(figure_to_array(fig), similarity, figure_to_array(heat), caption)
        return views, prototype
