"""lab/open_world.py: the unknown-detection metrics against hand-computed values, the per-class IoU
with ignored ground truth, and the study's smoke run (--quick) end to end."""
import csv
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

import open_world  # lab/open_world.py (conftest puts lab/ on the path)

# 3 unknown pixels (positives) among 6; scores from the highest down: + - + + - -
SCORES = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
POSITIVE = [1, 0, 1, 1, 0, 0]


def test_auroc_counts_the_ranked_pairs():
    # positive-over-negative pairs: 0.9 beats 3, 0.7 and 0.6 beat 2 each: 7 of 9
    assert open_world.auroc(SCORES, POSITIVE) == pytest.approx(7 / 9)
    assert open_world.auroc([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)  # ties count one half
    assert open_world.auroc([3, 2, 1], [1, 1, 0]) == pytest.approx(1.0)


def test_average_precision_is_the_mean_precision_at_the_positives():
    # precision at each positive: 1/1, 2/3, 3/4
    assert open_world.average_precision(SCORES, POSITIVE) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert open_world.average_precision([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)


def test_fpr_at_95_tpr_is_read_where_every_positive_is_found():
    # TPR reaches 1 (>= 0.95) at threshold 0.6, where 1 of 3 negatives is above it
    assert open_world.fpr_at_tpr(SCORES, POSITIVE) == pytest.approx(1 / 3)
    assert open_world.fpr_at_tpr(SCORES, POSITIVE, tpr_level=0.3) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="both unknown"):
        open_world.auroc([0.1, 0.2], [1, 1])


def test_class_ious_drop_the_ignored_ground_truth():
    confusion = np.array([[5, 1], [2, 6], [3, 4]])  # [gt, pred]: 3 labelled classes, 2 predicted
    np.testing.assert_allclose(open_world.class_ious(confusion, [2]), [100 * 5 / 8, 100 * 6 / 9])
    np.testing.assert_allclose(open_world.class_ious(confusion), [100 * 5 / 11, 100 * 6 / 13])


def test_quick_study_writes_both_tables_for_both_heads(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "lab" / "open_world.py"), "--quick", "--jobs", "1",
                           "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "open_world" / "open_world.csv") as f:
        adding = list(csv.DictReader(f))
    assert [(r["head"], r["model"]) for r in adding] == [
        (head, model) for head in ("ProtoSeg", "softmax") for model in
        ("trained with every class", "class held out", "added from 1 image(s)", "added from 2 image(s)")]
    for row in adding:
        if row["model"].startswith("added"):
            assert 0 <= float(row["new class IoU"].split(" +- ")[0]) <= 100
            assert row["old class changed (val %)"]
    with open(tmp_path / "open_world" / "unknown.csv") as f:
        unknown = list(csv.DictReader(f))
    assert {(r["head"], r["score"]) for r in unknown} == {
        (head, score) for head in ("ProtoSeg", "softmax") for score in ("max softmax prob.", "max logit")} | {
        ("ProtoSeg", "1 - nearest prototype cos.")}
    for row in unknown:
        assert 0 <= float(row["AUROC"].split(" +- ")[0]) <= 100
    assert (tmp_path / "open_world" / "added" / "protoseg_seed0_shots1" / "config.yaml").is_file()
