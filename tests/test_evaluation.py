"""The evaluation report: SemSegReportEvaluator's files against a hand-computed case, its metrics
against Detectron2's SemSegEvaluator, and Trainer.test on the trained toy checkpoint."""
import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator

from protoseg.evaluation import REPORT_FILES, SemSegReportEvaluator, confused_pairs, plot_per_class_iou

from conftest import toy_cfg

CLASSES = ["sky", "road", "tree", "boat"]  # "boat" is in neither ground truth nor predictions
IGNORE = 255
# (ground truth, prediction) of two 2x3 images
GT = [np.array([[0, 0, 1], [1, 2, IGNORE]]), np.array([[2, 2, 2], [0, 0, 1]])]
PRED = [np.array([[0, 1, 1], [1, 2, 0]]), np.array([[2, 0, 2], [0, 0, 1]])]
# by hand, ignoring the ignored pixel (predicted sky):
#   sky: 4 true pixels, 3 right, 1 -> road; predicted 4 times (3 + 1 tree pixel) -> IoU 3/5, Acc 3/4
#   road: 3 true, 3 right; predicted 4 times -> IoU 3/4, Acc 1
#   tree: 4 true, 3 right, 1 -> sky; predicted 3 times -> IoU 3/4, Acc 3/4
EXPECTED_IOU = {"sky": 60.0, "road": 75.0, "tree": 75.0}
EXPECTED_ACC = {"sky": 75.0, "road": 100.0, "tree": 75.0}
EXPECTED_CONF = np.zeros((5, 5), dtype=np.int64)  # [pred, true], last column: ignored pixels
EXPECTED_CONF[0, 0], EXPECTED_CONF[1, 0], EXPECTED_CONF[1, 1] = 3, 1, 3
EXPECTED_CONF[2, 2], EXPECTED_CONF[0, 2], EXPECTED_CONF[0, 4] = 3, 1, 1


@pytest.fixture
def hand_dataset(tmp_path):
    name = "hand_eval_test"
    records = []
    for i, gt in enumerate(GT):
        path = tmp_path / f"gt_{i}.png"
        Image.fromarray(gt.astype(np.uint8)).save(path)
        records.append({"file_name": f"img_{i}.jpg", "sem_seg_file_name": str(path), "image_id": i})
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=CLASSES, ignore_label=IGNORE, sem_seg_root=str(tmp_path),
                                  evaluator_type="sem_seg")
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def feed(evaluator):
    evaluator.reset()
    for i, pred in enumerate(PRED):
        logits = torch.nn.functional.one_hot(torch.as_tensor(pred), len(CLASSES)).permute(2, 0, 1).float()
        evaluator.process([{"file_name": f"img_{i}.jpg"}], [{"sem_seg": logits}])
    return evaluator.evaluate()


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_report_files_match_hand_computed_counts(hand_dataset, tmp_path):
    out = tmp_path / "report"
    results = feed(SemSegReportEvaluator(hand_dataset, report_dir=str(out)))["sem_seg"]
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)

    conf = np.load(out / "confusion_matrix.npy")
    assert conf.dtype == np.int64 and conf.shape == (5, 5)
    np.testing.assert_array_equal(conf, EXPECTED_CONF)

    table = read_csv(out / "per_class_iou.csv")
    assert table[0] == ["class", "IoU", "ACC"] and [r[0] for r in table[1:]] == CLASSES
    for name, iou, acc in table[1:]:
        if name == "boat":
            assert iou == "nan" and acc == "nan"
        else:
            assert float(iou) == pytest.approx(EXPECTED_IOU[name]) and float(acc) == pytest.approx(EXPECTED_ACC[name])
    assert results["mIoU"] == pytest.approx(70.0)

    pairs = read_csv(out / "confused_pairs.csv")
    assert pairs[0] == ["true_class", "predicted_class", "pixels", "share_of_true_class"]
    assert [(t, p, int(n), float(s)) for t, p, n, s in pairs[1:]] == [("sky", "road", 1, 0.25), ("tree", "sky", 1, 0.25)]

    with Image.open(out / "per_class_iou.png") as im:
        assert im.format == "PNG" and im.width >= 400 and im.height >= 150
        pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 10  # bars and text, not a blank canvas
    # bars are drawn in colour (not only black text on white)
    assert ((pixels.max(-1) - pixels.min(-1)) > 40).mean() > 0.01


