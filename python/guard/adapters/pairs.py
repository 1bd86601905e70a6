"""The common output of every dataset adapter: PreferenceSet (parallel lists of text pairs, their categories,
dimensions, source rows and every dropped candidate by reason), CategoryMap (category name <-> id), the drop
reasons and the schema names. See guard/adapters/__init__.py for the whole picture."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


SCHEMAS = ("auto", "hh_rlhf", "pku_saferlhf", "ultrafeedback_binarized", "ultrafeedback", "helpsteer2", "generic")


# Drop reasons (the keys of PreferenceSet.dropped).
DIMENSION_NOT_SELECTED = "dimension not selected"


SINGLE_RESPONSE = "single response"


TIE = "tie"


MISSING_CATEGORY = "missing category"


NO_ASSISTANT_TURN = "no assistant turn"


PROMPTS_DIFFER = "prompts differ"


EMPTY_RESPONSE = "empty response"


IDENTICAL_RESPONSES = "identical responses"


class RowError(ValueError):
    """A row of the input that cannot be read, by its position: the 0-based `row` of the table, and, when the
    table came from a text file guard read itself (guard.adapters.files), the 1-based `line` it starts on,
    which the message then names instead ("line 8: field chosen is not a string")."""

    def __init__(self, row: int | None, reason: str, line: int | None = None):
        self.row, self.reason, self.line = row, reason, line
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"line {self.line}: " if self.line is not None else f"row {self.row}: " if self.row is not None else ""
        return where + self.reason

    def locate(self, row_lines) -> RowError:
        """Name the row by its line in `row_lines` (a table's line per row), when there is one."""
        if row_lines is not None and self.row is not None and 0 <= self.row < len(row_lines):
            self.line = row_lines[self.row]
            self.args = (self._message(),)
        return self


def where_row(row: int, row_lines) -> str:
    """How a message names input row `row`: "line 8" (its line in the file) or "row 7" (0-based, no file)."""
    return f"line {row_lines[row]}" if row_lines is not None and 0 <= row < len(row_lines) else f"row {row}"


class Drop(tuple):
    """What a schema's reader yields for a candidate pair it leaves out: (input row, reason)."""

    def __new__(cls, row: int, reason: str):
        return super().__new__(cls, (row, reason))

    @property
    def row(self) -> int:
        return self[0]

    @property
    def reason(self) -> str:
        return self[1]


class CategoryMap:
    """A fixed, ordered list of category names; a name's id is its position.

    Build it once (`from_labels` on the training set, or an explicit order such as
    `PKU_SAFERLHF_CATEGORIES`), save it beside the run, and load it for evaluation so ids never shift.
    """

    def __init__(self, names: Iterable[str]):
        names = tuple(names)
        for k, name in enumerate(names):
            if not isinstance(name, str):
                raise ValueError(f"category name {k} is not a string (got {type(name).__name__})")
        index = {name: k for k, name in enumerate(names)}
        if len(index) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"category names repeat: {dupes}")
        self._names = names
        self._index = index

    @classmethod
    def from_labels(cls, labels: Iterable[str | None], order: Sequence[str] | None = None) -> CategoryMap:
        """Sorted unique labels (None entries skipped), or `order` as given, which must cover every label."""
        seen = {label for label in labels if label is not None}
        if order is None:
            bad = [label for label in seen if not isinstance(label, str)]
            if bad:
                raise ValueError(f"category labels must be strings (got {type(bad[0]).__name__})")
            return cls(sorted(seen))
        cmap = cls(order)
        missing = sorted(str(label) for label in seen if label not in cmap._index)
        if missing:
            raise ValueError(f"labels not in the given order: {missing}")
        return cmap

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, label: object) -> bool:
        return label in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CategoryMap) and other._names == self._names

    def __hash__(self) -> int:
        return hash(self._names)

    def __repr__(self) -> str:
        return f"CategoryMap({list(self._names)!r})"

    def id(self, label: str) -> int:
        return int(self.ids([label])[0])

    def ids(self, labels: Iterable[str | None]) -> np.ndarray:
        """int64 ids, one per label; an unknown or missing label raises ValueError naming its row."""
        labels = list(labels)
        out = np.empty(len(labels), dtype=np.int64)
        for row, label in enumerate(labels):
            k = self._index.get(label) if isinstance(label, str) else None
            if k is None:
                raise ValueError(f"row {row}: unknown category {label!r}; known: {_preview(self._names)}")
            out[row] = k
        return out

    def to_dict(self) -> dict[str, int]:
        return dict(self._index)

    def save(self, path: str | os.PathLike) -> None:
        """Write the map as JSON (through a temporary name, then renamed)."""
        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"format": "guard.CategoryMap", "version": 1, "names": list(self._names)}, f,
                      indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CategoryMap:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("format") != "guard.CategoryMap" or not isinstance(
            data.get("names"), list
        ):
            raise ValueError(f"{os.fspath(path)} is not a saved guard CategoryMap")
        return cls(data["names"])


def _preview(names: Sequence[Any], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} in all)"


def index_list(indices: Iterable[int] | np.ndarray, n: int) -> list[int]:
    """The positions `indices` picks from a set of n items: integers as they are, or a boolean mask of length n."""
    idx = np.asarray(indices if not isinstance(indices, range) else list(indices))
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise ValueError(f"boolean mask has shape {idx.shape}, expected ({n},)")
        idx = np.flatnonzero(idx)
    elif idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"indices must be integers or a boolean mask (got dtype {idx.dtype})")
    return [int(k) for k in idx.reshape(-1)]


