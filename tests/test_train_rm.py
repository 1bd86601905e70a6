"""The reward-model recipe (`python -m guard.train rm`): what a run writes, the λ sweep, resume after a kill,
two gloo processes under torchrun matching one process, LoRA, margins, and bad input ending in one clear
error line. Tiny models and the bundled sample (or slices of it) only; nothing reaches a hub."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from guard import audit, jsonfiles, models
from guard.jsonfiles import write_jsonl
from guard.train import options, rm
from guard.train.__main__ import main as train_main

import recipe_runs
from recipe_runs import kill_after_checkpoint, run_torchrun

ASSETS = models.ASSETS
FAST = ["--model", "tiny", "--tokenizer", str(models.TINY_TOKENIZER), "--max-length", "64", "--batch-size", "8",
        "--eval-batch-size", "16", "--lr", "1e-3", "--log-every", "1", "--adv-lr", "1e-2"]


@pytest.fixture(scope="module")
def sample_rows() -> list[dict]:
    return jsonfiles.read_jsonl(ASSETS / "sample_pairs.jsonl")


@pytest.fixture
def small_data(tmp_path, sample_rows) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", sample_rows[:120])


def run_rm(args: list[str], env_extra: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {**recipe_runs.env(), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "guard.train", "rm", *args], capture_output=True, text=True,
                          env=env, timeout=600, **kwargs)


def losses(run_dir: Path, keys=("loss", "bt_loss", "adv_loss", "accuracy", "lr")) -> list[dict]:
    return [{k: row[k] for k in ("step", *keys)} for row in jsonfiles.read_jsonl(run_dir / "metrics.jsonl")]


def test_a_run_writes_config_metrics_checkpoints_model_rewards_and_report(tmp_path, small_data):
    out = tmp_path / "run"
    assert train_main(["rm", "--data", str(small_data), "--output-dir", str(out), "--max-steps", "4",
                       "--save-every", "2", *FAST]) == 0
    for name in ("config.yaml", "metrics.jsonl", "rewards.jsonl", "report.md", "summary.json",
                 "rewards_by_category.png", "chosen_vs_rejected.png", "training_curves.png"):
        assert (out / name).is_file(), name
    metrics = jsonfiles.read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert set(metrics[0]) >= {"step", "loss", "bt_loss", "adv_loss", "accuracy", "lr", "tokens_per_s"}
    assert all(np.isfinite(m["loss"]) and m["tokens_per_s"] > 0 for m in metrics)
    assert distributed_checkpoints(out) == ["step-00000004"] or len(distributed_checkpoints(out)) == 2

    # The held-out set is a fixed 10% (12 pairs); rewards.jsonl has one line per pair and its numbers are
    # what the saved Hugging Face model gives.
    table = audit.read_rewards_jsonl(out / "rewards.jsonl")
    assert len(table.chosen) == 12 and set(table.categories) <= {"helpful", "harmless"}
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    cfg = rm.RMConfig(data=str(small_data), tokenizer=str(models.TINY_TOKENIZER), max_length=64)
    hf_tok, tok = models.load_tokenizer(cfg.tokenizer)
    data = rm.load_data(cfg, tok, hf_tok.eos_token_id)
    batch = rm.to_tensors(__import__("guard").data.padded_batch(data.eval.encoded, np.arange(len(data.eval)),
                                                                hf_tok.pad_token_id), torch.device("cpu"))
    with torch.no_grad():
        r_c, r_r = rm.score(model, batch, autocast=False)
    np.testing.assert_allclose(r_c.numpy(), table.chosen, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r_r.numpy(), table.rejected, rtol=1e-4, atol=1e-5)

    summary = json.loads((out / "summary.json").read_text())
    expected = audit.reward_summary(table.chosen, table.rejected, table.categories, seed=0)
    assert json.loads(json.dumps(expected)) == {k: v for k, v in summary.items()
                                                if k not in ("bt_loss", "lambda_adv", "data")}
    assert summary["data"] == {"rows_read": 120, "train_pairs": 108, "eval_pairs": 12, "truncated_pairs": 0,
                               "set_aside": {}, "set_aside_rows": {}}
    bt = np.logaddexp(0, -(table.chosen - table.rejected)).mean()
    assert summary["bt_loss"] == pytest.approx(bt) and summary["lambda_adv"] == 0.2
    report = (out / "report.md").read_text()
    assert "binned MI" in report and "rewards_by_category.png" in report and "## Data" in report


def distributed_checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.endswith(".tmp"))


def test_lambda_sweep_writes_one_row_per_lambda(tmp_path, small_data, capsys):
    out = tmp_path / "sweep"
    assert train_main(["rm", "--data", str(small_data), "--output-dir", str(out), "--max-steps", "3",
                       "--lambda-adv", "0,0.2,0.8", *FAST]) == 0
    import csv

    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["lambda_adv"]) for r in rows] == [0.0, 0.2, 0.8]
    for r, lam in zip(rows, ("0", "0.2", "0.8")):
        summary = json.loads((out / f"lambda-{lam}" / "summary.json").read_text())
        for key in ("bt_loss", "accuracy", "binned_mi", "ks"):
            assert float(r[key]) == pytest.approx(summary[key])
    # same data order and initial weights for every λ: the first step's BT loss is the same
    first = [jsonfiles.read_jsonl(out / f"lambda-{lam}" / "metrics.jsonl")[0]["bt_loss"] for lam in ("0", "0.2", "0.8")]
    assert first[0] == pytest.approx(first[1]) == pytest.approx(first[2])
    assert "sweep.csv" not in capsys.readouterr().err


def test_resume_after_a_kill_gives_the_uninterrupted_metrics(tmp_path, small_data):
    args = ["--data", str(small_data), "--max-steps", "10", "--save-every", "3", *FAST]
    full = tmp_path / "full"
    assert run_rm([*args, "--output-dir", str(full)]).returncode == 0

    killed = tmp_path / "killed"
    kill_after_checkpoint("rm", [*args, "--output-dir", str(killed)], killed, 6)
    assert not (killed / "summary.json").exists()  # it really stopped mid-way
    resumed = run_rm([*args, "--output-dir", str(killed), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert losses(killed) == losses(full)
    assert (audit.read_rewards_jsonl(killed / "rewards.jsonl").chosen
            == audit.read_rewards_jsonl(full / "rewards.jsonl").chosen).all()


def test_an_existing_run_is_not_overwritten_by_accident(tmp_path, small_data, capsys):
    out = tmp_path / "run"
    args = ["rm", "--data", str(small_data), "--output-dir", str(out), "--max-steps", "1", *FAST]
    assert train_main(args) == 0
    assert train_main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert train_main([*args, "--overwrite"]) == 0


@pytest.mark.slow
def test_torchrun_with_two_gloo_processes_matches_one_process(tmp_path, small_data):
    args = ["--data", str(small_data), "--max-steps", "4", "--lambda-adv", "0.2", *FAST]
    single = tmp_path / "single"
    assert run_rm([*args, "--output-dir", str(single)]).returncode == 0
    double = tmp_path / "double"
    run_torchrun("rm", [*args, "--output-dir", str(double)])
    a, b = losses(single), losses(double)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        for key in ("loss", "bt_loss", "adv_loss", "accuracy"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-5), (key, x, y)
    np.testing.assert_allclose(audit.read_rewards_jsonl(double / "rewards.jsonl").chosen,
                               audit.read_rewards_jsonl(single / "rewards.jsonl").chosen, rtol=1e-4, atol=1e-5)


def test_lora_run_saves_a_merged_model_or_the_adapter(tmp_path, small_data):
    from transformers import AutoModelForSequenceClassification

    for extra, name in (([], "merged"), (["--save-adapter"], "adapter")):
        out = tmp_path / name
        assert train_main(["rm", "--data", str(small_data), "--output-dir", str(out), "--max-steps", "2",
                           "--lora", "--lora-r", "4", "--lora-target-modules", "q_proj,v_proj", *extra, *FAST]) == 0
        saved = out / "model"
        if name == "merged":
            AutoModelForSequenceClassification.from_pretrained(saved)
            assert not (saved / "adapter_config.json").exists()
        else:
            assert (saved / "adapter_config.json").is_file()


def test_margin_column_enters_the_loss(tmp_path, sample_rows):
    rows = [{**r, "margin": 2.0} for r in sample_rows[:80]]
    data = write_jsonl(tmp_path / "m.jsonl", rows)
    with_margin, without = tmp_path / "with", tmp_path / "without"
    base = ["rm", "--data", str(data), "--max-steps", "1", "--lambda-adv", "0", *FAST]
    assert train_main([*base, "--output-dir", str(with_margin), "--margin-column", "margin"]) == 0
    assert train_main([*base, "--output-dir", str(without)]) == 0
    # the same first batch and weights: BT loss with margin m is larger (-logσ(Δ - 2) > -logσ(Δ))
    assert losses(with_margin)[0]["bt_loss"] > losses(without)[0]["bt_loss"] + 0.5
    assert options.run_cli(rm.main, [*base[1:], "--output-dir", str(tmp_path / "x"), "--margin-column", "nope"]) == 2


def test_help_documents_every_option():
    result = subprocess.run([sys.executable, "-m", "guard.train", "rm", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for name in rm.RMConfig.__dataclass_fields__:
        assert f"--{name.replace('_', '-')}" in result.stdout, name
    top = subprocess.run([sys.executable, "-m", "guard.train", "--help"], capture_output=True, text=True)
    assert top.returncode == 0 and "rm" in top.stdout


def test_rows_set_aside_are_counted_in_the_report(tmp_path, sample_rows):
    rows = sample_rows[:60] + sample_rows[:5] + [{**sample_rows[0], "chosen": ""}, {**sample_rows[1], "rejected":
                                                                                    sample_rows[1]["chosen"]}]
    data = write_jsonl(tmp_path / "dirty.jsonl", rows)
    out = tmp_path / "run"
    assert train_main(["rm", "--data", str(data), "--output-dir", str(out), "--max-steps", "1", *FAST]) == 0
    report = (out / "report.md").read_text()
    assert re.search(r"duplicate pairs removed\s*\|\s*5", report), report
    assert re.search(r"empty response\s*\|\s*1", report) and re.search(r"identical responses\s*\|\s*1", report)


BAD_INPUTS = {
    "malformed line": (lambda d, rows: d.write_text(json.dumps(rows[0]) + "\n{not json\n"), r"line 2: not valid JSON"),
    "missing columns": (lambda d, rows: write_jsonl(d, [{"prompt": r["prompt"], "answer": r["chosen"]}
                                                        for r in rows[:20]]),
                        r"cannot tell the schema from the columns \['answer', 'prompt'\].*pass --schema NAME"),
    "empty dataset": (lambda d, rows: d.write_text(""), r"empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_data_ends_with_a_clear_error(tmp_path, sample_rows, case, capsys):
    make, pattern = BAD_INPUTS[case]
    data = tmp_path / "bad.jsonl"
    make(data, sample_rows)
    code = options.run_cli(rm.main, ["--data", str(data), "--output-dir", str(tmp_path / "o"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and re.search(pattern, err, flags=re.I), err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in err


def test_unknown_category_and_missing_model_end_with_a_clear_error(tmp_path, small_data, sample_rows, capsys):
    out = str(tmp_path / "o")
    code = options.run_cli(rm.main, ["--data", str(small_data), "--output-dir", out, "--categories", "helpful", *FAST])
    err = capsys.readouterr().err
    assert code == 2 and re.search(r"pairs.jsonl line \d+: unknown category 'harmless'", err), err
    odd = write_jsonl(tmp_path / "eval.jsonl", [{**sample_rows[0], "category": "medical"}] + sample_rows[1:10])
    code = options.run_cli(rm.main, ["--data", str(small_data), "--eval-data", str(odd), "--output-dir", out, *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "eval data" in err and "unknown category 'medical'" in err, err
    code = options.run_cli(rm.main, ["--data", str(small_data), "--output-dir", out,
                                    *FAST[:0], "--model", str(tmp_path / "no-such-model")])
    err = capsys.readouterr().err
    assert code == 2 and "model not found" in err, err
    code = options.run_cli(rm.main, ["--data", str(tmp_path / "nope.jsonl"), "--output-dir", out, *FAST])
    assert code == 2 and "not found" in capsys.readouterr().err


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n[1, 2]\n')
    result = run_rm(["--data", str(bad), "--output-dir", str(tmp_path / "o"), *FAST])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "line 2: expected a JSON object" in result.stderr, result.stderr


def test_moments_adversary_with_three_categories_and_absent_ones(tmp_path, sample_rows):
    """Three categories, one of them rare (absent from most batches), the moments adversary: the run trains, its
    adversary loss is logged every step, and the summary names the worst pair of categories."""
    rows = [{**r, "category": ("helpful", "harmless", "privacy")[k % 3 if k % 10 == 0 else k % 2]}
            for k, r in enumerate(sample_rows[:150])]
    data = write_jsonl(tmp_path / "three.jsonl", rows)
    out = tmp_path / "run"
    assert train_main(["rm", "--data", str(data), "--output-dir", str(out), "--max-steps", "6",
                       "--adversary", "moments", "--adv-objective", "entropy", *FAST]) == 0
    metrics = jsonfiles.read_jsonl(out / "metrics.jsonl")
    assert all(np.isfinite(m["adv_loss"]) and np.isfinite(m["loss"]) for m in metrics)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["categories"]) <= {"harmless", "helpful", "privacy"} and len(summary["worst_pair"]) == 2