def test_metrics_are_detectron2s(hand_dataset, tmp_path):
    ours = feed(SemSegReportEvaluator(hand_dataset, report_dir=str(tmp_path / "r")))["sem_seg"]
    theirs = feed(SemSegEvaluator(hand_dataset))["sem_seg"]
    assert ours.keys() == theirs.keys()
    assert all(math.isnan(v) and math.isnan(theirs[k]) or v == theirs[k] for k, v in ours.items())


# ---- the standard metrics, whatever the Detectron2 version -------------------------------------

STD_CLASSES = ["sky", "road", "tree", "boat", "car"]
STD_GT = np.array([[0, 0, 1, 1], [2, 2, IGNORE, 0]])
STD_PRED = np.array([[0, 3, 1, 1], [2, 0, 3, 0]])  # "boat" predicted, not in the ground truth; no "car"
# by hand, over the 7 labelled pixels:
#   sky: 3 true, 2 right, predicted 3 times -> IoU 2/4, Acc 2/3
#   road: 2 true, 2 right, predicted twice -> IoU 1, Acc 1
#   tree: 2 true, 1 right, predicted once -> IoU 1/2, Acc 1/2
#   boat: 0 true, predicted once -> IoU 0 (counts in the mean), Acc NaN; car: IoU and Acc NaN
STD_MIOU = 100 * (0.5 + 1 + 0.5 + 0) / 4  # 50.0 (mmseg, cityscapesScripts); 66.67 without "boat"
STD_FWIOU = 100 * (3 * 0.5 + 2 * 1 + 2 * 0.5) / 7
STD_MACC = 100 * (2 / 3 + 1 + 0.5) / 3
STD_PACC = 100 * 5 / 7


def numpy_reference(gt, pred, num_classes, ignore):
    """Per-class IoU and Acc (percent) as pixel sets: |gt & pred| / |gt | pred| and |gt & pred| / |gt|
    over the labelled pixels, NaN where the denominator is empty."""
    labelled = gt != ignore
    iou, acc = [], []
    for c in range(num_classes):
        is_gt, is_pred = (gt == c) & labelled, (pred == c) & labelled
        inter, union, true = (is_gt & is_pred).sum(), (is_gt | is_pred).sum(), is_gt.sum()
        iou.append(100 * inter / union if union else float("nan"))
        acc.append(100 * inter / true if true else float("nan"))
    return np.array(iou), np.array(acc)


@pytest.fixture
def predicted_absent_dataset(tmp_path):
    name = "predicted_absent_eval_test"
    path = tmp_path / "gt.png"
    Image.fromarray(STD_GT.astype(np.uint8)).save(path)
    records = [{"file_name": "img.jpg", "sem_seg_file_name": str(path), "image_id": 0}]
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=STD_CLASSES, ignore_label=IGNORE, evaluator_type="sem_seg")
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def trainer_evaluation(dataset_name, tmp_path):
    """The metrics of STD_PRED by the evaluator that Trainer.build_evaluator builds."""
    from protoseg.engine.trainer import Trainer

    cfg = toy_cfg(opts=["OUTPUT_DIR", str(tmp_path), "MODEL.SEM_SEG_HEAD.NUM_CLASSES", len(STD_CLASSES)])
    evaluator = Trainer.build_evaluator(cfg, dataset_name)
    evaluator.reset()
    evaluator.process([{"file_name": "img.jpg"}], [{"sem_seg": one_hot_scores(STD_PRED, len(STD_CLASSES))}])
    return evaluator.evaluate()["sem_seg"]


def test_a_class_predicted_but_absent_from_the_ground_truth_counts_with_iou_0(predicted_absent_dataset, tmp_path):
    res = trainer_evaluation(predicted_absent_dataset, tmp_path)
    iou, acc = numpy_reference(STD_GT, STD_PRED, len(STD_CLASSES), IGNORE)
    np.testing.assert_allclose(iou, [50.0, 100.0, 50.0, 0.0, np.nan])
    np.testing.assert_allclose(acc, [100 * 2 / 3, 100.0, 50.0, np.nan, np.nan])
    np.testing.assert_allclose([res[f"IoU-{n}"] for n in STD_CLASSES], iou)
    np.testing.assert_allclose([res[f"ACC-{n}"] for n in STD_CLASSES], acc)
    assert res["mIoU"] == pytest.approx(STD_MIOU) == pytest.approx(np.nanmean(iou))
    assert res["fwIoU"] == pytest.approx(STD_FWIOU)
    assert res["mACC"] == pytest.approx(STD_MACC) == pytest.approx(np.nanmean(acc))
    assert res["pACC"] == pytest.approx(STD_PACC)
    table = read_csv(tmp_path / "inference" / predicted_absent_dataset / "per_class_iou.csv")
    assert table[4] == ["boat", "0.0", "nan"] and table[5] == ["car", "nan", "nan"]