@dataclass
class PreferenceSet:
    """Parallel lists of preference pairs plus where they came from and what was left out.

    prompts[k] + chosen[k] / prompts[k] + rejected[k] are the two texts of pair k; categories[k] and
    dimensions[k] are None where the schema has none. `dropped` maps a reason to the number of
    candidate pairs removed for it and `dropped_rows` to their input rows; `n_input` rows were read and
    `n_candidates` pairs considered, with len(self) + sum(dropped.values()) == n_candidates (see the module
    docstring). `row_lines[r]` is the 1-based line input row r starts on when the rows came from a text file
    guard read itself (None otherwise): `where(r)` names a row for a message, "line 8" or "row 7". `select`
    and `by_dimension` keep `dropped`, `n_input` and `n_candidates` of the load they came from.
    """

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    categories: list[str | None] | None = None
    dimensions: list[str | None] | None = None
    source_rows: list[int] | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    n_input: int | None = None
    n_candidates: int | None = None
    schema: str = "generic"
    dropped_rows: dict[str, list[int]] = field(default_factory=dict)
    row_lines: list[int] | None = None

    def __post_init__(self) -> None:
        n = len(self.prompts)
        if self.categories is None:
            self.categories = [None] * n
        if self.dimensions is None:
            self.dimensions = [None] * n
        if self.source_rows is None:
            self.source_rows = list(range(n))
        for name in ("chosen", "rejected", "categories", "dimensions", "source_rows"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"PreferenceSet: {name} has {len(getattr(self, name))} entries, prompts {n}")
        if self.n_candidates is None:
            self.n_candidates = n + sum(self.dropped.values())
        if self.n_input is None:
            self.n_input = self.n_candidates

    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        return (f"PreferenceSet(schema={self.schema!r}, pairs={len(self)}, n_input={self.n_input}, "
                f"dropped={self.dropped})")

    def where(self, row: int) -> str:
        """Input row `row` as a message names it: "line 8" (a file guard read) or "row 7" (0-based)."""
        return where_row(row, self.row_lines)

    @property
    def dimension_names(self) -> list[str]:
        """The dimensions present, in order of first appearance (None left out)."""
        return list(dict.fromkeys(d for d in self.dimensions if d is not None))

    def select(self, indices: Iterable[int] | np.ndarray) -> PreferenceSet:
        """The pairs at `indices` (ints, or a boolean mask of length len(self)), in that order."""
        picked = index_list(indices, len(self))

        def take(xs: list) -> list:
            return [xs[k] for k in picked]

        return PreferenceSet(
            prompts=take(self.prompts), chosen=take(self.chosen), rejected=take(self.rejected),
            categories=take(self.categories), dimensions=take(self.dimensions),
            source_rows=take(self.source_rows), dropped=dict(self.dropped), n_input=self.n_input,
            n_candidates=self.n_candidates, schema=self.schema,
            dropped_rows={k: list(v) for k, v in self.dropped_rows.items()}, row_lines=self.row_lines,
        )

    def by_dimension(self, name: str) -> PreferenceSet:
        """The pairs of one dimension (e.g. "harmless", "helpfulness"); ValueError if there are none."""
        keep = [k for k, d in enumerate(self.dimensions) if d == name]
        if not keep:
            raise ValueError(f"no pairs with dimension {name!r}; present: {self.dimension_names}")
        return self.select(keep)

    def category_map(self) -> CategoryMap:
        """PKU's canonical 19 for PKU-SafeRLHF, else the sorted unique categories present."""
        if self.schema == "pku_saferlhf":
            from guard.adapters.pku_saferlhf import PKU_SAFERLHF_CATEGORIES

            return CategoryMap.from_labels(self.categories, order=PKU_SAFERLHF_CATEGORIES)
        return CategoryMap.from_labels(self.categories)

    def category_ids(self, mapping: CategoryMap | Mapping[str, int]) -> np.ndarray:
        """int64 category id per pair; a pair whose category is missing or unknown raises ValueError."""
        if isinstance(mapping, CategoryMap):
            return mapping.ids(self.categories)
        out = np.empty(len(self), dtype=np.int64)
        for row, label in enumerate(self.categories):
            if not isinstance(label, str) or label not in mapping:
                raise ValueError(f"row {row}: unknown category {label!r}; known: {_preview(list(mapping))}")
            out[row] = int(mapping[label])
        return out

    def to_dict(self) -> dict[str, list]:
        """Columns as a dict of lists (for `datasets.Dataset.from_dict`, pandas, json)."""
        return {"prompt": list(self.prompts), "chosen": list(self.chosen), "rejected": list(self.rejected),
                "category": list(self.categories), "dimension": list(self.dimensions),
                "source_row": list(self.source_rows)}

    @classmethod
    def concat(cls, sets: Sequence[PreferenceSet]) -> PreferenceSet:
        """One set from several loads, in order; source rows are offset as if the inputs were one table."""
        if not sets:
            return cls([], [], [], dropped={}, n_input=0, n_candidates=0)
        out = cls([], [], [], dropped={}, n_input=0, n_candidates=0,
                  schema=sets[0].schema if all(s.schema == sets[0].schema for s in sets) else "mixed",
                  row_lines=[] if all(s.row_lines is not None for s in sets) else None)
        for s in sets:
            out.prompts += s.prompts
            out.chosen += s.chosen
            out.rejected += s.rejected
            out.categories += s.categories
            out.dimensions += s.dimensions
            out.source_rows += [r + out.n_input for r in s.source_rows]
            for reason, count in s.dropped.items():
                out.dropped[reason] = out.dropped.get(reason, 0) + count
            for reason, rows in s.dropped_rows.items():
                out.dropped_rows.setdefault(reason, []).extend(r + out.n_input for r in rows)
            if out.row_lines is not None:
                out.row_lines += s.row_lines
            out.n_input += s.n_input
            out.n_candidates += s.n_candidates
        return out
