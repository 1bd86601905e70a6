"""bench/bench_fairness.py runs a small sweep end to end (tables, rows, plot, worst cases that follow from the
rows), and --compare tells two sweeps that agree from two that do not."""

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_fairness.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_fairness", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two seeds of mean_shift at λ 0 and the default, on a few hundred pairs (a subprocess: it sets the
    process's torch threads)."""
    tmp = tmp_path_factory.mktemp("fair-sweep")
    out = tmp / "sweep"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--generators", "mean_shift", "--seeds", "0,1", "--train-pairs", "320",
         "--eval-pairs", "160", "--work", str(tmp / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out, json.loads(out.with_suffix(".json").read_text()), result.stdout


def test_a_small_sweep_writes_its_tables_and_worst_cases(sweep):
    out, results, stdout = sweep
    assert out.with_suffix(".md").exists() and out.with_suffix(".png").stat().st_size > 0
    rows, (worst,) = results["rows"], results["worst"]
    assert [(r["lambda"], r["seed"]) for r in rows] == [(0.0, 0), (0.2, 0), (0.0, 1), (0.2, 1)]
    base = {r["seed"]: r for r in rows if r["lambda"] == 0}
    fair = [r for r in rows if r["lambda"] > 0]
    assert worst["worst_mi_ratio"] == pytest.approx(max(r["binned_mi"] / base[r["seed"]]["binned_mi"] for r in fair))
    assert worst["worst_audit_auc"] == max(r["audit_auc"] for r in fair)
    assert worst["worst_accuracy_drop"] == pytest.approx(max(base[r["seed"]]["accuracy"] - r["accuracy"] for r in fair))
    assert worst["pass"] == (worst["worst_mi_ratio"] <= 0.5 and worst["worst_audit_auc"] <= 0.6
                             and worst["worst_accuracy_drop"] <= 0.02)
    assert "worst mean_shift default λ=0.2" in stdout
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["audit_auc"] <= 1 and r["binned_mi"] >= 0


def test_compare_agrees_with_itself_and_flags_a_moved_worst_case(sweep, tmp_path):
    bench = load_bench()
    out, results, _ = sweep
    agree, report = bench.compare(results, copy.deepcopy(results))
    assert agree and report.count("| mean_shift | default | 0.2 |") == 1 and "Agree" in report

    moved = copy.deepcopy(results)
    fair = max((r for r in moved["rows"] if r["lambda"] > 0), key=lambda r: r["audit_auc"])
    fair["audit_auc"] += 2 * bench.THREAD_TOLERANCE["audit_auc"]
    agree, report = bench.compare(results, moved)
    assert not agree and "(!)" in report and "DISAGREE" in report
    assert f"audit_auc {2 * bench.THREAD_TOLERANCE['audit_auc']:.4f}" in report

    fewer = copy.deepcopy(results)
    fewer["rows"] = [r for r in fewer["rows"] if r["seed"] == 0]
    with pytest.raises(ValueError, match="different plans"):
        bench.compare(results, fewer)

    # the command line: exit 0 when the two agree, 1 when not, the report at --out
    other = tmp_path / "moved.json"
    other.write_text(json.dumps(moved))
    for second, code in ((out.with_suffix(".json"), 0), (other, 1)):
        result = subprocess.run([sys.executable, str(SCRIPT), "--compare", str(out.with_suffix(".json")), str(second),
                                 "--out", str(tmp_path / "compared")], capture_output=True, text=True, timeout=120)
        assert result.returncode == code, result.stdout + result.stderr
        assert (tmp_path / "compared.md").read_text().startswith("# Fairness sweeps compared")