def test_metrics_do_not_depend_on_detectron2s_evaluate(predicted_absent_dataset, tmp_path, monkeypatch):
    """Detectron2 v0.6 and main compute different mIoUs here (50.0 and 66.67): the evaluator
    computes its own from the confusion matrix."""
    expected = trainer_evaluation(predicted_absent_dataset, tmp_path / "a")

    def versioned_evaluate(self):
        raise AssertionError("the installed SemSegEvaluator.evaluate was called")

    monkeypatch.setattr(SemSegEvaluator, "evaluate", versioned_evaluate)
    res = trainer_evaluation(predicted_absent_dataset, tmp_path / "b")
    assert res.keys() == expected.keys()
    assert all(math.isnan(v) and math.isnan(expected[k]) or v == expected[k] for k, v in res.items())
    assert res["mIoU"] == pytest.approx(STD_MIOU)


def _evaluate_one_row_per_process(rank, world, port, folder):
    """Rank r evaluates row r of STD_PRED against row r of STD_GT (registered from ``folder``);
    rank 0 saves the metrics, the other ranks what evaluate() returned."""
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        records = [{"file_name": f"row{r}.jpg", "sem_seg_file_name": f"{folder}/row{r}.png"} for r in range(world)]
        DatasetCatalog.register("rows_eval_test", lambda: records)
        MetadataCatalog.get("rows_eval_test").set(stuff_classes=STD_CLASSES, ignore_label=IGNORE)
        evaluator = SemSegReportEvaluator("rows_eval_test", distributed=True)
        evaluator.reset()
        scores = one_hot_scores(STD_PRED[rank:rank + 1], len(STD_CLASSES))
        evaluator.process([{"file_name": f"row{rank}.jpg"}], [{"sem_seg": scores}])
        torch.save(evaluator.evaluate(), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_sum_their_confusion_matrices(tmp_path):
    from conftest import run_in_processes

    for r, row in enumerate(STD_GT):
        Image.fromarray(row[None].astype(np.uint8)).save(tmp_path / f"row{r}.png")
    run_in_processes(_evaluate_one_row_per_process, 2, str(tmp_path))
    res = torch.load(tmp_path / "rank0.pt", weights_only=False)["sem_seg"]
    assert torch.load(tmp_path / "rank1.pt", weights_only=False) is None
    assert res["mIoU"] == pytest.approx(STD_MIOU) and res["pACC"] == pytest.approx(STD_PACC)
    assert res["IoU-boat"] == 0.0 and math.isnan(res["IoU-car"])


def test_no_report_dir_writes_nothing(hand_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    feed(SemSegReportEvaluator(hand_dataset))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt_0.png", "gt_1.png"]


def test_confused_pairs_order_and_shares():
    names = ["a", "b", "c"]
    conf = np.zeros((4, 4), dtype=np.int64)  # [pred, true]
    conf[1, 0], conf[2, 0], conf[0, 2], conf[0, 0], conf[2, 2], conf[0, 3] = 5, 2, 5, 13, 5, 99
    rows = confused_pairs(conf, names, top_n=2)
    assert [(r["true_class"], r["predicted_class"], r["pixels"]) for r in rows] == [("a", "b", 5), ("c", "a", 5)]
    assert rows[0]["share_of_true_class"] == pytest.approx(5 / 20) and rows[1]["share_of_true_class"] == 0.5


def test_bar_chart_of_many_classes_stays_legible(tmp_path):
    names = [f"class {i}" for i in range(847)]
    rng = np.random.RandomState(0)
    results = {f"IoU-{n}": float(v) for n, v in zip(names, rng.uniform(0, 100, len(names)))}
    results["mIoU"] = 50.0
    plot_per_class_iou(results, names, tmp_path / "many.png")
    with Image.open(tmp_path / "many.png") as im:
        assert im.height < 1500 and im.width < 1500  # best 50 and worst 50, not 847 bars
    assert (tmp_path / "many.png").stat().st_size < 300_000


def test_trainer_test_writes_the_report(trained_toy_checkpoint, tmp_path):
    from protoseg.engine.trainer import evaluate_checkpoint

    cfg, weights = trained_toy_checkpoint
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS, cfg.OUTPUT_DIR = str(weights), str(tmp_path)
    cfg.freeze()
    results = evaluate_checkpoint(cfg)["sem_seg"]
    out = tmp_path / "inference" / "toy_test_val"
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)
    table = read_csv(out / "per_class_iou.csv")
    classes = MetadataCatalog.get("toy_test_val").stuff_classes
    assert table[0] == ["class", "IoU", "ACC"] and len(table) == 1 + 8
    for name, iou, _ in table[1:]:
        assert float(iou) == pytest.approx(results[f"IoU-{name}"]) or math.isnan(results[f"IoU-{name}"])
    conf = np.load(out / "confusion_matrix.npy")
    assert conf.shape == (9, 9) and conf.dtype == np.int64 and conf[8].sum() == 0
    labels = [np.array(Image.open(r["sem_seg_file_name"])) for r in DatasetCatalog.get("toy_test_val")]
    true_pixels = np.bincount(np.concatenate([l[l != 255] for l in labels]), minlength=8)
    np.testing.assert_array_equal(conf[:8, :8].sum(axis=0), true_pixels)
    assert conf[:8, 8].sum() == sum(int((l == 255).sum()) for l in labels)
    pairs = read_csv(out / "confused_pairs.csv")[1:]
    off = conf[:8, :8] - np.diag(np.diag(conf[:8, :8]))
    true, pred, pixels = classes.index(pairs[0][0]), classes.index(pairs[0][1]), int(pairs[0][2])
    assert pixels == off.max() == off[pred, true]


# ---- scale: 16-bit ground truth, reduce_zero_label, no per-image predictions kept -------------------

ADE_FULL = 847  # ADE20K-Full's classes; its label maps are 16-bit with ignore 65535
ADE_FULL_IGNORE = 65535


def register_label_dataset(name, tmp_path, labels, ignore, num_classes, **record_extra):
    """Registers ``labels`` (list of (H, W) int arrays, written as 16-bit PNGs) as dataset ``name``."""
    records = []
    for i, gt in enumerate(labels):
        path = tmp_path / f"{name}_{i}.png"
        Image.fromarray(np.asarray(gt).astype(np.uint16)).save(path)
        records.append({"file_name": f"{name}_{i}.jpg", "sem_seg_file_name": str(path), "image_id": i, **record_extra})
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=[f"c{i}" for i in range(num_classes)], ignore_label=ignore,
                                  evaluator_type="sem_seg")
    return name


