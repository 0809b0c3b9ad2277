"""Model + visualisation for the demo: Detectron2's DefaultPredictor and Visualizer.draw_sem_seg."""
import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, Visualizer


class SemSegDemo:
    """Predicts a label map for an image and draws it with the dataset's class names and colours."""

    min_drawn_size = 512

    def __init__(self, cfg, alpha: float = 0.6, labels: bool = True):
        self.predictor = DefaultPredictor(cfg)
        name = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused"
        self.metadata = MetadataCatalog.get(name)
        self.input_format = cfg.INPUT.FORMAT
        self.alpha = alpha
        self.labels = labels

    def run_on_image(self, image_bgr: np.ndarray):
        """image (H, W, 3) uint8 BGR (OpenCV) -> (label map (H, W) int64, visualisation RGB uint8,
        (H, W, 3), enlarged so that its short side is at least 512 pixels)."""
        image = image_bgr if self.input_format == "BGR" else image_bgr[:, :, ::-1]
        logits = self.predictor(image)["sem_seg"]  # (C, H, W)
        label_map = logits.argmax(dim=0).to(torch.int64).cpu().numpy()
        rgb = image_bgr[:, :, ::-1]
        # small images are drawn enlarged so that class names stay legible
        scale = max(1.0, self.min_drawn_size / min(rgb.shape[:2]))
        vis = Visualizer(rgb, self.metadata, scale=scale, instance_mode=ColorMode.IMAGE)
        if self.labels:
            drawn = vis.draw_sem_seg(label_map, alpha=self.alpha)
        else:
            drawn = self._draw_without_labels(vis, label_map)
        return label_map, drawn.get_image()

    def _draw_without_labels(self, vis, label_map):
        colors = self.metadata.get("stuff_colors", None)
        for label in np.unique(label_map):
            color = [c / 255.0 for c in colors[label]] if colors is not None else None
            vis.draw_binary_mask(label_map == label, color=color, alpha=self.alpha)
        return vis.output
