"""Dataclass configs for guard's command lines: one declaration gives the flags, the yaml schema and the help.

    @dataclass
    class RMConfig:
        epochs: int = option(1, "passes over the training data")
        lambda_adv: list[float] = option([0.2], "fairness weight(s); several values run a sweep")
        adversary: str = option("rewards", "adversary input", choices=("moments", "rewards"))

    parser = argparse.ArgumentParser()
    add_arguments(parser, RMConfig)          # --epochs N, --lambda-adv X[,X...], --adversary {moments,rewards}
    ns = parser.parse_args()
    cfg = build_config(RMConfig, ns, yaml_path=ns.config)   # defaults < yaml < flags given
    save_config(cfg, "run/config.yaml")                      # load_config(RMConfig, path) gives cfg back

Field types: int, float, str, bool (``--flag`` / ``--no-flag``), ``X | None`` (``none`` on the command line,
``null`` in yaml), ``list[int|float|str]`` (comma separated on the command line; a yaml list, a comma
separated string or a single value in yaml) and ``Literal[...]`` or ``choices=``. A bad value on the command
line is an argparse error (usage + message, exit 2); a bad yaml file, key or value is a :class:`ConfigError`
naming the file, the key and the expected type.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Union

import yaml

__all__ = [
    "ConfigError", "UNSET", "option", "add_arguments", "build_config", "config_to_dict", "save_config", "load_config",
]


class ConfigError(ValueError):
    """A user-facing configuration or input problem: the CLI prints ``error: <message>`` and exits 2."""


class _Unset:
    """argparse default of every generated flag, so build_config can tell which flags were given."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET = _Unset()


def option(default: Any, help: str, *, choices: typing.Iterable[Any] | None = None) -> Any:
    """A dataclass field with its help text (and allowed values). Mutable defaults (lists, dicts, sets) are
    copied for each instance through a ``default_factory``."""
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# --------------------------------------------------------------------------------------------- field types


_SINGULAR = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_PLURAL = {int: "integers", float: "numbers", str: "strings"}


@dataclasses.dataclass(frozen=True)
class _Kind:
    """What one field accepts: base scalar type, list or not, None allowed or not, allowed values."""

    base: type  # int, float, str or bool
    is_list: bool
    optional: bool
    choices: tuple | None

    def describe(self) -> str:
        """What a valid yaml value is, for error messages."""
        if self.is_list:
            what = (f"a list of {_PLURAL[self.base]}" if self.choices is None
                    else f"a list of values from {', '.join(map(str, self.choices))}")
        elif self.choices is not None:
            what = "one of " + ", ".join(map(str, self.choices))
        else:
            what = _SINGULAR[self.base]
        return what + (" or null" if self.optional else "")


def _is_union(tp) -> bool:
    return typing.get_origin(tp) is Union or isinstance(tp, types.UnionType)


def _kind(cls: type, f: dataclasses.Field, hints: dict) -> _Kind:
    tp = hints[f.name]
    optional = False
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1 or len(typing.get_args(tp)) != 2:
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported type {tp} (only `X | None` unions)")
        tp, optional = args[0], True
    is_list = typing.get_origin(tp) is list
    if is_list:
        (tp,) = typing.get_args(tp) or (str,)
    choices = f.metadata.get("choices")
    if typing.get_origin(tp) is Literal:
        values = typing.get_args(tp)
        choices = choices or values
        tp = type(values[0])
    if tp not in (int, float, str, bool) or (is_list and tp is bool):
        raise TypeError(f"{cls.__name__}.{f.name}: unsupported config field type {hints[f.name]}")
    return _Kind(tp, is_list, optional, tuple(choices) if choices is not None else None)


def _fields(cls: type) -> list[tuple[dataclasses.Field, _Kind]]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    return [(f, _kind(cls, f, hints)) for f in dataclasses.fields(cls) if f.init]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return UNSET


# -------------------------------------------------------------------------------------- parsing and checks


def _scalar_from_text(text: str, kind: _Kind) -> Any:
    """One command-line (or comma-list item) value; ValueError with the reason when it does not parse."""
    if kind.base is int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    elif kind.base is float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    else:
        value = text.strip() if kind.is_list else text
    if kind.choices is not None and value not in kind.choices:
        raise ValueError(f"invalid choice {text!r} (choose from {', '.join(map(str, kind.choices))})")
    return value


def _from_text(text: str, kind: _Kind) -> Any:
    if kind.optional and text.strip().lower() in ("none", "null"):
        return None
    if kind.is_list:
        return [_scalar_from_text(item, kind) for item in text.split(",")] if text.strip() else []
    return _scalar_from_text(text, kind)


