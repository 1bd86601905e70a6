"""Prompt sets for rollouts: a dataset of prompts, or the prompts of a preference dataset -> one
`PromptSet` of rendered prompt texts, each with a category and the input row it came from.

    from guard.prompts import load_prompts

    red = load_prompts("prompts.jsonl", chat_template=tok)            # prompt [, category] per row
    pku = load_prompts("PKU-Alignment/PKU-SafeRLHF", split="test")     # one prompt per distinct PKU prompt
    hh = load_prompts("Anthropic/hh-rlhf", data_dir="harmless-base")   # transcripts up to the last "Assistant:"

    cmap = pku.category_map()                     # PKU's 19 categories, as for its PreferenceSet
    sample = pku.select(rng.permutation(len(pku))[:512])
    print(len(pku), pku.dropped)                  # every row or pair left out is counted by reason

`source` is what `guard.adapters.load_preferences` accepts (hub name, local folder, path to one
.jsonl/.json/.parquet/.csv file, builder name + `data_files`, or a loaded `datasets.Dataset` /
`IterableDataset`), and it is loaded the same way (`split`, `name`, `data_files`, `**load_kwargs` go to
`datasets.load_dataset`). `chat_template` is a callable(messages) -> str or a tokenizer with
`apply_chat_template` (called with add_generation_prompt=True), as in guard.adapters.

Schemas (`schema="auto"`: the preference schema `adapters.detect_schema` finds; data with a prompt
column that fits none of them is "prompt"):

- "prompt"   prompt-only rows (TRL's prompt-only format): prompt, a string or a list of {"role",
             "content"} messages, and an optional category (string or null). A string is used as is
             without a chat template and as one user message with one; a message list needs a
             template (`NeedsChatTemplate` names the first such row). `category=` labels every row of
             data without a category column; prompt-only data has no dimensions (`dimensions=` fails).
- "hh_rlhf", "pku_saferlhf", "ultrafeedback_binarized", "ultrafeedback", "helpsteer2", "generic":
             the pairs `load_preferences` / `adapters.adapt` builds (same `chat_template`,
             `dimensions`, `category` rules; HH prompts end with the last "\\n\\nAssistant:"), reduced to
             their distinct prompts in order of first appearance; each keeps the category and source
             row of its first pair (for PKU, the harm category of that pair's dimension).

Drop reasons (the keys of `PromptSet.dropped`):
    "empty prompt"      the prompt is empty or whitespace (a message list: no message with content), or
                        renders to whitespace
    "duplicate prompt"  the rendered text equals one kept earlier (the first one is kept)
    "pair <reason>"     preference schemas: a pair the adapter left out ("pair tie", "pair missing
                        category", ...; see guard.adapters), so its prompt was never seen
A field of the wrong type raises ValueError naming its row ("row i: field prompt is not a string or a
list of messages (got int)").

Accounting. For "prompt" every input row is one prompt or one drop:
    len(prompts) + sum(prompts.dropped.values()) == prompts.n_input
For a preference schema every candidate pair of the adapter (see guard.adapters) is one prompt, one
"duplicate prompt"/"empty prompt", or one "pair <reason>", so the same sum equals the adapter's
n_candidates (e.g. two per PKU row), and `n_input` is the number of rows read. A prompt all of whose
pairs were dropped is not in the set. An empty set is not an error here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from guard.adapters import SCHEMAS, CategoryMap, PreferenceSet, adapt, detect_schema, load_preferences
from guard.adapters.fields import _messages, _need_str, _Renderer
from guard.adapters.loading import UnknownSchema, _columns, _iter_rows, _load, row_lines_of
from guard.adapters.pairs import RowError, where_row

PROMPT_SCHEMAS = ("auto", "prompt", *SCHEMAS[1:])

# Drop reasons of the prompts themselves; a preference adapter's reasons come as f"pair {reason}".
EMPTY_PROMPT = "empty prompt"
DUPLICATE_PROMPT = "duplicate prompt"


@dataclass
class PromptSet:
    """Parallel lists of rendered prompts, their categories (None where the data has none) and input rows.

    `dropped` maps a reason to the number of rows (or, for preference data, pairs) left out; `n_input`
    rows were read; `schema` is the schema used. `select` keeps `dropped`, `n_input` and `schema`.
    """

    prompts: list[str]
    categories: list[str | None]
    source_rows: list[int]
    dropped: dict[str, int]
    n_input: int
    schema: str
    dropped_rows: dict[str, list[int]] = field(default_factory=dict)  # reason -> input rows left out for it
    row_lines: list[int] | None = None  # the line each input row starts on, for a file guard read itself

    def __post_init__(self) -> None:
        n = len(self.prompts)
        for name in ("categories", "source_rows"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"PromptSet: {name} has {len(getattr(self, name))} entries, prompts {n}")

    def __len__(self) -> int:
        return len(self.prompts)

    def where(self, row: int) -> str:
        """Input row `row` as a message names it: "line 8" (a file guard read) or "row 7" (0-based)."""
        return where_row(row, self.row_lines)

    def __repr__(self) -> str:
        return (f"PromptSet(schema={self.schema!r}, prompts={len(self)}, n_input={self.n_input}, "
                f"dropped={self.dropped})")

    def _as_pairs(self) -> PreferenceSet:
        """The prompts as a PreferenceSet (prompt texts in every text column), to share its index and category rules."""
        return PreferenceSet(self.prompts, self.prompts, self.prompts, categories=self.categories,
                             source_rows=self.source_rows, schema=self.schema)

    def select(self, indices: Iterable[int] | np.ndarray) -> PromptSet:
        """The prompts at `indices` (ints, or a boolean mask of length len(self)), in that order."""
        picked = self._as_pairs().select(indices)
        return PromptSet(picked.prompts, picked.categories, picked.source_rows, dict(self.dropped),
                         self.n_input, self.schema, {k: list(v) for k, v in self.dropped_rows.items()},
                         self.row_lines)

    def category_map(self) -> CategoryMap:
        """PKU's canonical 19 for PKU-SafeRLHF, else the sorted unique categories present."""
        return self._as_pairs().category_map()

    @classmethod
    def from_preferences(cls, pairs: PreferenceSet) -> PromptSet:
        """The distinct prompts of a PreferenceSet, in first-occurrence order (see the module docstring)."""
        out = cls([], [], [], {f"pair {reason}": n for reason, n in pairs.dropped.items()},
                  pairs.n_input, pairs.schema, {f"pair {reason}": list(rows) for reason, rows in pairs.dropped_rows.items()},
                  pairs.row_lines)
        seen: set[str] = set()
        for prompt, cat, row in zip(pairs.prompts, pairs.categories, pairs.source_rows):
            out._add(prompt, cat, row, seen)
        return out

    def _add(self, text: str, category: str | None, row: int, seen: set[str]) -> None:
        """Keep `text` as the next prompt, or count it as an "empty prompt" (whitespace) or a "duplicate
        prompt" (in `seen`, the texts kept so far)."""
        reason = EMPTY_PROMPT if not text.strip() else DUPLICATE_PROMPT if text in seen else None
        if reason is not None:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            self.dropped_rows.setdefault(reason, []).append(row)
            return
        seen.add(text)
        self.prompts.append(text)
        self.categories.append(category)
        self.source_rows.append(row)


