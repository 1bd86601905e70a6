"""bench/bench_train.py: the `rm` case runs end to end on the CPU's tiny config (guard's reward-model step and
TRL's RewardTrainer agree on the batch, the first rewards and the step-1/step-2 losses, and both rows have
real numbers), and its building blocks (the batch, the comparison) behave.

    TRITON_INTERPRET=1 python -m pytest tests/test_bench_train.py -q
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_train  # noqa: E402

torch.set_num_threads(1)


def test_rm_smoke_guard_matches_trl(tmp_path):
    out, js = tmp_path / "rm.md", tmp_path / "rm.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_train.py"), "rm", "--config", "tiny", "--device", "cpu",
         "--steps", "1", "--warmup", "1", "--threads", "1", "--center-coef", "0.01",
         "--out", str(out), "--json", str(js)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(js.read_text())
    # every check ran and passed: batch identity, step-1 rewards, step-1 loss, step-2 loss (2 steps in all)
    assert [c.split(":")[0] for c in report["checks"]] == [
        "batch", "step-1 rewards (chosen then rejected)", "step-1 loss", "step-2 loss (after one AdamW step)"]
    rows = {r["impl"]: r for r in report["rows"]}
    assert set(rows) == {"guard", "trl"}
    for r in rows.values():
        assert r["case"] == "rm"
        for key in ("tokens_per_s", "ms_per_step", "ratio_vs_trl", "step1_loss"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["peak_gb"] is None  # CPU: no device memory counter
    assert rows["guard"]["step1_loss"] == pytest.approx(rows["trl"]["step1_loss"], rel=1e-5)
    assert rows["trl"]["ratio_vs_trl"] == 1.0
    text = out.read_text()
    assert "| rm | guard |" in text and "| rm | trl |" in text and "CPU run" in text
    assert "| rm | guard |" in result.stdout


def test_random_pairs_never_use_the_pad_id():
    chosen, rejected = bench_train.random_pairs(pairs=6, seq_len=20, vocab=7, seed=3)
    rows = chosen + rejected
    assert len(chosen) == len(rejected) == 6
    assert all(1 <= t < 7 for r in rows for t in r)
    lengths = [len(r) for r in rows]
    assert max(lengths) == 20 == len(chosen[0]) and min(lengths) >= 10 and len(set(lengths)) > 1
    batch = bench_train.right_padded(rows)
    assert batch["input_ids"].shape == (12, 20)
    assert torch.equal(batch["attention_mask"].sum(1), torch.tensor(lengths))
    assert torch.equal(batch["input_ids"] != bench_train.PAD_ID, batch["attention_mask"].bool())
    assert bench_train.random_pairs(6, 20, 7, seed=3) == (chosen, rejected)


def test_check_close_fails_loudly():
    assert "max |diff|" in bench_train.check_close("loss", 0.5, 0.5 + 1e-7, rtol=1e-5, atol=1e-5)
    with pytest.raises(bench_train.CheckFailed, match="step-1 loss: guard and TRL differ"):
        bench_train.check_close("step-1 loss", 0.70, 0.69, rtol=1e-5, atol=1e-5)
    with pytest.raises(bench_train.CheckFailed):
        bench_train.check_close("rewards", torch.tensor([0.1, float("nan")]), torch.tensor([0.1, 0.2]), rtol=1, atol=1)
