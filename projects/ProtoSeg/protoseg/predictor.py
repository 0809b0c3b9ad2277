"""The predictor of the demo, the web page and the tools: Detectron2's ``DefaultPredictor`` with the
project's checkpointer, and a label map without the (C, H, W) scores at the image's size."""
import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from .checkpoint import ProtoSegCheckpointer

__all__ = ["Predictor"]


class Predictor(DefaultPredictor):
    """Detectron2's ``DefaultPredictor`` (same pre-processing and ``__call__``: BGR input,
    ``cfg.INPUT.FORMAT``, ``ResizeShortestEdge`` to ``MIN_SIZE_TEST``/``MAX_SIZE_TEST``) whose
    weights are loaded, once, by ``ProtoSegCheckpointer``: DetectionCheckpointer would skip a key of
    another shape (a prototype buffer, a classifier of another class count) or a missing one with a
    warning and predict with random weights there; here any such key is an error naming it."""

    def __init__(self, cfg):
        # DefaultPredictor.__init__ (v0.6 to main), with the project's checkpointer
        self.cfg = cfg.clone()  # cfg can be modified by model
        self.model = build_model(self.cfg)
        self.model.eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        ProtoSegCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be RGB or BGR for the demo, got {self.input_format!r}")

    def model_input(self, original_image: np.ndarray) -> dict:
        """(H, W, 3) uint8 BGR -> the model's input dict, as ``DefaultPredictor.__call__`` makes it:
        channels in ``INPUT.FORMAT``, test-time resize, "height"/"width" of the image."""
        if self.input_format == "RGB":
            original_image = original_image[:, :, ::-1]
        height, width = original_image.shape[:2]
        image = self.aug.get_transform(original_image).apply_image(original_image)
        return {"image": torch.as_tensor(image.astype("float32").transpose(2, 0, 1)), "height": height, "width": width}

    def __call__(self, original_image: np.ndarray) -> dict:
        """``DefaultPredictor.__call__``: (H, W, 3) uint8 BGR -> ``{"sem_seg": (C, H, W)}``."""
        with torch.no_grad():
            return self.model([self.model_input(original_image)])[0]

    def label_map(self, original_image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 BGR -> (H, W) int64 predicted classes: the argmax of :meth:`__call__`'s
        ``sem_seg``, computed by ``predict_labels`` of the project's segmentor without the (C, H, W)
        scores at the image's size (other meta-architectures: the argmax of their ``sem_seg``)."""
        with torch.no_grad():
            inputs = [self.model_input(original_image)]
            if hasattr(self.model, "predict_labels"):
                return self.model.predict_labels(inputs)[0]
            return self.model(inputs)[0]["sem_seg"].argmax(dim=0)
