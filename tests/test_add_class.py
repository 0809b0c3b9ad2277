"""Adding a class from a few labelled images (tools/add_class.py, protoseg/new_class.py), class names
that travel with the model (MODEL.SEM_SEG_HEAD.CLASS_NAMES) and training with held-out classes
(INPUT.HELD_OUT_CLASSES)."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.visualizer import Visualizer

from protoseg.checkpoint import ProtoSegCheckpointer
from protoseg.config import load_config
from protoseg.data.mapper import SemSegDatasetMapper
from protoseg.modeling.prototypes import PrototypeMemory
from protoseg.new_class import add_class, cluster_prototypes, extend_score_norm, support_embeddings

from conftest import REPO, TOY_CONFIGS, load_script, toy_cfg

add_class_tool = load_script("protoseg_add_class", REPO / "tools" / "add_class.py")
demo = load_script("protoseg_demo_add_class", REPO / "demo" / "demo.py")
train_net = load_script("train_net_add_class", REPO / "train_net.py")

PROTOSEG_TOY = TOY_CONFIGS / "protoseg_r18-d8_fcn_toy.yaml"


def class_examples(toy_dataset, class_id, count, out_dir):
    """(image, mask) files of the first ``count`` training images showing ``class_id``: masks
    written as 0/255 PNGs, as a user would draw them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = []
    for d in sorted(DatasetCatalog.get("toy_test_train"), key=lambda d: d["file_name"]):
        labels = np.asarray(Image.open(d["sem_seg_file_name"]))
        if (labels == class_id).mean() < 0.05:
            continue
        mask = out_dir / (os.path.basename(d["file_name"]) + "_mask.png")
        Image.fromarray(((labels == class_id) * 255).astype(np.uint8)).save(mask)
        pairs.append((d["file_name"], str(mask)))
        if len(pairs) == count:
            return pairs
    raise AssertionError(f"fewer than {count} training images show class {class_id}")


def per_class_rows(report_dir):
    with open(report_dir / "per_class_iou.csv") as f:
        return list(csv.DictReader(f))


