"""bench/bench_ops.py runs end to end on the CPU's smoke shape: guard and plain torch agree on the loss
and the table lands where --out says (GPU peers report that they need CUDA)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_ops_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_ops.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (table,) = tmp_path.glob("ops-*.json")
    rows = {r["impl"]: r for r in json.loads(table.read_text())["rows"]}
    for impl in ("guard", "torch"):
        assert rows[impl]["status"] == "ok", rows[impl]
        assert rows[impl]["loss_rel_err"] < 1e-5
        assert rows[impl]["ms"] > 0
    assert "| guard |" in result.stdout
