"""bench/bench_ops.py's options on the CPU: both designs and the frozen head run through guard's Triton
kernels (interpreted) and agree with eager PyTorch, a shape list and a time budget are honoured, and the
json records the device, the versions and the date. (tests/test_bench.py runs the plain --smoke.)

    python -m pytest tests/test_bench_ops.py -q
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUARDS = ("guard-chunked", "guard-tiled", "guard-chunked-frozen", "guard-tiled-frozen")


def run_bench(tmp_path, *args, interpret=False):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"), OMP_NUM_THREADS="1")
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_ops.py"), *args, "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, env=env)
    (table,) = tmp_path.glob("ops-*.json")
    return result, json.loads(table.read_text())


def test_both_designs_and_the_frozen_head_through_the_kernels(tmp_path):
    result, record = run_bench(tmp_path, "--smoke", "--backend", "triton", "--impls", ",".join(GUARDS) + ",torch,liger",
                               interpret=True)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {r["impl"]: r for r in record["rows"]}
    for name in GUARDS:
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["loss_rel_err"] < 1e-5 and rows[name]["grad_hidden_rel_err"] < 1e-4
        assert (rows[name]["grad_weight_rel_err"] is None) == name.endswith("frozen")
    assert rows["guard-chunked"]["flops"] == "8NHV" and rows["guard-chunked-frozen"]["flops"] == "6NHV"
    assert rows["torch"]["flops"] == "6NHV" and rows["liger"]["status"] == "needs CUDA"
    assert record["guard_backend"] == "triton" and record["dtype"] == "float32"
    assert set(record["versions"]) == {"torch", "triton", "python"} and record["date"][:4].isdigit()
    assert "| guard-tiled-frozen |" in result.stdout


def test_shape_list_and_time_budget(tmp_path):
    result, record = run_bench(tmp_path, "--smoke", "--budget-s", "0", "--impls", "guard,torch")
    assert result.returncode == 1  # nothing ran: no guard row is ok
    assert [r["status"] for r in record["rows"]] == ["skipped: time budget spent"] * 2
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_ops.py"), "--shapes", "1000x64x512"],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "python")))
    assert bad.returncode == 2 and "multiple of 2 x 1024" in bad.stderr
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_ops

    assert bench_ops.parse_shapes("16384x4096x128256,4096x2048x32000", 1024) == [(8, 1024, 4096, 128256), (2, 1024, 2048, 32000)]
