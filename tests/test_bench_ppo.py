"""bench/bench_ppo.py: one PPO update of the recipe on the CPU's tiny config runs end to end and reports each
phase (generation, experience, training) with a positive time and rate, in a markdown table it can also write.

    python -m pytest tests/test_bench_ppo.py -q
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ppo_bench_smoke_reports_every_phase(tmp_path):
    out = tmp_path / "ppo.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "error::FutureWarning"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_ppo.py"), "--config", "tiny", "--device", "cpu", "--prompts", "8",
         "--prompt-len", "10", "--new-tokens", "6", "--minibatch", "4", "--micro", "2", "--steps", "1", "--warmup", "1",
         "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    table = out.read_text()
    assert table == result.stdout
    rows = {line.split("|")[1].strip(): line.split("|")[2:5] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| phase")}
    assert set(rows) == {"generation", "experience", "training", "total"}
    for phase in ("generation", "experience", "training"):
        seconds, share, rate = (cell.strip() for cell in rows[phase])
        assert float(seconds) > 0 and float(rate) > 0 and share.endswith("%")
    assert "8 prompts x 10 tokens, 6 new tokens" in table and "CPU run" in table
