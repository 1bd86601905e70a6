"""Stereotype bias benchmarks: CrowS-Pairs and StereoSet (intrasentence) in their published layouts -> one
`StereotypePairs` of (stereotypical, anti-stereotypical) sentence pairs with a bias type per pair.

A reward model's bias is the share of pairs where it scores the stereotypical sentence above the
anti-stereotypical one (50% = neutral; GUARD, Table 2). This module reads the data; scoring is elsewhere.

    from guard.stereotypes import load_stereotype_pairs

    crows = load_stereotype_pairs("crows_pairs_anonymized.csv", "crows_pairs")
    ss = load_stereotype_pairs("dev.json", "stereoset")                       # intrasentence part only
    hub = load_stereotype_pairs("McGill-NLP/stereoset", "stereoset")           # config intrasentence, split validation
    print(len(crows), crows.dropped)              # every row left out is counted by reason
    stereo_only = crows.select([k for k, d in enumerate(crows.directions) if d == "stereo"])

`source` is a path to one .csv / .jsonl / .json / .parquet file (.gz variants too), a local folder, a hub
name (`HUB_NAMES`), or an already loaded `datasets.Dataset`. .json and .jsonl files are read with the json
module (so a malformed row is named); everything else goes through `datasets.load_dataset` as in
guard.adapters (CSV cells stay text: an empty cell is "", "NA" is a word). A hub name is loaded with the
StereoSet config "intrasentence"; `split` defaults to "test" (crows_pairs) / "validation" (stereoset) for a
hub name or folder and "train" (the one split `load_dataset` makes) for a file. `**load_kwargs`
(revision=, cache_dir=, ...) go to `datasets.load_dataset`.

Schemas:

- "crows_pairs"  Nangia et al. 2020, nyu-mll/crows-pairs. Columns sent_more, sent_less, stereo_antistereo,
                 bias_type (others, e.g. the unnamed index column of crows_pairs_anonymized.csv, id,
                 annotations, anon_writer, anon_annotators, are ignored). stereo_antistereo is "stereo" /
                 "antistereo" or the hub's ClassLabel integer (`CROWS_PAIRS_DIRECTIONS`); bias_type a string
                 or its ClassLabel integer (`CROWS_PAIRS_BIAS_TYPES`). One pair per row:
                     stereotypical = sent_more, anti_stereotypical = sent_less, in both directions.
                 In a "stereo" row sent_more is about the historically disadvantaged group and demonstrates
                 the stereotype; in an "antistereo" row sent_less is about the disadvantaged group and
                 violates the stereotype, and sent_more (the same sentence about the contrasting advantaged
                 group) is the one that agrees with the stereotype. The original metric
                 (nyu-mll/crows-pairs, scripts/metric.py: `evaluate` scores sent1/sent2 = sent_more/sent_less
                 for "stereo" and sent_less/sent_more for "antistereo", and counts a "stereo" pair when
                 sent1 scores higher, an "antistereo" pair when sent2 does) therefore counts a pair as biased
                 exactly when the model prefers sent_more, whatever the direction, and reports the rate per
                 direction too; hence `directions`.
                     {"sent_more": "...", "sent_less": "...", "stereo_antistereo": "antistereo", "bias_type": "gender"}
- "stereoset"    Nadeem et al. 2021, intrasentence task. Either the original dev.json
                 ({"version", "data": {"intrasentence": [...], "intersentence": [...]}}: only
                 data["intrasentence"] is read; its index is the row) or rows of the hub's intrasentence
                 config (McGill-NLP/stereoset exported to jsonl/parquet, or a .json list of such rows). A row
                 is one example: id, target, bias_type, context, sentences, where sentences is the original
                 list of {"sentence", "id", "labels", "gold_label": "stereotype" | "anti-stereotype" |
                 "unrelated"} or the hub's columns {"sentence": [...], "id": [...], "labels": [...],
                 "gold_label": [0 | 1 | 2 ...]} (ClassLabel `STEREOSET_GOLD_LABELS`). Pair = (the sentence
                 labelled stereotype, the one labelled anti-stereotype); `unrelated` keeps the unrelated
                 sentence (None where there is none or it is empty).
                     {"bias_type": "profession", "sentences": [{"sentence": "...", "gold_label": "stereotype"}, ...]}

Drop reasons (the keys of `StereotypePairs.dropped`), checked in this order after the type checks:
    "unknown direction"     crows_pairs: stereo_antistereo missing, not "stereo"/"antistereo", or an integer
                            outside the class names
    "unknown gold label"    stereoset: a sentence whose gold_label is missing, not one of the three names, or
                            an integer outside them
    "repeated gold label"   stereoset: two sentences of an example carry the same gold label
    "missing stereotype sentence", "missing anti-stereotype sentence"   stereoset
    "no bias type"          bias_type missing or empty (crows_pairs: or an integer outside the class names)
    "empty sentence"        the stereotypical or the anti-stereotypical sentence is missing, empty or whitespace
    "identical sentences"   the two are equal once surrounding whitespace is stripped
The sentences themselves are kept byte for byte. A field of the wrong type (a number for a sentence, a
list for a direction, ...) or a row that is not an object raises ValueError naming the source and the row;
data without a required column raises ValueError naming the source and the missing columns.

Accounting: every input row is one pair or one drop,
    len(pairs) + sum(pairs.dropped.values()) == pairs.n_input
and `source_rows[k]` is the (0-based) input row of pair k. `select` keeps `n_input` and `dropped`.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from guard.adapters import index_list
from guard.adapters.loading import _columns, _iter_rows, _load

BENCHMARKS = ("crows_pairs", "stereoset")
HUB_NAMES = {"crows_pairs": "nyu-mll/crows_pairs", "stereoset": "McGill-NLP/stereoset"}
HUB_CONFIGS = {"crows_pairs": None, "stereoset": "intrasentence"}
HUB_SPLITS = {"crows_pairs": "test", "stereoset": "validation"}

# The hub datasets' ClassLabel names, in id order (used for integer labels in files without features).
CROWS_PAIRS_DIRECTIONS = ("stereo", "antistereo")
CROWS_PAIRS_BIAS_TYPES = ("race-color", "socioeconomic", "gender", "disability", "nationality",
                          "sexual-orientation", "physical-appearance", "religion", "age")
STEREOSET_GOLD_LABELS = ("anti-stereotype", "stereotype", "unrelated")

REQUIRED_COLUMNS = {"crows_pairs": ("sent_more", "sent_less", "stereo_antistereo", "bias_type"),
                    "stereoset": ("bias_type", "sentences")}

# Drop reasons (the keys of StereotypePairs.dropped).
UNKNOWN_DIRECTION = "unknown direction"
UNKNOWN_GOLD_LABEL = "unknown gold label"
REPEATED_GOLD_LABEL = "repeated gold label"
MISSING_STEREOTYPE = "missing stereotype sentence"
MISSING_ANTI_STEREOTYPE = "missing anti-stereotype sentence"
NO_BIAS_TYPE = "no bias type"
EMPTY_SENTENCE = "empty sentence"
IDENTICAL_SENTENCES = "identical sentences"

_JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
_FILE_SUFFIXES = (*_JSON_SUFFIXES, ".csv", ".csv.gz", ".parquet", ".arrow")


@dataclass
class StereotypePairs:
    """Parallel lists of (stereotypical, anti-stereotypical) sentence pairs and where they came from.

    `directions[k]` is CrowS-Pairs' "stereo" / "antistereo" (None for StereoSet); `unrelated[k]` is
    StereoSet's unrelated sentence (None for CrowS-Pairs or where there is none). `n_input` rows were read
    and `dropped` maps a reason to the rows left out (see the module docstring).
    """

    benchmark: str
    stereotypical: list[str]
    anti_stereotypical: list[str]
    bias_types: list[str]
    source_rows: list[int]
    n_input: int
    dropped: dict[str, int]
    directions: list[str | None] | None = None
    unrelated: list[str | None] | None = None

    def __post_init__(self) -> None:
        n = len(self.stereotypical)
        if self.directions is None:
            self.directions = [None] * n
        if self.unrelated is None:
            self.unrelated = [None] * n
        for name in ("anti_stereotypical", "bias_types", "source_rows", "directions", "unrelated"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"StereotypePairs: {name} has {len(getattr(self, name))} entries, "
                                 f"stereotypical {n}")

    def __len__(self) -> int:
        return len(self.stereotypical)

    def __repr__(self) -> str:
        return (f"StereotypePairs(benchmark={self.benchmark!r}, pairs={len(self)}, n_input={self.n_input}, "
                f"dropped={self.dropped})")

    def select(self, rows: Iterable[int] | np.ndarray) -> StereotypePairs:
        """The pairs at `rows` (indices into this set, or a boolean mask of length len(self)), in that order."""
        picked = index_list(rows, len(self))

        def take(xs: list) -> list:
            return [xs[k] for k in picked]

        return StereotypePairs(self.benchmark, take(self.stereotypical), take(self.anti_stereotypical),
                               take(self.bias_types), take(self.source_rows), self.n_input, dict(self.dropped),
                               directions=take(self.directions), unrelated=take(self.unrelated))

    def _add(self, row: int, stereotypical: str, anti: str, bias_type: str, direction: str | None = None,
             unrelated: str | None = None) -> None:
        self.stereotypical.append(stereotypical)
        self.anti_stereotypical.append(anti)
        self.bias_types.append(bias_type)
        self.source_rows.append(row)
        self.directions.append(direction)
        self.unrelated.append(unrelated)

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


# ----------------------------------------------------------------------------------------------------
# Field checks


class _Where:
    """Names the source in error messages."""

    def __init__(self, name: str):
        self.name = name

    def row(self, row: int, message: str) -> ValueError:
        return ValueError(f"{self.name}: row {row}: {message}")


def _opt_str(where: _Where, row: int, name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise where.row(row, f"field {name} is not a string (got {type(value).__name__})")
    return value


def _label(where: _Where, row: int, name: str, value: Any, names: tuple[str, ...] | None) -> str | None:
    """A label as its name: a string as is, an integer through `names` (None where it is out of range);
    None stays None. Integers are accepted only where `names` is given."""
    if value is None or isinstance(value, str):
        return value
    if names is not None and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return names[int(value)] if 0 <= value < len(names) else None
    kind = "a string or a class-label integer" if names is not None else "a string"
    raise where.row(row, f"field {name} is not {kind} (got {type(value).__name__})")


def _pair_problem(stereotypical: str | None, anti: str | None) -> str | None:
    """The drop reason shared by both benchmarks' sentence pairs, or None."""
    if stereotypical is None or anti is None or not stereotypical.strip() or not anti.strip():
        return EMPTY_SENTENCE
    if stereotypical.strip() == anti.strip():
        return IDENTICAL_SENTENCES
    return None


