"""Model + visualisation for the demo: Detectron2's DefaultPredictor and Visualizer.draw_sem_seg.

Colours are fixed per class (the dataset's ``stuff_colors``; a seeded palette for a dataset without
them), only the classes present are labelled, and a class whose largest region is smaller than the
area threshold is coloured but not labelled, so that pictures of 847-class models stay legible.
"""
import logging
from typing import Iterator, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.utils.visualizer import ColorMode, Visualizer

from protoseg.predictor import Predictor

__all__ = ["SemSegDemo", "demo_metadata", "with_unknown_class", "save_label_map", "read_label_map",
           "DEFAULT_AREA_FRACTION", "UNKNOWN_NAME"]

logger = logging.getLogger("protoseg")

#: without ``area_threshold``, regions smaller than this share of the image are not labelled
DEFAULT_AREA_FRACTION = 0.005
_OFF_WHITE = (1.0, 1.0, 240.0 / 255)  # Visualizer.draw_sem_seg's edge colour
#: name and colour of the pixels drawn as unknown (``unknown_threshold``), label id C
UNKNOWN_NAME, UNKNOWN_COLOR = "unknown", [96, 96, 96]


def demo_metadata(dataset_name: Optional[str], num_classes: int, class_names: Sequence[str] = ()) -> Metadata:
    """Class names and colours to draw with: ``class_names`` (the model's,
    ``MODEL.SEM_SEG_HEAD.CLASS_NAMES``) or else those of ``dataset_name`` (``MetadataCatalog``),
    padded to ``num_classes`` with "class_<i>" names; the dataset's colours, and fixed (seeded)
    colours where the dataset has fewer or none. A copy: the catalogue entry is not modified."""
    source = MetadataCatalog.get(dataset_name) if dataset_name else None
    names = list(source.get("stuff_classes", [])) if source is not None else []
    if class_names:
        names = list(class_names)
    colors = list(source.get("stuff_colors", []) or []) if source is not None else []
    if len(names) != num_classes:
        logger.warning(
            "dataset %r has %d class names, the model predicts %d classes: %s",
            dataset_name, len(names), num_classes,
            "extra names are ignored" if len(names) > num_classes else "missing names are 'class_<i>'",
        )
    names = (names + [f"class_{i}" for i in range(len(names), num_classes)])[:num_classes]
    palette = np.random.RandomState(0).randint(0, 256, size=(max(num_classes, 1), 3))
    colors = [list(map(int, c)) for c in colors[:num_classes]]
    colors += [palette[i].tolist() for i in range(len(colors), num_classes)]
    return Metadata(name=f"{dataset_name or 'unknown'} (demo)", stuff_classes=names, stuff_colors=colors)


def with_unknown_class(metadata: Metadata) -> Metadata:
    """``metadata`` with one more class, "unknown" (dark grey), at id C: the pixels whose
    ``unknown_score`` exceeds the demo's threshold."""
    return Metadata(name=metadata.name, stuff_classes=list(metadata.stuff_classes) + [UNKNOWN_NAME],
                    stuff_colors=list(metadata.stuff_colors) + [UNKNOWN_COLOR])


def save_label_map(path: str, label_map: np.ndarray, num_classes: int) -> None:
    """Write a (H, W) label map as a PNG: 8-bit when ``num_classes <= 256``, else 16-bit."""
    label_map = np.asarray(label_map)
    if num_classes > 65536:
        raise ValueError(f"{path}: {num_classes} classes do not fit in a 16-bit PNG")
    if label_map.size and (label_map.min() < 0 or label_map.max() >= max(num_classes, 1)):
        raise ValueError(f"{path}: labels {label_map.min()}..{label_map.max()} outside 0..{num_classes - 1}")
    dtype = np.uint8 if num_classes <= 256 else np.uint16
    if not cv2.imwrite(str(path), label_map.astype(dtype)):
        raise OSError(f"cannot write label map {path}")


def read_label_map(path: str) -> np.ndarray:
    """A label map written by :func:`save_label_map` (uint8 or uint16 (H, W))."""
    label_map = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label_map is None:
        raise OSError(f"cannot read label map {path}")
    return label_map