@pytest.fixture
def registered():
    names = []
    yield names
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def one_hot_scores(pred, num_classes):
    """(H, W) ids -> (C, H, W) scores whose argmax is ``pred``."""
    return torch.nn.functional.one_hot(torch.as_tensor(pred), num_classes).permute(2, 0, 1).float()


def test_847_classes_16bit_ground_truth_confusion(tmp_path, registered):
    gt = np.array([[300, 300, 846], [0, ADE_FULL_IGNORE, 846]])
    pred = np.array([[300, 846, 846], [0, 300, 5]])
    name = register_label_dataset("ade_full_eval_test", tmp_path, [gt], ADE_FULL_IGNORE, ADE_FULL)
    registered.append(name)
    evaluator = SemSegReportEvaluator(name, distributed=False)
    evaluator.reset()
    evaluator.process([{"file_name": f"{name}_0.jpg"}], [{"sem_seg": one_hot_scores(pred, ADE_FULL)}])
    conf = evaluator._conf_matrix
    assert conf.dtype == np.int64 and conf.shape == (ADE_FULL + 1, ADE_FULL + 1)
    expected = np.zeros_like(conf)  # [pred, true], ignore in the last column
    expected[300, 300], expected[846, 300], expected[846, 846], expected[5, 846] = 1, 1, 1, 1
    expected[0, 0], expected[300, ADE_FULL] = 1, 1
    np.testing.assert_array_equal(conf, expected)
    res = evaluator.evaluate()["sem_seg"]
    assert res["IoU-c300"] == pytest.approx(100 / 2) and res["IoU-c846"] == pytest.approx(100 / 3)
    assert res["IoU-c0"] == 100.0 and res["IoU-c5"] == 0.0  # predicted, not in the ground truth
    assert math.isnan(res["ACC-c5"]) and math.isnan(res["IoU-c6"])


def test_ids_that_are_neither_class_nor_ignore_raise_naming_the_file(tmp_path, registered):
    name = register_label_dataset("bad_ids_eval_test", tmp_path, [np.array([[1, 900]])], ADE_FULL_IGNORE, ADE_FULL)
    registered.append(name)
    evaluator = SemSegReportEvaluator(name, distributed=False)
    evaluator.reset()
    scores = one_hot_scores(np.zeros((1, 2), int), ADE_FULL)
    with pytest.raises(ValueError, match=r"bad_ids_eval_test_0\.png.*900"):
        evaluator.process([{"file_name": f"{name}_0.jpg"}], [{"sem_seg": scores}])