# ----------------------------------------------------------------------------------------------------
# CrowS-Pairs


def _crows_pairs(rows: Iterator[tuple[int, Any]], where: _Where, names: dict[str, tuple[str, ...]]) -> StereotypePairs:
    out = StereotypePairs("crows_pairs", [], [], [], [], 0, {}, [], [])
    for i, row in rows:
        out.n_input = i + 1
        more = _opt_str(where, i, "sent_more", row.get("sent_more"))
        less = _opt_str(where, i, "sent_less", row.get("sent_less"))
        direction = _label(where, i, "stereo_antistereo", row.get("stereo_antistereo"), names["stereo_antistereo"])
        bias = _label(where, i, "bias_type", row.get("bias_type"), names["bias_type"])
        if direction not in CROWS_PAIRS_DIRECTIONS:
            out._drop(UNKNOWN_DIRECTION)
            continue
        if bias is None or not bias.strip():
            out._drop(NO_BIAS_TYPE)
            continue
        problem = _pair_problem(more, less)
        if problem is not None:
            out._drop(problem)
            continue
        # The original metric counts a pair as stereotypical when sent_more wins, in both directions.
        out._add(i, more, less, bias, direction=direction)
    return out


# ----------------------------------------------------------------------------------------------------
# StereoSet (intrasentence)


