"""TEST.UNKNOWN_SCORE: the model's "unknown_score" output beside an unchanged "sem_seg"."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detectron2.modeling import build_model

from protoseg.checkpoint import ProtoSegCheckpointer
from protoseg.visualization.inference import embed_image

from conftest import toy_cfg


def trained(cfg, weights):
    model = build_model(cfg)
    ProtoSegCheckpointer(model).load(str(weights))
    return model.eval()


def test_nearest_prototype_score_is_the_distance_to_the_nearest_prototype(trained_toy_checkpoint):
    _, weights = trained_toy_checkpoint
    image = (torch.rand(3, 100, 120, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    inputs = [{"image": image, "height": 100, "width": 120}]
    with torch.no_grad():
        plain = trained(toy_cfg(), weights)(inputs)[0]
        model = trained(toy_cfg(opts=["TEST.UNKNOWN_SCORE", "nearest_prototype"]), weights)
        out = model(inputs)[0]
    assert torch.equal(out["sem_seg"], plain["sem_seg"]) and "unknown_score" not in plain
    # 1 - max cos of the pixel embeddings the interpretability tools read (13 x 15 cells at stride
    # 8), upsampled as the head upsamples its logits: bilinearly, straight to the image's size
    emb = embed_image(model, toy_cfg(opts=["INPUT.MIN_SIZE_TEST", 0]), image.permute(1, 2, 0).numpy()).embeddings
    protos = model.sem_seg_head.memory.prototypes.reshape(-1, emb.shape[0])
    nearest = torch.einsum("dhw,md->mhw", emb, protos).amax(0)
    expected = 1.0 - F.interpolate(nearest[None, None], size=(100, 120), mode="bilinear", align_corners=False)[0, 0]
    assert out["unknown_score"].shape == (100, 120)
    assert torch.allclose(out["unknown_score"], expected, atol=1e-5)
    assert 0.0 <= float(out["unknown_score"].min()) and float(out["unknown_score"].max()) <= 2.0


def test_softmax_baseline_offers_the_logit_scores():
    cfg = toy_cfg("parametric_r18-d8_fcn_toy.yaml")
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    inputs = [{"image": torch.rand(3, 64, 64) * 255}]
    for name, expected in (("max_softmax", lambda z: 1 - z.softmax(0).amax(0)), ("max_logit", lambda z: -z.amax(0))):
        model = build_model(toy_cfg("parametric_r18-d8_fcn_toy.yaml", ["TEST.UNKNOWN_SCORE", name]))
        model.load_state_dict(state)
        with torch.no_grad():
            out = model.eval()(inputs)[0]
        assert torch.allclose(out["unknown_score"], expected(out["sem_seg"]))
    with pytest.raises(ValueError, match="'nearest_prototype' needs a ProtoSeg head"):
        build_model(toy_cfg("parametric_r18-d8_fcn_toy.yaml", ["TEST.UNKNOWN_SCORE", "nearest_prototype"]))
    with pytest.raises(ValueError, match="TEST.AUG.ENABLED"):
        build_model(toy_cfg(opts=["TEST.UNKNOWN_SCORE", "max_logit", "TEST.AUG.ENABLED", True,
                                  "TEST.AUG.MIN_SIZES", (64,), "TEST.AUG.FLIP", True]))


def test_demo_draws_pixels_above_the_unknown_threshold_as_unknown(trained_toy_checkpoint, toy_dataset, tmp_path, monkeypatch):
    from PIL import Image
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer

    from conftest import REPO, TOY_CONFIGS, load_script

    demo = load_script("protoseg_demo_unknown", REPO / "demo" / "demo.py")
    cfg, weights = trained_toy_checkpoint
    path = str(sorted((toy_dataset / "images" / "validation").glob("*.jpg"))[0])
    image = read_image(path, format="RGB")
    model = trained(toy_cfg(opts=["TEST.UNKNOWN_SCORE", "nearest_prototype"]), weights)
    with torch.no_grad():
        out = model([{"image": torch.as_tensor(image.transpose(2, 0, 1).astype("float32"))}])[0]
    threshold = float(out["unknown_score"].median())
    expected = out["sem_seg"].argmax(0).numpy()
    expected[out["unknown_score"].numpy() > threshold] = 8

    texts = []
    original = Visualizer.draw_text
    monkeypatch.setattr(Visualizer, "draw_text", lambda self, text, *a, **k: texts.append(text) or original(self, text, *a, **k))
    demo.main(["--config-file", str(TOY_CONFIGS / "protoseg_r18-d8_fcn_toy.yaml"), "--input", path,
               "--output", str(tmp_path / "pic.png"), "--save-label-map", "--unknown-threshold", str(threshold),
               "--opts", "MODEL.WEIGHTS", str(weights), "DATASETS.TEST", "('toy_test_val',)"])
    labels = np.asarray(Image.open(tmp_path / "pic_labels.png"))
    assert 0.4 < (labels == 8).mean() < 0.6
    assert (labels == expected).mean() > 0.999  # the demo's JPEG decoding and the model's agree
    assert "unknown" in texts
