"""What a newcomer meets first: `--help` of every recipe answers at once and says what it should, every option
with a numeric domain is checked before anything loads (one `error:` line, exit 2, nothing written), argparse
mistakes are one line with a hint, TRL's spellings are understood, and `--model tiny` trains out of the box."""

import dataclasses
import os
import re
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

from guard import assets, jsonfiles
from guard.config import ConfigError, build_config
from guard.eval import bias, diversity, parity, rewards
from guard.train import options
from guard.train.__main__ import default_job_config
from guard.train.__main__ import main as train_main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [options.RMConfig, options.PrefConfig, options.PPOConfig, rewards.RewardsConfig, parity.ParityConfig,
           diversity.DiversityConfig, bias.BiasConfig]


def _from_root(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(ROOT / "python")}
    return subprocess.run([sys.executable, "-m", "guard.train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("recipe", sorted(options.RECIPES))
def test_help_answers_at_once_and_says_what_it_should(recipe):
    started = time.perf_counter()
    result = _from_root(recipe, "--help")
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 3.0, f"--help took {elapsed:.2f} s"  # ~0.2 s here: no torch, no transformers
    text = " ".join(result.stdout.split())
    assert "DESIGN.md" not in text and not re.search(r"\(default[^)]*\) \(default", text), text
    assert "--output-dir STR where the run writes config, metrics, checkpoints, model and report (required)" in text
    if recipe == "ppo":
        assert "--eval-data STR held-out prompts" in text


def test_the_help_of_the_entry_point_lists_the_recipes():
    result = _from_root("--help")
    assert result.returncode == 0 and "recipes: rm, pref, ppo" in result.stdout


def _numeric_fields(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        text = str(hints[f.name])
        if "int" in text or "float" in text:
            yield f


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_numeric_option_declares_its_domain(cls):
    undeclared = [f.name for f in _numeric_fields(cls) if f.metadata.get("domain") is None]
    assert not undeclared, f"{cls.__name__}: numeric options without a domain: {undeclared}"
    for f in _numeric_fields(cls):  # every default lies in its own domain
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for value in default if isinstance(default, list) else [default]:
            assert value is None or value in f.metadata["domain"], (f.name, value)


BAD_VALUES = [
    ("rm", ["--lr=-1e-3"], "--lr must be > 0, got -0.001"),
    ("rm", ["--lr", "0"], "--lr must be > 0, got 0"),
    ("rm", ["--lr", "nan"], "--lr must be > 0, got nan"),
    ("rm", ["--lr", "inf"], "--lr must be > 0, got inf"),
    ("rm", ["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ("rm", ["--epochs", "0"], "--epochs must be >= 1, got 0"),
    ("rm", ["--max-steps", "-5"], "--max-steps must be >= 1, got -5"),
    ("rm", ["--max-length", "0"], "--max-length must be >= 2, got 0"),
    ("rm", ["--keep-checkpoints", "0"], "--keep-checkpoints must be >= 1, got 0"),
    ("rm", ["--log-every", "0"], "--log-every must be >= 1, got 0"),
    ("rm", ["--save-every", "-1"], "--save-every must be >= 0, got -1"),
    ("rm", ["--warmup-ratio", "1.5"], "--warmup-ratio must be in [0, 1], got 1.5"),
    ("rm", ["--max-grad-norm", "-1"], "--max-grad-norm must be >= 0, got -1"),
    ("rm", ["--eval-fraction", "1"], "--eval-fraction must be in (0, 1), got 1"),
    ("rm", ["--lambda-adv", "0,-0.2"], "--lambda-adv must be >= 0, got -0.2"),
    ("rm", ["--adv-lr", "0"], "--adv-lr must be > 0, got 0"),
    ("rm", ["--max-prompt-length", "64", "--max-length", "64"], "--max-prompt-length 64 leaves no room"),
    ("rm", ["--resume", "--overwrite"], "give one"),
    ("pref", ["--beta", "inf"], "--beta must be > 0, got inf"),
    ("pref", ["--label-smoothing", "0.5"], "--label-smoothing must be in [0, 0.5), got 0.5"),
    ("pref", ["--alpha", "1.5"], "--alpha must be in [0, 1], got 1.5"),
    ("ppo", ["--gamma", "2"], "--gamma must be in [0, 1], got 2"),
    ("ppo", ["--temperature", "0"], "--temperature must be > 0, got 0"),
    ("ppo", ["--top-p", "0"], "--top-p must be in (0, 1], got 0"),
]


@pytest.mark.parametrize("recipe, flags, message", BAD_VALUES, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_a_bad_value_is_one_error_line_before_anything_loads(tmp_path, capsys, recipe, flags, message):
    out = tmp_path / "run"
    data = ["--reward-model", "rm-dir"] if recipe == "ppo" else []
    started = time.perf_counter()
    code = train_main([recipe, "--data", "no-such-data.jsonl", "--output-dir", str(out), *data, *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err, err
    assert not out.exists()  # nothing written: not even config.yaml
    assert time.perf_counter() - started < 5  # no data, no model, no tokenizer loaded


def test_an_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("mine")
    assert train_main(["rm", "--data", "no-such.jsonl", "--output-dir", str(target)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err and target.read_text() == "mine"


def test_a_bad_value_in_yaml_names_the_flag_and_the_file(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("lr: 1e-5\nwarmup_ratio: 2\n")  # 1e-5 (no dot) is a string to yaml 1.1: accepted as a number
    assert train_main(["rm", "--config", str(config), "--output-dir", str(tmp_path / "o")]) == 2
    assert f"--warmup-ratio must be in [0, 1], got 2.0 (in {config})" in capsys.readouterr().err
    config.write_text("lr: 1e-5\n")
    cfg = options.parse_recipe("rm", ["--config", str(config), "--output-dir", "o"], announce=False)
    assert cfg.lr == 1e-5 and isinstance(cfg.lr, float)
    with pytest.raises(ConfigError, match="lr: expected a number"):
        config.write_text("lr: fast\n")
        build_config(options.RMConfig, None, yaml_path=config)


@pytest.mark.parametrize("argv, expected", [
    (["rm", "--lr", "x"], "error: argument --lr: expected a number, got 'x'"),
    (["rm", "--learning-rate", "1e-3"], "error: unknown option --learning-rate"),
    (["rm", "--lamda-adv", "0.2"], "error: unknown option --lamda-adv (did you mean --lambda-adv?)"),
    (["pref", "--loss", "orpo"], "error: argument --loss: invalid choice 'orpo'"),
])
def test_argparse_mistakes_are_one_short_line_and_a_hint(capsys, argv, expected):
    with pytest.raises(SystemExit) as stop:
        train_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 2, err
    assert err[0].startswith(expected) and err[1] == f"(`python -m guard.train {argv[0]} --help` lists every option)"


def test_trl_spellings_are_understood():
    assert options.parse_recipe("pref", ["--loss", "dpo", "--output-dir", "o"], announce=False).loss == "sigmoid"


def test_the_tiny_model_gets_from_scratch_defaults_unless_the_user_says_otherwise(capsys):
    cfg = options.parse_recipe("rm", ["--output-dir", "o"])
    assert (cfg.lr, cfg.max_grad_norm, cfg.threads) == (2e-3, 0.0, 1)
    assert "lr=0.002 max_grad_norm=0.0 threads=1 (defaults of the random-init tiny model" in capsys.readouterr().out
    cfg = options.parse_recipe("rm", ["--output-dir", "o", "--lr", "1e-4"], announce=False)
    assert (cfg.lr, cfg.max_grad_norm, cfg.threads) == (1e-4, 1.0, 1)  # the user's lr: fine-tuning clipping
    cfg = options.parse_recipe("rm", ["--output-dir", "o", "--max-grad-norm", "2", "--threads", "2"], announce=False)
    assert (cfg.lr, cfg.max_grad_norm, cfg.threads) == (2e-3, 2.0, 2)
    cfg = options.parse_recipe("pref", ["--output-dir", "o", "--model", "some/checkpoint"], announce=False)
    assert (cfg.lr, cfg.max_grad_norm, cfg.threads) == (5e-6, 1.0, None)  # a pretrained model: fine-tuning
    assert default_job_config().threads == 1


def test_the_tiny_preset_learns_without_a_learning_rate(tmp_path):
    """Before the from-scratch defaults, `rm --model tiny --max-steps 200` ended at BT loss 0.68 (ln 2 = 0.693)."""
    out = tmp_path / "rm"
    assert train_main(["rm", "--data", str(assets.SAMPLE_PAIRS), "--output-dir", str(out), "--max-steps", "120",
                       "--max-length", "64", "--lambda-adv", "0", "--save-every", "0"]) == 0
    losses = [row["bt_loss"] for row in jsonfiles.read_jsonl(out / "metrics.jsonl")]
    assert sum(losses[-3:]) / 3 < 0.55, losses