def _sentences(where: _Where, row: int, value: Any) -> list[tuple[Any, Any]]:
    """(sentence, gold label) per candidate sentence, from either layout of the sentences field."""
    if value is None:
        return []
    if isinstance(value, Mapping):  # the hub's columns: {"sentence": [...], "gold_label": [...], ...}
        texts, golds = value.get("sentence"), value.get("gold_label")
        for name, xs in (("sentences.sentence", texts), ("sentences.gold_label", golds)):
            if not isinstance(xs, list):
                raise where.row(row, f"field {name} is not a list (got {type(xs).__name__})")
        if len(texts) != len(golds):
            raise where.row(row, f"fields sentences.sentence and sentences.gold_label differ in length "
                                 f"({len(texts)} and {len(golds)})")
        return list(zip(texts, golds))
    if isinstance(value, list):  # the original: [{"sentence": ..., "gold_label": ...}, ...]
        out = []
        for j, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise where.row(row, f"field sentences[{j}] is not an object (got {type(item).__name__})")
            out.append((item.get("sentence"), item.get("gold_label")))
        return out
    raise where.row(row, f"field sentences is not a list of sentences or a dict of columns "
                         f"(got {type(value).__name__})")


def _stereoset(rows: Iterator[tuple[int, Any]], where: _Where, names: dict[str, tuple[str, ...]]) -> StereotypePairs:
    out = StereotypePairs("stereoset", [], [], [], [], 0, {}, [], [])
    for i, row in rows:
        out.n_input = i + 1
        bias = _label(where, i, "bias_type", row.get("bias_type"), None)
        by_label: dict[str | None, list[str | None]] = {}
        for j, (text, gold) in enumerate(_sentences(where, i, row.get("sentences"))):
            text = _opt_str(where, i, f"sentences[{j}].sentence", text)
            gold = _label(where, i, f"sentences[{j}].gold_label", gold, names["gold_label"])
            by_label.setdefault(gold if gold in STEREOSET_GOLD_LABELS else None, []).append(text)
        if None in by_label:
            out._drop(UNKNOWN_GOLD_LABEL)
            continue
        if any(len(texts) > 1 for texts in by_label.values()):
            out._drop(REPEATED_GOLD_LABEL)
            continue
        if "stereotype" not in by_label:
            out._drop(MISSING_STEREOTYPE)
            continue
        if "anti-stereotype" not in by_label:
            out._drop(MISSING_ANTI_STEREOTYPE)
            continue
        if bias is None or not bias.strip():
            out._drop(NO_BIAS_TYPE)
            continue
        stereo, anti = by_label["stereotype"][0], by_label["anti-stereotype"][0]
        problem = _pair_problem(stereo, anti)
        if problem is not None:
            out._drop(problem)
            continue
        unrelated = by_label.get("unrelated", [None])[0]
        out._add(i, stereo, anti, bias, unrelated=unrelated if unrelated and unrelated.strip() else None)
    return out


