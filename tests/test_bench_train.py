"""bench/bench_train.py: the `rm` and `dpo` cases run end to end on the CPU's tiny config (guard's reward-model
step and TRL's RewardTrainer agree on the batch, the first rewards and the step-1/step-2 losses; guard's pref
recipe pieces and TRL's DPOTrainer agree on the batch, the reference log-probs, the log-ratios and the step-1/step-2
losses; both rows of each have real numbers), and their building blocks (the batches, the texts, the
comparisons) behave.

    TRITON_INTERPRET=1 python -m pytest tests/test_bench_train.py -q
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def test_dpo_smoke_guard_matches_trl(tmp_path):
    out, js = tmp_path / "dpo.md", tmp_path / "dpo.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_train.py"), "dpo", "--config", "tiny", "--device", "cpu",
         "--steps", "1", "--warmup", "1", "--threads", "1", "--out", str(out), "--json", str(js)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(js.read_text())
    # every check ran and passed, in order (2 steps in all, so the step-2 loss is compared too)
    assert [c.split(":")[0] for c in report["checks"]] == [
        "batch", "TRL probe", "step-1 reference log-probs (chosen then rejected)",
        "step-1 log-ratios log π − log π_ref (chosen then rejected)", "step-1 loss",
        "step-2 loss (after one AdamW step)"]
    rows = {r["impl"]: r for r in report["rows"]}
    assert set(rows) == {"guard", "trl"}
    for r in rows.values():
        assert r["case"] == "dpo"
        for key in ("tokens_per_s", "ms_per_step", "ratio_vs_trl", "step1_loss"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["peak_gb"] is None  # CPU: no device memory counter
    # LoRA B starts random, so the policy is not the reference: the loss is not log 2, and both agree on it
    assert abs(rows["guard"]["step1_loss"] - math.log(2)) > 1e-4
    assert rows["guard"]["step1_loss"] == pytest.approx(rows["trl"]["step1_loss"], rel=1e-5)
    assert rows["trl"]["ratio_vs_trl"] == 1.0
    text = out.read_text()
    assert "| dpo | guard |" in text and "| dpo | trl |" in text and "CPU run" in text
    assert "reference = the adapter disabled" in text
    assert "| dpo | guard |" in result.stdout


def test_preference_texts_tokenize_to_known_ids():
    prompts, chosen, rejected = bench_train.random_preference_texts(pairs=5, seq_len=24, vocab=50, seed=1)
    tok = bench_train.bench_tokenizer(50)
    lengths = []
    for p, c, r in zip(prompts, chosen, rejected):
        prompt_ids = tok(p)["input_ids"]
        assert 1 <= len(prompt_ids) <= 6
        for response in (c, r):
            assert response.startswith(" ")  # TRL concatenates prompt + response as strings
            ids = tok(p + response + tok.eos_token)["input_ids"]
            assert ids[: len(prompt_ids)] == prompt_ids and ids[-1] == tok.eos_token_id
            assert all(bench_train.FIRST_WORD_ID <= t < 50 for t in ids[:-1])  # no pad / eos / unk inside
            assert len(ids) > len(prompt_ids) + 1  # at least one response token
            lengths.append(len(ids))
    assert max(lengths) == 24 == lengths[0] and min(lengths) >= 12


def _measured(impl, losses, probe):
    return bench_train.Measured(impl, losses, [1.0], 10, None, "adamw", probe)


def test_check_dpo_fails_loudly():
    batch = {"input_ids": torch.tensor([[5, 6, 7], [5, 8, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    guard_batch = {**batch, "labels": torch.tensor([[-100, 6, 7], [-100, 8, -100]])}
    trl_batch = {**batch, "completion_mask": torch.tensor([[0, 1, 1], [0, 1, 0]])}
    ref = torch.tensor([-10.0, -12.0])
    lr = torch.tensor([0.3, -0.2])
    logged = {"rewards/chosen": 0.1 * 0.3, "rewards/rejected": 0.1 * -0.2}
    trl_probe = {"batch": trl_batch, "policy_logps": ref + lr, "ref_logps": ref, "logged": logged}

    def results(guard_lr=lr, guard_batch=guard_batch, guard_loss=0.5):
        guard = _measured("guard", [guard_loss], {"batch": guard_batch, "ref_logps": ref, "logratios": guard_lr})
        return [guard, _measured("trl", [0.5], trl_probe)]

    assert len(bench_train.check_dpo(results(), bf16=False, beta=0.1)) == 5
    with pytest.raises(bench_train.CheckFailed, match="log-ratios"):
        bench_train.check_dpo(results(guard_lr=lr + torch.tensor([0.0, 1e-2])), bf16=False, beta=0.1)
    with pytest.raises(bench_train.CheckFailed, match="step-1 loss"):
        bench_train.check_dpo(results(guard_loss=0.5 + 1e-3), bf16=False, beta=0.1)
    shifted = {**guard_batch, "labels": torch.tensor([[5, 6, 7], [-100, 8, -100]])}  # the prompt token scored
    with pytest.raises(bench_train.CheckFailed, match="which tokens are scored"):
        bench_train.check_dpo(results(guard_batch=shifted), bf16=False, beta=0.1)


def test_packing_smoke_packed_matches_padded_and_measures_the_compute(tmp_path):
    out, js = tmp_path / "packing.md", tmp_path / "packing.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_train.py"), "packing", "--config", "tiny", "--device", "cpu",
         "--steps", "1", "--warmup", "1", "--threads", "1", "--pairs", "3", "--max-length", "200",
         "--dataset-pairs", "300", "--tokens-per-step", "2048", "--out", str(out), "--json", str(js)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(js.read_text())
    assert [c.split(":")[0] for c in report["checks"]] == [
        f"{recipe} step-{k}" for recipe, what in (("rm", "rewards"), ("dpo", "log-ratios"))
        for k in (f"1 {what}", "1 loss", "2 loss (after one AdamW step)")]
    steps = [r for r in report["rows"] if r["case"] != "compute"]
    assert [(r["case"], r["impl"]) for r in steps] == [("rm", "padded"), ("rm", "packed"), ("dpo", "padded"),
                                                       ("dpo", "packed")]
    for r in steps:
        assert math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0 and r["ratio_vs_padded"] > 0
    compute = [r for r in report["rows"] if r["case"] == "compute"]
    assert [r["layout"] for r in compute] == ["padded", "packed", "padded", "padded", "packed"]
    padded_random, packed_random = compute[0], compute[1]
    assert padded_random["slots_per_token"] > 1.2 and packed_random["slots_per_token"] == 1.0  # lengths vary
    assert padded_random["attention_per_sequence"] > padded_random["slots_per_token"]  # attention pays squared
    text = out.read_text()
    assert "| rm | packed |" in text and "| best fit into 2048 tokens (--tokens-per-step) | packed |" in text


def test_hh_like_lengths_stay_in_their_ranges_and_budget():
    lengths = bench_train.hh_like_lengths(2000, max_length=512, seed=3)
    assert lengths.shape == (2000, 3)
    prompt, responses = lengths[:, 0], lengths[:, 1:]
    assert prompt.min() >= 20 and prompt.max() <= 511 and responses.min() >= 1
    assert ((prompt[:, None] + responses) <= 512).all()
    assert np.median(prompt) < np.mean(prompt)  # log-uniform: many short, a long tail
    assert np.array_equal(bench_train.hh_like_lengths(2000, 512, seed=3), lengths)