class SemSegDemo:
    """Predicts a label map for an image and draws it with the dataset's class names and colours."""

    min_drawn_size = 512

    def __init__(self, cfg, alpha: float = 0.6, labels: bool = True, area_threshold: Optional[int] = None,
                 unknown_threshold: Optional[float] = None):
        """
        Args:
            cfg: a frozen config; ``cfg.MODEL.WEIGHTS`` is loaded.
            alpha: opacity of the colours.
            labels: write the class names on the regions.
            area_threshold: a class is labelled only when its largest connected region has at
                least this many pixels (of the input image); None: ``DEFAULT_AREA_FRACTION`` of
                the image. Smaller regions are still coloured.
            unknown_threshold: pixels whose ``unknown_score`` (``cfg.TEST.UNKNOWN_SCORE``) exceeds
                it get label C, drawn as "unknown"; None: no unknown pixels.
        """
        if unknown_threshold is not None and not cfg.TEST.UNKNOWN_SCORE:
            raise ValueError("an unknown threshold needs TEST.UNKNOWN_SCORE (nearest_prototype, max_softmax, max_logit)")
        self.predictor = Predictor(cfg)
        self.num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        self.metadata = demo_metadata(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None, self.num_classes,
                                      cfg.MODEL.SEM_SEG_HEAD.CLASS_NAMES)
        self.alpha = alpha
        self.labels = labels
        self.area_threshold = area_threshold
        self.unknown_threshold = unknown_threshold
        if unknown_threshold is not None:
            self.metadata = with_unknown_class(self.metadata)

    def predict(self, image_bgr: np.ndarray) -> np.ndarray:
        """image (H, W, 3) uint8 BGR -> label map (H, W) int64 (C where unknown, with an
        ``unknown_threshold``). Without a threshold, :meth:`Predictor.label_map`: memory does not
        grow with classes x image size; with one, the argmax of the full (C, H, W) ``sem_seg`` beside
        the ``unknown_score`` map."""
        if self.unknown_threshold is None:
            return self.predictor.label_map(image_bgr).to(torch.int64).cpu().numpy()
        output = self.predictor(image_bgr)  # DefaultPredictor takes BGR (and converts for RGB models)
        label_map = output["sem_seg"].argmax(dim=0).to(torch.int64).cpu().numpy()
        label_map[output["unknown_score"].cpu().numpy() > self.unknown_threshold] = self.num_classes
        return label_map

    def run_on_image(self, image_bgr: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """image (H, W, 3) uint8 BGR (OpenCV) -> (label map (H, W) int64, visualisation RGB uint8,
        (H', W', 3), enlarged so that its short side is at least ``min_drawn_size`` pixels)."""
        label_map = self.predict(image_bgr)
        return label_map, self.draw(image_bgr[:, :, ::-1], label_map)

    def run_on_video(self, capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
        """Frames of an OpenCV capture -> visualisations, BGR uint8 (for cv2.VideoWriter / imshow)."""
        while capture.isOpened():
            ok, frame = capture.read()
            if not ok:
                break
            _, vis = self.run_on_image(frame)
            yield np.ascontiguousarray(vis[:, :, ::-1])

    def draw(self, image_rgb: np.ndarray, label_map: np.ndarray) -> np.ndarray:
        """The label map drawn over the image (RGB uint8). Labels outside 0..C-1 (e.g. an ignore
        value) are not drawn."""
        # small images are drawn enlarged so that class names stay legible
        scale = max(1.0, self.min_drawn_size / min(image_rgb.shape[:2]))
        vis = Visualizer(image_rgb, self.metadata, scale=scale, instance_mode=ColorMode.IMAGE)
        num_names = len(self.metadata.stuff_classes)
        present = [int(c) for c in np.unique(label_map) if 0 <= c < num_names]
        if self.labels:
            threshold = self.area_threshold
            if threshold is None:
                threshold = DEFAULT_AREA_FRACTION * label_map.size
            small = [c for c in present if _largest_region(label_map == c) < threshold]
            labelled = label_map.copy()
            labelled[np.isin(labelled, small)] = num_names  # draw_sem_seg skips labels >= num_names
            vis.draw_sem_seg(labelled, alpha=self.alpha)
            unlabelled = small
        else:
            unlabelled = present
        for c in unlabelled:
            color = [x / 255.0 for x in self.metadata.stuff_colors[c]]
            # area_threshold 0: every region coloured (detectron2 main's default skips those under 10 px)
            vis.draw_binary_mask((label_map == c).astype(np.uint8), color=color, edge_color=_OFF_WHITE,
                                 alpha=self.alpha, area_threshold=0)
        return vis.output.get_image()


def _largest_region(mask: np.ndarray) -> int:
    """Pixels of the largest 8-connected region of a boolean mask (the one draw_sem_seg labels)."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return int(stats[1:, cv2.CC_STAT_AREA].max()) if n > 1 else 0