_BENCHMARK_ROWS = {"crows_pairs": _crows_pairs, "stereoset": _stereoset}
# Where each benchmark's integer labels live in a dataset's features, and their names without features.
_LABEL_FIELDS = {
    "crows_pairs": {"stereo_antistereo": (("stereo_antistereo",), CROWS_PAIRS_DIRECTIONS),
                    "bias_type": (("bias_type",), CROWS_PAIRS_BIAS_TYPES)},
    "stereoset": {"gold_label": (("sentences", "gold_label"), STEREOSET_GOLD_LABELS)},
}


# ----------------------------------------------------------------------------------------------------
# Reading


def _class_names(features: Any, path: tuple[str, ...]) -> tuple[str, ...] | None:
    """The ClassLabel names at `path` in a dataset's features (through Sequence/List wrappers), or None."""
    import datasets

    feat = features
    for key in path:
        while not isinstance(feat, Mapping) and hasattr(feat, "feature"):
            feat = feat.feature
        if not isinstance(feat, Mapping) or key not in feat:
            return None
        feat = feat[key]
    while not isinstance(feat, datasets.ClassLabel) and hasattr(feat, "feature"):
        feat = feat.feature
    return tuple(feat.names) if isinstance(feat, datasets.ClassLabel) else None


def _label_names(benchmark: str, features: Any) -> dict[str, tuple[str, ...]]:
    out = {}
    for field, (path, default) in _LABEL_FIELDS[benchmark].items():
        found = _class_names(features, path) if features is not None else None
        out[field] = found if found is not None else default
    return out