def test_reduce_zero_label_is_applied_to_the_ground_truth(tmp_path, registered):
    gt = np.array([[0, 1, 2, 3]])  # 0: unlabelled; c -> c - 1
    pred = np.array([[2, 0, 1, 1]])
    name = register_label_dataset("rzl_eval_test", tmp_path, [gt], 255, 3, sem_seg_reduce_zero_label=True)
    registered.append(name)
    evaluator = SemSegReportEvaluator(name, distributed=False)
    evaluator.reset()
    evaluator.process([{"file_name": f"{name}_0.jpg"}], [{"sem_seg": one_hot_scores(pred, 3)}])
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[2, 3], expected[0, 0], expected[1, 1], expected[1, 2] = 1, 1, 1, 1
    np.testing.assert_array_equal(evaluator._conf_matrix, expected)


def test_predictions_are_kept_only_when_saved(tmp_path, registered):
    import tracemalloc

    rng = np.random.RandomState(0)
    labels = [rng.randint(0, ADE_FULL, (32, 32)) for _ in range(100)]
    name = register_label_dataset("stream_eval_test", tmp_path, labels, ADE_FULL_IGNORE, ADE_FULL)
    registered.append(name)
    preds = [one_hot_scores(rng.randint(0, ADE_FULL, (32, 32)), ADE_FULL) for _ in range(100)]

    streaming = SemSegReportEvaluator(name, distributed=False)
    streaming.reset()
    tracemalloc.start()
    for i, scores in enumerate(preds):
        streaming.process([{"file_name": f"{name}_{i}.jpg"}], [{"sem_seg": scores}])
        if i == 9:
            after_10 = tracemalloc.get_traced_memory()[0]
    after_100 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert streaming._predictions == []
    assert after_100 - after_10 < 100_000  # flat: no per-image state (~600 RLE dicts per image otherwise)
    assert streaming._conf_matrix.sum() == 100 * 32 * 32

    saving = SemSegReportEvaluator(name, distributed=False, output_dir=str(tmp_path / "saved"))
    saving.reset()
    for i, scores in enumerate(preds[:3]):
        saving.process([{"file_name": f"{name}_{i}.jpg"}], [{"sem_seg": scores}])
    expected = sum(len(np.unique(p.argmax(0).numpy())) for p in preds[:3])
    assert len(saving._predictions) == expected and max(p["category_id"] for p in saving._predictions) > 255
    saving.evaluate()
    assert (tmp_path / "saved" / "sem_seg_predictions.json").is_file()


@pytest.mark.skipif(not hasattr(SemSegEvaluator, "_mask_to_boundary"), reason="Detectron2 without boundary IoU (v0.6)")
def test_boundary_confusion_of_many_classes_is_counted_in_int64(tmp_path, registered):
    """Detectron2 main's boundary IoU, with class ids whose (C+1) * id exceeds uint8 (NumPy 2 would
    wrap main's own uint8 product): every boundary pixel in its own cell."""
    num_classes = 40
    gt = np.full((24, 24), 39)
    gt[:, :12] = 17
    pred = np.full((24, 24), 38)
    pred[:12] = 21
    name = register_label_dataset("boundary_eval_test", tmp_path, [gt], 255, num_classes)
    registered.append(name)
    evaluator = SemSegReportEvaluator(name, distributed=False)
    assert evaluator.computes_boundary_iou
    evaluator.reset()
    evaluator.process([{"file_name": f"{name}_0.jpg"}], [{"sem_seg": one_hot_scores(pred, num_classes)}])
    b_pred = evaluator._mask_to_boundary(pred.astype(np.uint8)).astype(np.int64)
    b_gt = evaluator._mask_to_boundary(gt.astype(np.uint8)).astype(np.int64)
    expected = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    np.add.at(expected, (b_pred.ravel(), b_gt.ravel()), 1)
    assert expected[:-1, :-1][np.triu_indices(num_classes, 1)].sum() > 0  # ids >= 16 on both sides
    np.testing.assert_array_equal(evaluator._b_conf_matrix, expected)
    res = evaluator.evaluate()["sem_seg"]
    assert "BoundaryIoU-c17" in res and "min(IoU, B-Iou)-c39" in res