def _prompt_rows(dataset: Any, chat_template: Any, category: str | None) -> PromptSet:
    """Prompt-only data (schema "prompt") -> PromptSet."""
    cols = _columns(dataset)
    if "prompt" not in cols:
        raise ValueError(f"prompt-only data needs a prompt column (got columns {sorted(cols)})")
    if category is not None and "category" in cols:
        raise ValueError("the data has a category column; category= is not accepted")
    render = _Renderer(chat_template)
    out = PromptSet([], [], [], {}, 0, "prompt", row_lines=row_lines_of(dataset))
    seen: set[str] = set()
    try:
        _read_prompt_rows(dataset, render, category, out, seen)
    except RowError as err:
        raise err.locate(out.row_lines) from None
    return out


def _read_prompt_rows(dataset: Any, render: _Renderer, category: str | None, out: PromptSet, seen: set[str]) -> None:
    for i, row in _iter_rows(dataset):
        out.n_input = i + 1
        value = row.get("prompt")
        cat = row.get("category", category)
        if cat is not None:
            _need_str(i, "category", cat)
        if isinstance(value, str):
            empty = not value.strip()
            text = "" if empty else render.text(value)
        else:
            msgs = _messages(i, "prompt", value)
            render.require(i)
            empty = not any(m["content"].strip() for m in msgs)
            text = "" if empty else render.messages(msgs, i)
        out._add(text, cat, i, seen)  # an empty prompt was rendered as ""


def _detect(dataset: Any) -> str:
    """detect_schema's preference schema, else "prompt" for data with a prompt column."""
    try:
        return detect_schema(dataset)
    except UnknownSchema as err:
        if "prompt" in _columns(dataset):
            return "prompt"
        raise UnknownSchema(err.columns, "; prompt-only data needs a prompt column") from None


def load_prompts(source: Any, *, schema: str = "auto", split: str | None = "train", data_files: Any = None,
                 name: str | None = None, chat_template: Any = None, dimensions: Sequence[str] | None = None,
                 category: str | None = None, **load_kwargs: Any) -> PromptSet:
    """Load prompts for rollouts through `datasets.load_dataset` (see the module docstring).

    source, split, data_files, name, **load_kwargs: as for `guard.adapters.load_preferences`.
    schema: one of PROMPT_SCHEMAS; "auto" detects it from the columns.
    chat_template: callable(messages) -> str, or a tokenizer with apply_chat_template.
    dimensions: preference schemas only: the dimensions whose pairs give prompts (None: all).
    category: label for every prompt of data without categories of its own.
    """
    if schema not in PROMPT_SCHEMAS:
        raise ValueError(f"unknown schema {schema!r}; expected one of {PROMPT_SCHEMAS}")
    if category is not None and not isinstance(category, str):
        raise ValueError(f"category must be a string (got {type(category).__name__})")
    if schema == "prompt" and dimensions is not None:
        raise ValueError("prompt-only data has no dimensions; leave dimensions=None")
    is_path = isinstance(source, (str, os.PathLike))
    pref_kwargs = {"chat_template": chat_template, "dimensions": dimensions, "category": category}
    load_args = {"split": split, "data_files": data_files, "name": name, **load_kwargs}
    if is_path and schema not in ("auto", "prompt"):
        return PromptSet.from_preferences(load_preferences(source, schema=schema, **pref_kwargs, **load_args))

    ds = _load(source, name, split, data_files, dict(load_kwargs)) if is_path else source
    if schema == "auto":
        schema = _detect(ds)
    if schema == "prompt":
        if dimensions is not None:
            raise ValueError("prompt-only data has no dimensions; leave dimensions=None")
        return _prompt_rows(ds, chat_template, category)
    if is_path and schema == "hh_rlhf":
        # load_preferences reads HH's subset category from the source and loads files of several subsets
        # one by one; load through it again (datasets' cache makes the second load cheap).
        return PromptSet.from_preferences(load_preferences(source, schema=schema, **pref_kwargs, **load_args))
    return PromptSet.from_preferences(adapt(ds, schema, **pref_kwargs))