def _read_json(path: str, benchmark: str) -> list[Any]:
    """The rows of a .json / .jsonl file: JSON lines, a JSON list of rows, or StereoSet's dev.json layout."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    if not path.lower().removesuffix(".gz").endswith(".jsonl"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            pass  # JSON lines in a .json file
        else:
            if isinstance(data, list):
                return data
            if isinstance(data, Mapping) and benchmark == "stereoset" and "data" in data:  # dev.json
                part = data["data"].get("intrasentence") if isinstance(data["data"], Mapping) else None
                if not isinstance(part, list):
                    raise ValueError(f"{path}: not in the stereoset dev.json schema: missing columns "
                                     "['data.intrasentence'] (a list of examples)")
                return part
            return [data]  # one JSON line
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {n} is not valid JSON ({err.msg})") from None
    return rows


def _check_rows(rows: list[Any], where: _Where) -> Iterator[tuple[int, Any]]:
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise where.row(i, f"not an object (got {type(row).__name__})")
        yield i, row


def _check_columns(columns: Iterable[str], benchmark: str, where: _Where) -> None:
    have = set(columns)
    missing = [c for c in REQUIRED_COLUMNS[benchmark] if c not in have]
    if missing:
        raise ValueError(f"{where.name}: not in the {benchmark} schema: missing columns {missing} "
                         f"(has {sorted(have)})")


def load_stereotype_pairs(source: Any, benchmark: str, *, split: str | None = None,
                          **load_kwargs: Any) -> StereotypePairs:
    """Read CrowS-Pairs or StereoSet (intrasentence) into StereotypePairs (see the module docstring).

    source: a .csv/.jsonl/.json/.parquet file, a local folder, a hub name (HUB_NAMES), or a loaded
        datasets.Dataset.
    benchmark: "crows_pairs" or "stereoset".
    split: the split to load; default "train" for a file, else "test" (crows_pairs) / "validation"
        (stereoset). **load_kwargs: passed to datasets.load_dataset (not used for .json/.jsonl files).
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")
    if not isinstance(source, (str, os.PathLike)):  # a loaded dataset
        where = _Where(f"{type(source).__name__} given as source")
        _check_columns(_columns(source), benchmark, where)
        names = _label_names(benchmark, getattr(source, "features", None))
        return _BENCHMARK_ROWS[benchmark](_iter_rows(source), where, names)

    path = os.fspath(source)
    where = _Where(path)
    if os.path.isfile(path) and path.lower().endswith(_JSON_SUFFIXES):
        rows = _read_json(path, benchmark)
        _check_columns({k for row in rows if isinstance(row, Mapping) for k in row}, benchmark, where)
        return _BENCHMARK_ROWS[benchmark](_check_rows(rows, where), where, _label_names(benchmark, None))
    if os.path.isfile(path):
        ds = _load(path, None, split or "train", None, dict(load_kwargs))
    elif os.path.isdir(path):
        ds = _load(path, None, split or HUB_SPLITS[benchmark], None, dict(load_kwargs))
    elif path.lower().endswith(_FILE_SUFFIXES) or path.startswith((".", os.sep)):
        raise FileNotFoundError(f"{path}: no such file")
    else:  # a hub name
        ds = _load(path, HUB_CONFIGS[benchmark], split or HUB_SPLITS[benchmark], None, dict(load_kwargs))
    _check_columns(_columns(ds), benchmark, where)
    return _BENCHMARK_ROWS[benchmark](_iter_rows(ds), where, _label_names(benchmark, getattr(ds, "features", None)))