def _check_scalar(value: Any, kind: _Kind) -> Any:
    """A yaml value of the field's scalar type, or ValueError. ints are accepted for floats."""
    if kind.base is bool:
        ok = isinstance(value, bool)
    elif kind.base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:  # bool is an int subclass, and `epochs: true` is a mistake
        ok = isinstance(value, kind.base) and not isinstance(value, bool)
    if not ok or (kind.choices is not None and value not in kind.choices):
        raise ValueError
    return float(value) if kind.base is float else value


def _from_yaml(value: Any, kind: _Kind) -> Any:
    if value is None and kind.optional:
        return None
    if kind.is_list:
        if isinstance(value, str):  # "0,0.2,0.8", as on the command line
            return _from_text(value, dataclasses.replace(kind, optional=False))
        items = value if isinstance(value, list) else [value]  # a single value is a one-item list
        return [_check_scalar(v, kind) for v in items]
    return _check_scalar(value, kind)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) if value else "''"
    return str(value) if value != "" else "''"


# ---------------------------------------------------------------------------------------------- argparse


class _BoolAction(argparse.Action):
    """``--flag`` sets True, ``--no-flag`` sets False (argparse.BooleanOptionalAction without its own
    "(default: ...)" suffix, which would print the UNSET sentinel)."""

    def __init__(self, option_strings, dest, **kwargs):
        flag = option_strings[0]
        super().__init__([flag, "--no-" + flag[2:]], dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not option_string.startswith("--no-"))

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


def _text_type(kind: _Kind, name: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return _from_text(text, kind)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _metavar(kind: _Kind) -> str:
    one = "{" + ",".join(map(str, kind.choices)) + "}" if kind.choices is not None else {
        int: "N", float: "X", str: "STR"}[kind.base]
    return f"{one}[,{one}...]" if kind.is_list else one


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """One ``--kebab-case`` flag per field of the dataclass ``cls``, with its help text and default.
    Every flag's argparse default is :data:`UNSET`, so :func:`build_config` applies only flags given."""
    for f, kind in _fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = _default(f)
        help_text = f.metadata.get("help", "")
        if default is not UNSET:
            help_text += f" (default: {_show(default)})"
        # argparse %-formats help strings. The empty "%(default).0s" stops ArgumentDefaultsHelpFormatter from
        # appending "(default: <unset>)": the default shown is the field's, already in the text.
        help_text = help_text.replace("%", "%%") + "%(default).0s"
        if kind.base is bool and not kind.is_list:
            parser.add_argument(flag, dest=f.name, action=_BoolAction, default=UNSET, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=_text_type(kind, f.name), default=UNSET,
                                metavar=_metavar(kind), help=help_text)


# ----------------------------------------------------------------------------------------- build / io


def _read_yaml(cls: type, path: str | os.PathLike) -> dict[str, Any]:
    """The checked values of a yaml config file, by field name."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid yaml: {' '.join(str(e).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values, got {type(data).__name__}")
    kinds = {f.name: kind for f, kind in _fields(cls)}
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")  # accept the flag spelling too
        if name not in kinds:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(kinds)})")
        try:
            values[name] = _from_yaml(value, kinds[name])
        except ValueError:
            raise ConfigError(
                f"{path}: {key}: expected {kinds[name].describe()}, got {value!r} ({type(value).__name__})"
            ) from None
    return values


def build_config(cls: type, namespace: argparse.Namespace | None = None,
                 yaml_path: str | os.PathLike | None = None, preset: Mapping[str, Any] | None = None):
    """An instance of ``cls``: field defaults, overridden by ``preset`` (a named set of values, e.g. a
    paper's settings), by the yaml file, then by the flags actually given on the command line (attributes
    of ``namespace`` that are not :data:`UNSET`)."""
    values = dict(preset or {})
    values.update(_read_yaml(cls, yaml_path) if yaml_path is not None else {})
    if namespace is not None:
        for f, _ in _fields(cls):
            given = getattr(namespace, f.name, UNSET)
            if given is not UNSET:
                values[f.name] = given
    return cls(**values)


def config_to_dict(cfg) -> dict[str, Any]:
    """The config's fields in declaration order, as plain values (lists copied)."""
    return {f.name: copy.deepcopy(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}


def save_config(cfg, path: str | os.PathLike) -> None:
    """Write ``cfg`` as yaml, one ``key: value`` per field in declaration order, each under its help text
    as a comment. :func:`load_config` reads back an equal config."""
    lines = [f"# {type(cfg).__name__}"]
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        if f.metadata.get("help"):
            lines.append(f"# {' '.join(f.metadata['help'].split())}")
        value = getattr(cfg, f.name)
        # Lists in flow style ("lambda_adv: [0.0, 0.2]"); the top-level mapping in block style.
        lines.append(yaml.safe_dump({f.name: value}, default_flow_style=None if isinstance(value, list) else False,
                                    allow_unicode=True, width=1 << 16).rstrip("\n"))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def load_config(cls: type, path: str | os.PathLike):
    """The config saved by :func:`save_config` (defaults for keys the file lacks)."""
    return build_config(cls, None, path)
