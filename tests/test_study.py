"""lab/run_study.py --quick end to end: tables, plot, parameter columns, run sharing and resume;
the learning-curve study (several evaluations of one run)."""
import csv
import json
import math
import subprocess
import sys

import pytest

from detectron2.modeling import build_model

from protoseg.config import load_config
from studies import ALL_STUDIES, REFERENCE_CODE, TOY_STUDY_CONFIG, read_curve  # lab/studies.py

from conftest import REPO

QUICK_OPTS = ["INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MIN_SIZE_TEST", 64, "INPUT.CROP.SIZE", (64, 64)]
HEADS = {  # variant label prefix -> head overrides
    "ProtoSeg K=10": ["MODEL.SEM_SEG_HEAD.NAME", "ProtoSegHead"],
    "parametric K=1": ["MODEL.SEM_SEG_HEAD.NAME", "ParametricSegHead", "MODEL.PARAMETRIC.NUM_PROTOTYPES", 1],
    "parametric K=10": ["MODEL.SEM_SEG_HEAD.NAME", "ParametricSegHead", "MODEL.PARAMETRIC.NUM_PROTOTYPES", 10],
}


def run_study(study, out):
    cmd = [sys.executable, str(REPO / "lab" / "run_study.py"), study, "--quick", "--jobs", "2",
           "--output-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(REPO))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def read_rows(out, study):
    with open(out / study / f"{study}.csv") as f:
        return {r["variant"]: r for r in csv.DictReader(f)}


def counted(num_classes, head_opts):
    """Learnable parameters and prototype-buffer size of the model the config builds."""
    cfg = load_config(TOY_STUDY_CONFIG, QUICK_OPTS + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", num_classes] + head_opts)
    model = build_model(cfg)
    memory = getattr(model.sem_seg_head, "memory", None)
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            memory.prototypes.numel() if memory is not None else 0)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    logs = {name: run_study(name, out) for name in ("vocabulary", "parametric_vs_prototype")}
    return out, logs


def test_tables_and_plots_have_one_finite_row_per_variant(studies):
    out, _ = studies
    expected = {
        "vocabulary": {f"{h}, C={c}" for h in HEADS for c in (4, 8)},
        "parametric_vs_prototype": {"parametric K=1", "ProtoSeg"},
    }
    for study, variants in expected.items():
        rows = read_rows(out, study)
        assert set(rows) == variants
        for r in rows.values():
            for col in ("mIoU_mean", "mIoU_std", "sec_per_iter", "delta_vs_ref_mean"):
                assert math.isfinite(float(r[col])), (study, r["variant"], col, r[col])
            assert 0.0 <= float(r["mIoU_mean"]) <= 100.0 and float(r["sec_per_iter"]) > 0
            assert r["seeds"] == "1" and r["iters"] == "4"
        md = (out / study / f"{study}.md").read_text()
        assert sum(line.startswith("| ") for line in md.splitlines()) == 1 + len(variants)  # header + rows
        png = (out / study / f"{study}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    pvp = read_rows(out, "parametric_vs_prototype")
    assert float(pvp["ProtoSeg"]["paper_mIoU"]) == 41.1 and float(pvp["parametric K=1"]["paper_mIoU"]) == 39.9
    assert float(pvp["parametric K=1"]["delta_vs_ref_mean"]) == 0.0


def test_parameter_columns_equal_the_built_models(studies):
    out, _ = studies
    rows = read_rows(out, "vocabulary")
    for head, opts in HEADS.items():
        for c in (4, 8):
            learnable, buffer = counted(c, opts)
            r = rows[f"{head}, C={c}"]
            assert (int(r["learnable_params"]), int(r["prototype_buffer"])) == (learnable, buffer)
    assert int(rows["ProtoSeg K=10, C=8"]["prototype_buffer"]) == 8 * 10 * 64  # C x K x D
    pvp = read_rows(out, "parametric_vs_prototype")
    assert (int(pvp["ProtoSeg"]["learnable_params"]), int(pvp["ProtoSeg"]["prototype_buffer"])) == counted(8, HEADS["ProtoSeg K=10"])


def test_vocabulary_growth_of_the_parameters(studies):
    out, _ = studies
    rows = read_rows(out, "vocabulary")

    def growth(head):
        return int(rows[f"{head}, C=8"]["learnable_params"]) - int(rows[f"{head}, C=4"]["learnable_params"])

    d, dc = 64, 8 - 4  # decoder width (CONVS_DIM), class-count step
    assert growth("parametric K=1") == dc * 1 * (d + 1)  # 1x1 conv classifier with bias
    assert growth("parametric K=10") == dc * 10 * (d + 1)
    # ProtoSeg: no learnable prototype; only the reference code's LayerNorm over the C class
    # scores (affine weight and bias, 2 per class) depends on C; the prototypes are a buffer.
    assert growth("ProtoSeg K=10") == 2 * dc
    assert int(rows["ProtoSeg K=10, C=8"]["prototype_buffer"]) - int(rows["ProtoSeg K=10, C=4"]["prototype_buffer"]) == dc * 10 * d
    no_norm = ["MODEL.PROTOSEG.CLASS_SCORE_NORM", "temperature"]
    assert counted(8, HEADS["ProtoSeg K=10"] + no_norm)[0] == counted(4, HEADS["ProtoSeg K=10"] + no_norm)[0]


def test_runs_are_shared_between_studies_and_not_rerun(studies):
    out, logs = studies
    # the C=8 vocabulary runs of ProtoSeg and parametric K=1 are the parametric_vs_prototype runs
    assert "2 runs, 2 finished before, 0 to run" in logs["parametric_vs_prototype"]
    results = sorted((out / "runs").glob("*/seed0/study_result.json"))
    assert len(results) == 6
    stamps = {p: p.stat().st_mtime_ns for p in results}
    before = read_rows(out, "vocabulary")
    log = run_study("vocabulary", out)
    assert "6 runs, 6 finished before, 0 to run" in log
    assert {p: p.stat().st_mtime_ns for p in results} == stamps
    assert read_rows(out, "vocabulary") == before


# ---- learning curves ------------------------------------------------------------------------
CURVE_VARIANTS = ["parametric K=1", "parametric K=10", "ProtoSeg (paper)", "ProtoSeg (reference code)"]


@pytest.fixture(scope="module")
def curves(tmp_path_factory):
    out = tmp_path_factory.mktemp("curves")
    return out, run_study("curves", out)


def test_curves_table_and_plot_have_every_point_of_every_variant(curves):
    out, log = curves
    assert "4 variants x 1 seeds = 4 runs" in log
    with open(out / "curves" / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    # --quick: 4 iterations, evaluated at 2 and at the end (4)
    assert [(r["variant"], int(r["iteration"])) for r in rows] == [(v, i) for v in CURVE_VARIANTS for i in (2, 4)]
    for r in rows:
        for col in ("mIoU_mean", "mIoU_std", "delta_vs_ref_mean", "delta_vs_ref_std", "sec_per_iter"):
            assert math.isfinite(float(r[col])), (r["variant"], col, r[col])
        assert 0.0 <= float(r["mIoU_mean"]) <= 100.0 and r["seeds"] == "1" and r["iters"] == "4"
        if r["variant"] == "parametric K=1":  # the reference of the paired differences
            assert float(r["delta_vs_ref_mean"]) == 0.0
    by = {(r["variant"], int(r["iteration"])): r for r in rows}
    for v in CURVE_VARIANTS[1:]:  # paired difference = difference of the single seed's values
        for i in (2, 4):
            d = float(by[v, i]["mIoU_mean"]) - float(by["parametric K=1", i]["mIoU_mean"])
            assert abs(float(by[v, i]["delta_vs_ref_mean"]) - d) < 2e-3
    md = (out / "curves" / "curves.md").read_text().splitlines()
    header = "| variant | it 2 | it 4 |"
    first, second = md.index(header), md.index(header, md.index(header) + 1)
    assert [line.split(" | ")[0][2:] for line in md[first + 2:first + 6]] == CURVE_VARIANTS
    assert [line.split(" | ")[0][2:] for line in md[second + 2:second + 5]] == CURVE_VARIANTS[1:]  # no reference row
    assert md[first - 2] == "## mIoU per evaluation point"
    assert md[second - 2].startswith("## Paired difference to `parametric K=1` per point")
    png = (out / "curves" / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000


def test_curves_come_from_the_evaluations_of_one_run(curves):
    out, _ = curves
    results = sorted((out / "runs").glob("*/seed0/study_result.json"))
    assert len(results) == 4
    reference_code_runs = 0
    for path in results:
        res = json.loads(path.read_text())
        assert [p[0] for p in res["curve"]] == [2, 4] and res["curve"][-1][1] == res["mIoU"]
        assert [list(p) for p in read_curve(path.parent, 4)] == res["curve"]
        cfg = load_config(path.parent / "config.yaml")
        assert cfg.TEST.EVAL_PERIOD == 2 and cfg.SOLVER.MAX_ITER == 4
        if cfg.MODEL.SEM_SEG_HEAD.NAME == "ProtoSegHead" and cfg.MODEL.PROTOSEG.ASSIGNMENT == "gumbel":
            p = cfg.MODEL.PROTOSEG
            assert (p.PPC_TEMPERATURE, p.PPD_WEIGHT, p.ASSIGNMENT, p.PROJECTION) == REFERENCE_CODE[1::2]
            reference_code_runs += 1
    assert reference_code_runs == 1


def test_read_curve_counts_iterations_trained_and_keeps_the_last_of_a_repeat(tmp_path):
    rows = [{"iteration": 19, "time": 0.1}, {"iteration": 99, "sem_seg/mIoU": 10.0},
            {"iteration": 99, "sem_seg/mIoU": 11.0},  # the same evaluation again after a resume
            {"iteration": 199, "sem_seg/mIoU": 20.0}, {"iteration": 300, "sem_seg/mIoU": 30.0}]
    (tmp_path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_curve(tmp_path, 300) == [(100, 11.0), (200, 20.0), (300, 30.0)]


def test_all_runs_the_ablations_not_the_curves():
    assert "curves" not in ALL_STUDIES and "curves_causes" not in ALL_STUDIES
    assert set(ALL_STUDIES) == {"objective", "num_prototypes", "momentum", "distance", "vocabulary",
                                "parametric_vs_prototype"}
