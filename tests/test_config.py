"""guard.config: dataclass configs -> argparse flags, yaml files, precedence, errors and round trips.

    python -m pytest tests/test_config.py -q
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest
import yaml

from guard.config import (
    UNSET, ConfigError, add_arguments, build_config, config_to_dict, load_config, option, save_config,
)


@dataclass
class Cfg:
    data: str = option("", "training data: a local file/folder or a hub dataset name")
    lambda_adv: list[float] = option([0.2], "fairness weight(s); several comma-separated values run a sweep")
    adversary: str = option("rewards", "adversary input", choices=("moments", "rewards"))
    max_steps: int | None = option(None, "stop after this many optimizer steps (overrides epochs)")
    bf16: bool = option(True, "bf16 autocast on GPU")
    epochs: int = option(1, "passes over the data")
    lr: float = option(1e-5, "learning rate, 100% of it")
    objective: Literal["ce", "entropy"] = option("ce", "adversary objective")
    columns: list[str] = option(["chosen", "rejected"], "column names")
    note: str | None = option(None, "free text")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="guard-test")
    add_arguments(p, Cfg)
    return p


def parse(*argv: str) -> Cfg:
    return build_config(Cfg, parser().parse_args(list(argv)))


def test_mutable_defaults_are_not_shared():
    a, b = Cfg(), Cfg()
    a.lambda_adv.append(0.8)
    assert b.lambda_adv == [0.2] and Cfg().lambda_adv == [0.2]
    assert a.columns is not b.columns


def test_defaults_without_flags():
    assert parse() == Cfg()


def test_flags_parse_every_type():
    cfg = parse("--lambda-adv", "0,0.2,0.8", "--no-bf16", "--max-steps", "7", "--adversary", "moments",
                "--lr", "3e-4", "--objective", "entropy", "--columns", "a, b", "--data", "x.jsonl", "--note", "hi")
    assert cfg == Cfg(data="x.jsonl", lambda_adv=[0.0, 0.2, 0.8], adversary="moments", max_steps=7, bf16=False,
                      lr=3e-4, objective="entropy", columns=["a", "b"], note="hi")
    assert parse("--bf16").bf16 is True
    assert parse("--max-steps", "none").max_steps is None
    assert parse("--lambda-adv", "").lambda_adv == []
    assert parse("--lambda-adv", "1").lambda_adv == [1.0] and isinstance(parse("--lambda-adv", "1").lambda_adv[0],
                                                                          float)


def test_unset_sentinel_marks_flags_not_given():
    ns = parser().parse_args(["--epochs", "3"])
    assert ns.epochs == 3 and ns.lr is UNSET and ns.bf16 is UNSET


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "abc"], "argument --epochs: expected an integer, got 'abc'"),
    (["--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
    (["--lambda-adv", "0,x"], "argument --lambda-adv: expected a number, got 'x'"),
    (["--adversary", "mean"], "argument --adversary: invalid choice 'mean' (choose from moments, rewards)"),
    (["--objective", "mse"], "argument --objective: invalid choice 'mse' (choose from ce, entropy)"),
    (["--max-steps", "1.5"], "argument --max-steps: expected an integer, got '1.5'"),
])
def test_bad_flag_values_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"guard-test: error: {message}" in err and "Traceback" not in err


def test_help_documents_every_field_with_its_default(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in [
        "--data STR training data: a local file/folder or a hub dataset name (default: '')",
        "--lambda-adv X[,X...] fairness weight(s); several comma-separated values run a sweep (default: 0.2)",
        "--adversary {moments,rewards} adversary input (default: rewards)",
        "--max-steps N stop after this many optimizer steps (overrides epochs) (default: none)",
        "--bf16, --no-bf16 bf16 autocast on GPU (default: true)",
        "--lr X learning rate, 100% of it (default: 1e-05)",
        "--objective {ce,entropy} adversary objective (default: ce)",
        "--columns STR[,STR...] column names (default: chosen,rejected)",
    ]:
        assert expected in text


def test_help_with_argument_defaults_formatter_shows_each_default_once(capsys):
    p = argparse.ArgumentParser(prog="guard-test", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p, Cfg)
    with pytest.raises(SystemExit):
        p.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "<unset>" not in text and text.count("(default:") == len(config_to_dict(Cfg()))
    assert "adversary input (default: rewards) --max-steps" in text


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_precedence_defaults_yaml_flags(tmp_path):
    path = write(tmp_path, "epochs: 4\nlr: 0.001\nlambda_adv: [0, 0.5]\nbf16: false\nmax-steps: 9\n")
    ns = parser().parse_args(["--epochs", "2", "--bf16"])
    cfg = build_config(Cfg, ns, yaml_path=path)
    assert cfg == Cfg(epochs=2, lr=0.001, lambda_adv=[0.0, 0.5], bf16=True, max_steps=9)
    # a flag given with the default's value still overrides the yaml file
    assert build_config(Cfg, parser().parse_args(["--epochs", "1"]), path).epochs == 1


def test_yaml_list_spellings(tmp_path):
    assert load_config(Cfg, write(tmp_path, "lambda_adv: '0,0.2,0.8'\n")).lambda_adv == [0.0, 0.2, 0.8]
    assert load_config(Cfg, write(tmp_path, "lambda_adv: 0.3\n")).lambda_adv == [0.3]
    assert load_config(Cfg, write(tmp_path, "lambda_adv: []\n")).lambda_adv == []
    assert load_config(Cfg, write(tmp_path, "columns: [a, b, c]\n")).columns == ["a", "b", "c"]
    assert load_config(Cfg, write(tmp_path, "")) == Cfg()


@pytest.mark.parametrize("text, message", [
    ("epochs: abc\n", "epochs: expected an integer, got 'abc' (str)"),
    ("epochs: 1.5\n", "epochs: expected an integer, got 1.5 (float)"),
    ("epochs: true\n", "epochs: expected an integer, got True (bool)"),
    ("epochs: null\n", "epochs: expected an integer, got None (NoneType)"),
    ("bf16: 1\n", "bf16: expected true or false, got 1 (int)"),
    ("lr: fast\n", "lr: expected a number, got 'fast' (str)"),
    ("lambda_adv: [0.1, x]\n", "lambda_adv: expected a list of numbers, got [0.1, 'x'] (list)"),
    ("lambda_adv: '0.1,x'\n", "lambda_adv: expected a list of numbers, got '0.1,x' (str)"),
    ("adversary: mean\n", "adversary: expected one of moments, rewards, got 'mean' (str)"),
    ("max_steps: ten\n", "max_steps: expected an integer or null, got 'ten' (str)"),
    ("data: 12\n", "data: expected a string, got 12 (int)"),
    ("epoch: 3\n", "unknown key 'epoch' (known: data, lambda_adv, adversary, max_steps, bf16, epochs, lr,"),
    ("- 1\n- 2\n", "expected a mapping of option names to values, got list"),
    ("epochs: [1\n", "not valid yaml"),
])
def test_yaml_errors_name_file_key_and_type(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        build_config(Cfg, parser().parse_args([]), path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(Cfg, tmp_path / "nope.yaml")


def test_yaml_ints_become_floats(tmp_path):
    cfg = load_config(Cfg, write(tmp_path, "lr: 1\nlambda_adv: [0, 1]\n"))
    assert cfg.lr == 1.0 and type(cfg.lr) is float and all(type(x) is float for x in cfg.lambda_adv)


@pytest.mark.parametrize("cfg", [
    Cfg(),
    Cfg(data="yes", lambda_adv=[0.1 + 0.2, 1e-7, 3.0, float("inf")], adversary="moments", max_steps=123456789,
        bf16=False, epochs=0, lr=1 / 3, objective="entropy", columns=["null", "1.5", "", "a: b", "é"], note="#x"),
    Cfg(data="null", columns=[], note="", lambda_adv=[]),
])
def test_save_load_round_trip_exact(tmp_path, cfg):
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert load_config(Cfg, path) == cfg
    text = path.read_text()
    assert "# fairness weight(s); several comma-separated values run a sweep\nlambda_adv: [" in text
    assert list(yaml.safe_load(text)) == list(config_to_dict(cfg))  # field order kept
    assert not list(tmp_path.glob("*.tmp"))


def test_config_to_dict_order_and_copies():
    cfg = Cfg(lambda_adv=[0.5])
    d = config_to_dict(cfg)
    assert list(d) == ["data", "lambda_adv", "adversary", "max_steps", "bf16", "epochs", "lr", "objective",
                       "columns", "note"]
    assert d["lambda_adv"] == [0.5]
    d["lambda_adv"].append(1.0)
    assert cfg.lambda_adv == [0.5]


def test_unsupported_field_type_is_a_programming_error():
    @dataclass
    class Bad:
        pairs: dict = option({}, "not a supported type")

    with pytest.raises(TypeError, match="Bad.pairs: unsupported config field type"):
        add_arguments(argparse.ArgumentParser(), Bad)


def test_not_a_dataclass():
    with pytest.raises(TypeError, match="not a dataclass"):
        add_arguments(argparse.ArgumentParser(), dict)
