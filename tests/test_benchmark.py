"""lab/benchmark.py --quick: runs end to end (including its batched == per-class-loop equality
check) and reports every section with positive finite numbers."""
import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _timings(section):
    """Every {'median_ms', 'min_ms', 'reps'} summary inside a (nested) result."""
    if isinstance(section, dict):
        if "median_ms" in section:
            yield section
        else:
            for value in section.values():
                yield from _timings(value)
    elif isinstance(section, list):
        for value in section:
            yield from _timings(value)


def test_benchmark_quick_cpu(tmp_path):
    out = tmp_path / "benchmark.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "lab" / "benchmark.py"), "--quick", "--device", "cpu", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "equality check" in proc.stdout
    res = json.loads(out.read_text())
    assert {"meta", "equality_check", "step", "inference", "peak_memory", "targets"} <= set(res)

    meta = res["meta"]
    assert meta["quick"] and meta["device"] == "cpu"
    for key in ("N", "D", "K", "threads", "wall_s"):
        assert _positive_finite(meta[key]), key

    # (a) equality of the batched step and both per-class loops, checked at start-up
    eq = res["equality_check"]
    assert eq["passed"] and len(eq["cases"]) >= 1
    assert all(case["prototypes_moved"] > 0 for case in eq["cases"])

    # (a), (b): one entry per C, four timed variants of the step and two of clustering + update
    assert [r["C"] for r in res["step"]] == meta["classes"]
    for r in res["step"]:
        assert set(r["step"]) == {"floor", "batched", "loop", "reference"}
        assert set(r["cluster_update"]) == {"batched", "loop"}
        assert 1 <= r["classes_present"] <= r["C"]
        for key in ("loop_over_batched", "reference_over_batched", "batched_over_floor", "cluster_update_loop_over_batched"):
            assert _positive_finite(r[key]), (r["C"], key)

    # (c): whole model and head, ProtoSeg and parametric baseline
    assert [r["C"] for r in res["inference"]] == meta["classes"]
    for r in res["inference"]:
        assert set(r["model"]) == set(r["head"]) == {"parametric", "protoseg"}
        assert _positive_finite(r["model_ratio"]) and _positive_finite(r["head_ratio"])
        assert all(_positive_finite(n) for n in r["parameters"].values())

    timings = list(_timings([res["step"], res["inference"]]))
    assert len(timings) == 6 * len(res["step"]) + 4 * len(res["inference"])
    for t in timings:
        assert _positive_finite(t["median_ms"]) and _positive_finite(t["min_ms"]) and t["reps"] == 1

    # (d): peak memory of the step, measured (CPU: profiler allocation events)
    mem = res["peak_memory"]
    for key in ("batched_bytes", "loop_bytes", "reference_bytes", "floor_bytes", "one_logits_matrix_bytes"):
        assert _positive_finite(mem[key]), (key, mem.get("note"))
    assert mem["floor_bytes"] >= mem["one_logits_matrix_bytes"]
