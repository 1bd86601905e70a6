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
separated string or a single value in yaml) and ``Literal[...]`` or ``choices=`` (``aliases=`` maps other
spellings to a choice). Numbers carry their ``domain`` (``"> 0"``, ``">= 0"``, ``"[0, 1)"``, ``"any"``) and
must be finite. A bad value on the command line is one ``error:`` line plus a hint (exit 2); a bad yaml file,
key or value, or a value outside its domain, is a :class:`ConfigError` naming the flag (and the file).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import math
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Union

import yaml

__all__ = [
    "ArgumentParser", "ConfigError", "Domain", "UNSET", "option", "add_arguments", "build_config", "config_to_dict",
    "flag_name", "given_fields", "save_config", "load_config",
]


class ConfigError(ValueError):
    """A user-facing configuration or input problem: the CLI prints ``error: <message>`` and exits 2."""


class _Unset:
    """argparse default of every generated flag, so build_config can tell which flags were given."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET = _Unset()


def option(default: Any, help: str, *, choices: typing.Iterable[Any] | None = None, domain: str | None = None,
           aliases: Mapping[str, Any] | None = None, required: bool = False, default_note: str | None = None) -> Any:
    """A dataclass field with its help text, and for numbers the `domain` of allowed values (see Domain; every
    number must also be finite), for strings the allowed `choices` and `aliases` (another spelling -> a choice),
    `required` for a value the run cannot go without, `default_note` for what the help adds to the default
    ("0.002 with --model tiny"). Mutable defaults (lists, dicts, sets) are copied for each
    instance through a ``default_factory``."""
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None,
                "domain": Domain.parse(domain) if domain is not None else None,
                "aliases": dict(aliases or {}), "required": required, "default_note": default_note}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Domain:
    """The values a number may take, always finite: ``"any"``, a bound (``"> 0"``, ``">= 1"``, ``"<= 1"``) or an
    interval (``"[0, 1)"``, ``"(0, 1]"``: a square bracket allows the end itself)."""

    low: float = -math.inf
    high: float = math.inf
    low_closed: bool = False
    high_closed: bool = False

    @classmethod
    def parse(cls, text: str) -> Domain:
        spec = text.replace(" ", "")
        number = r"(-?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?|inf)"
        if spec == "any":
            return cls()
        if m := re.fullmatch(r"(>=|>)" + number, spec):
            return cls(low=float(m.group(2)), low_closed=m.group(1) == ">=")
        if m := re.fullmatch(r"(<=|<)" + number, spec):
            return cls(high=float(m.group(2)), high_closed=m.group(1) == "<=")
        if m := re.fullmatch(r"([\[(])" + number + "," + number + r"([\])])", spec):
            return cls(float(m.group(2)), float(m.group(3)), m.group(1) == "[", m.group(4) == "]")
        raise ValueError(f"bad domain {text!r}: expected 'any', '> 0', '>= 1', '<= 1' or an interval like '[0, 1)'")

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return math.isfinite(value) and above and below

    def describe(self) -> str:
        """What a value must be, as an error message says it: "> 0", "in [0, 1)", "a finite number"."""
        def show(x: float) -> str:
            return f"{x:g}"

        if self.low == -math.inf and self.high == math.inf:
            return "a finite number"
        if self.high == math.inf:
            return f"{'>=' if self.low_closed else '>'} {show(self.low)}"
        if self.low == -math.inf:
            return f"{'<=' if self.high_closed else '<'} {show(self.high)}"
        left, right = "[" if self.low_closed else "(", "]" if self.high_closed else ")"
        return f"in {left}{show(self.low)}, {show(self.high)}{right}"


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
    aliases: tuple = ()  # (other spelling, choice) pairs

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
    aliases = tuple((f.metadata.get("aliases") or {}).items())
    return _Kind(tp, is_list, optional, tuple(choices) if choices is not None else None, aliases)


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
        value = dict(kind.aliases).get(value, value)
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
    if isinstance(value, str) and kind.base is str:
        value = dict(kind.aliases).get(value, value)
    if kind.base is bool:
        ok = isinstance(value, bool)
    elif kind.base is float:
        if isinstance(value, str):  # yaml 1.1 reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ValueError from None
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


class ArgumentParser(argparse.ArgumentParser):
    """argparse with guard's error style: one ``error:`` line (with the closest flag for a misspelt one) and a
    hint where the full help is, instead of the whole usage block; exit status 2."""

    def error(self, message: str):
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            flags = [o for action in self._actions for o in action.option_strings]
            first = unknown.group(1).split()[0]
            close = difflib.get_close_matches(first.split("=")[0], flags, n=1)
            message = f"unknown option {first}" + (f" (did you mean {close[0]}?)" if close else "")
        sys.stderr.write(f"error: {message}\n(`{self.prog} --help` lists every option)\n")
        sys.exit(2)


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """One ``--kebab-case`` flag per field of the dataclass ``cls``, with its help text and default.
    Every flag's argparse default is :data:`UNSET`, so :func:`build_config` applies only flags given."""
    for f, kind in _fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = _default(f)
        help_text = f.metadata.get("help", "")
        if f.metadata.get("required"):
            help_text += " (required)"
        elif default is not UNSET and "default:" not in help_text:  # a help text may say its default in words
            note = f.metadata.get("default_note")
            help_text += f" (default: {_show(default)}{'; ' + note if note else ''})"
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
                 yaml_path: str | os.PathLike | None = None, preset: Mapping[str, Any] | None = None,
                 defaults: Mapping[str, Any] | None = None):
    """An instance of ``cls``: field defaults, overridden by ``defaults`` (e.g. a model preset's own), then by
    ``preset`` (a named set of values, e.g. a paper's settings), by the yaml file, then by the flags actually
    given on the command line (attributes of ``namespace`` that are not :data:`UNSET`). Every number is checked
    against its field's domain: a ConfigError names the flag and where the value came from."""
    values, origin = {}, {}
    layers = [(defaults, None), (preset, "the preset"),
              (_read_yaml(cls, yaml_path) if yaml_path is not None else None, str(yaml_path))]
    for layer, where in layers:
        for name, value in (layer or {}).items():
            values[name], origin[name] = value, where
    if namespace is not None:
        for f, _ in _fields(cls):
            given = getattr(namespace, f.name, UNSET)
            if given is not UNSET:
                values[f.name], origin[f.name] = given, None
    for f, kind in _fields(cls):
        domain = f.metadata.get("domain")
        value = values.get(f.name, _default(f))
        if domain is None or value is None or kind.base not in (int, float):
            continue
        for item in value if kind.is_list else [value]:
            if item not in domain:
                where = f" (in {origin[f.name]})" if origin.get(f.name) else ""
                raise ConfigError(f"{flag_name(f.name)} must be {domain.describe()}, got {_show(item)}{where}")
    return cls(**values)


def flag_name(field_name: str) -> str:
    """The command-line flag of a config field: lambda_adv -> --lambda-adv."""
    return "--" + field_name.replace("_", "-")


def given_fields(cls: type, namespace: argparse.Namespace | None, yaml_path: str | os.PathLike | None = None,
                 preset: Mapping[str, Any] | None = None) -> set[str]:
    """The fields a user set: a flag given, a yaml key or a preset's value."""
    given = set(preset or ())
    if yaml_path is not None:
        given |= set(_read_yaml(cls, yaml_path))
    if namespace is not None:
        given |= {f.name for f, _ in _fields(cls) if getattr(namespace, f.name, UNSET) is not UNSET}
    return given


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