def test_added_class_is_evaluated_and_drawn_under_its_name(trained_toy_checkpoint, toy_dataset, tmp_path, monkeypatch):
    _, weights = trained_toy_checkpoint
    pairs = class_examples(toy_dataset, 7, 2, tmp_path / "support")
    env = dict(os.environ, DETECTRON2_DATASETS=str(toy_dataset.parent))
    out = tmp_path / "with_novel"
    cmd = [sys.executable, str(REPO / "tools" / "add_class.py"), "--config-file", str(PROTOSEG_TOY),
           "--weights", str(weights), "--name", "novel", "--output", str(out),
           "--images", *[p[0] for p in pairs], "--masks", *[p[1] for p in pairs]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "class 8 'novel' added from 2 image(s)" in proc.stdout

    # train_net.py --eval-only with the written config: 9 classes, the 9th by its name
    cmd = [sys.executable, str(REPO / "train_net.py"), "--eval-only", "--config-file", str(out / "config.yaml"),
           "OUTPUT_DIR", str(tmp_path / "eval")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = per_class_rows(tmp_path / "eval" / "inference" / "toy_scenes_sem_seg_val")
    assert [r["class"] for r in rows] == [f"toy0{i}" for i in range(8)] + ["novel"]
    # the validation labels have no pixel of it: no accuracy; its IoU is 0 where it is predicted
    # (it counts in the mean, as in mmsegmentation and cityscapesScripts), NaN where not
    assert rows[-1]["ACC"] == "nan" and rows[-1]["IoU"] in ("0.0", "nan")
    assert "novel" in (tmp_path / "eval" / "log.txt").read_text().split("Per-class results")[1]

    # the demo draws it, under its name, on a support image (its own pixels are "novel")
    texts = []
    original = Visualizer.draw_text
    monkeypatch.setattr(Visualizer, "draw_text", lambda self, text, *a, **k: texts.append(text) or original(self, text, *a, **k))
    demo.main(["--config-file", str(out / "config.yaml"), "--input", pairs[0][0], "--output", str(tmp_path / "vis.png"),
               "--save-label-map", "--opts", "DATASETS.TEST", "('toy_test_val',)"])
    label_map = np.asarray(Image.open(tmp_path / "vis_labels.png"))
    mask = np.asarray(Image.open(pairs[0][1])) > 0
    assert (label_map[mask] == 8).mean() > 0.5
    assert "novel" in texts


def test_prototypes_of_the_added_class_are_the_clustered_support_embeddings(trained_toy_checkpoint, toy_dataset, tmp_path):
    cfg, weights = trained_toy_checkpoint
    pairs = class_examples(toy_dataset, 3, 3, tmp_path)
    addition = add_class(cfg, str(weights), pairs, "novel")
    old = torch.load(weights, weights_only=True)["model"]
    protos = addition.state["sem_seg_head.memory.prototypes"]
    K = protos.shape[1]
    assert protos.shape[0] == 9 and torch.equal(protos[:8], old["sem_seg_head.memory.prototypes"])
    assert torch.allclose(protos[8].norm(dim=1), torch.ones(K), atol=1e-5)
    assert len(addition.pixel_counts) == K and sum(addition.pixel_counts) == addition.support_cells
    # K distinct prototypes, each the l2-normalised sum of the cells it was assigned
    assert (addition.pixel_counts[0] > 0) and int((torch.cdist(protos[8], protos[8]) > 1e-4).sum()) > K * (K - 1) // 2
    # every new prototype is closer to the class's own trained prototypes than to any other class's:
    # the support cells are class 3's pixels, embedded by the model that learned class 3
    nearest_class = (protos[8] @ protos[:8].reshape(-1, protos.shape[-1]).t()).argmax(1) // K
    assert (nearest_class == 3).float().mean() >= 0.8
    weight, bias = (addition.state[f"sem_seg_head.score_norm.{k}"] for k in ("weight", "bias"))
    old_w, old_b = old["sem_seg_head.score_norm.weight"], old["sem_seg_head.score_norm.bias"]
    assert torch.equal(weight[:8], old_w) and weight[8] == pytest.approx(float(old_w.mean()))
    assert bias[8] == pytest.approx(float(old_b.mean()))
    assert 0.0 <= addition.old_argmax_changed < 0.5
    with pytest.raises(ValueError, match="'toy03' is already class 3"):
        add_class(cfg, str(weights), pairs, "toy03")


def test_parametric_head_gets_imprinted_rows(toy_dataset, tmp_path):
    cfg = toy_cfg("parametric_r18-d8_fcn_toy.yaml", ["DATASETS.TEST", ("toy_test_val",)])
    torch.manual_seed(0)
    model = build_model(cfg)
    ProtoSegCheckpointer(model, str(tmp_path)).save("random")
    weights = tmp_path / "random.pth"
    pairs = class_examples(toy_dataset, 5, 2, tmp_path)
    addition = add_class(cfg, str(weights), pairs, "novel")

    model.eval()
    cells = []
    for image_path, mask_path in pairs:
        image = np.asarray(Image.open(image_path).convert("RGB"))
        emb, positive = support_embeddings(model, cfg, image, np.asarray(Image.open(mask_path)) > 0)
        cells.append(emb[positive])
    direction = F.normalize(F.normalize(torch.cat(cells), dim=1).sum(0), dim=0)
    w, b = model.sem_seg_head.classifier.weight.detach(), model.sem_seg_head.classifier.bias.detach()
    new_w, new_b = addition.state["sem_seg_head.classifier.weight"], addition.state["sem_seg_head.classifier.bias"]
    assert new_w.shape == (9, *w.shape[1:]) and torch.equal(new_w[:8], w)
    assert torch.allclose(new_w[8].flatten(), direction * w.flatten(1).norm(dim=1).mean(), atol=1e-5)
    assert new_b[8] == pytest.approx(float(b.mean()))


def test_clustering_splits_two_modes_and_keeps_prototypes_without_pixels():
    memory = PrototypeMemory(num_classes=1, num_prototypes=1, dim=2)
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.tensor([1.0, 0.0]) + 0.05 * torch.randn(20, 2, generator=g), dim=1)
    b = F.normalize(torch.tensor([0.0, 1.0]) + 0.05 * torch.randn(20, 2, generator=g), dim=1)
    protos, counts = cluster_prototypes(torch.cat([a, b]), memory, 2)
    centres = torch.stack([F.normalize(a.sum(0), dim=0), F.normalize(b.sum(0), dim=0)])
    match = protos @ centres.t()
    assert sorted(counts.tolist()) == [20, 20]
    assert match.max(1).values.min() > 0.9999 and set(match.argmax(1).tolist()) == {0, 1}
    # two cells, three prototypes: the third repeats a cell, and gets no pixel
    protos, counts = cluster_prototypes(a[:2], memory, 3)
    assert torch.isfinite(protos).all() and counts.sum() == 2
    assert all(any(torch.allclose(p, q, atol=1e-6) for q in a[:2]) for p in protos)


def test_score_norm_gets_the_mean_weight_and_bias():
    w, b = extend_score_norm(torch.tensor([1.0, 2.0, 6.0]), torch.tensor([0.5, -0.5, 3.0]))
    assert w.tolist() == [1.0, 2.0, 6.0, 3.0] and b.tolist() == [0.5, -0.5, 3.0, 1.0]


def test_held_out_class_is_ignored_in_training_and_evaluation_then_added_back(toy_dataset, tmp_path):
    # the training mapper turns the held-out class's pixels into the ignore value
    record = next(d for d in DatasetCatalog.get("toy_test_train") if 7 in np.asarray(Image.open(d["sem_seg_file_name"])))
    crop = ["INPUT.CROP.ENABLED", False]
    labels = SemSegDatasetMapper(load_config(PROTOSEG_TOY, [*crop, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 7,
                                                           "INPUT.HELD_OUT_CLASSES", 1]), is_train=True)(record)["sem_seg"]
    raw = torch.as_tensor(np.array(Image.open(record["sem_seg_file_name"])), dtype=torch.int64)
    assert labels.shape == raw.shape  # no crop, no scale jitter (the toy's resize keeps 128); maybe flipped
    expected = torch.where(raw == 7, torch.full_like(raw, 255), raw)
    assert torch.equal(labels.flatten().bincount(minlength=256), expected.flatten().bincount(minlength=256))

    args = train_net.get_parser().parse_args([
        "--config-file", str(PROTOSEG_TOY), "DATASETS.TRAIN", "('toy_test_train',)", "DATASETS.TEST", "('toy_test_val',)",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7", "INPUT.HELD_OUT_CLASSES", "1", "SOLVER.MAX_ITER", "10",
        "SOLVER.IMS_PER_BATCH", "4", "TEST.EVAL_PERIOD", "10", "SOLVER.CHECKPOINT_PERIOD", "10000", "OUTPUT_DIR", str(tmp_path / "held_out"),
        "DATALOADER.NUM_WORKERS", "0",
    ])
    train_net.main(args)
    rows = per_class_rows(tmp_path / "held_out" / "inference" / "toy_test_val")
    assert [r["class"] for r in rows] == [f"toy0{i}" for i in range(7)]  # class 7's pixels ignored

    pairs = class_examples(toy_dataset, 7, 2, tmp_path / "support")
    with pytest.raises(SystemExit, match="which the dataset calls 'toy07', not 'novel'"):
        add_class_tool.main(["--config-file", str(tmp_path / "held_out" / "config.yaml"),
                             "--weights", str(tmp_path / "held_out" / "model_final.pth"), "--name", "novel",
                             "--output", str(tmp_path / "x"), "--images", pairs[0][0], "--masks", pairs[0][1]])
    add_class_tool.main(["--config-file", str(tmp_path / "held_out" / "config.yaml"),
                         "--weights", str(tmp_path / "held_out" / "model_final.pth"), "--name", "toy07",
                         "--output", str(tmp_path / "added"), "--images", *[p[0] for p in pairs],
                         "--masks", *[p[1] for p in pairs]])
    args = train_net.get_parser().parse_args(["--eval-only", "--config-file", str(tmp_path / "added" / "config.yaml")])
    added = train_net.main(args)["sem_seg"]
    assert not np.isnan(added["IoU-toy07"])  # scored against the dataset's own class-7 labels
    rows = per_class_rows(tmp_path / "added" / "inference" / "toy_test_val")
    assert [r["class"] for r in rows] == [f"toy0{i}" for i in range(8)]


def test_class_names_must_fit_the_class_count():
    cfg = toy_cfg(opts=["MODEL.SEM_SEG_HEAD.CLASS_NAMES", ["a", "b"]])
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.CLASS_NAMES = \\['a', 'b'\\]: must be MODEL.SEM_SEG_HEAD.NUM_CLASSES"):
        build_model(cfg)
