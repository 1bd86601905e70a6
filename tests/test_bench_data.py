"""bench/bench_data.py runs end to end on a small set: guard's pipeline and the Python one keep the same
rows and make the same batches (identical ids too), for each thread count, and the table lands in --out."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_data_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_data.py"), "--pairs", "2000", "--threads", "1,2", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (table,) = tmp_path.glob("data-cpu-*.json")
    rows = json.loads(table.read_text())["rows"]
    assert [r["threads"] for r in rows] == [1, 2]
    for r in rows:
        assert all(r["checks"].values()), r["checks"]
        assert r["batches"] == r["py_batches"] > 0
        assert 1800 <= r["kept"] < 2000  # some of the 5% duplicates are dropped, nothing else
        assert r["tokens"] > 0 and r["guard_s"] > 0 and r["python_s"] > 0
    assert rows[0]["kept"] == rows[1]["kept"]
    (md,) = tmp_path.glob("data-cpu-*.md")
    assert "| 1 | guard |" in md.read_text() and "Outputs identical (kept rows, ids, prompt lengths, batches): yes" in result.stdout
