"""From a source to a PreferenceSet: `load_preferences` (through datasets.load_dataset), `adapt` (an already
loaded dataset), schema detection from the columns, and each schema's reader."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from guard.adapters.fields import _Renderer
from guard.adapters.files import csv_record_lines, is_json_file, read_json_rows
from guard.adapters.generic import _generic_rows
from guard.adapters.helpsteer2 import HELPSTEER2_ATTRIBUTES, _helpsteer2_rows
from guard.adapters.hh_rlhf import _hh_rows, hh_category
from guard.adapters.pairs import EMPTY_RESPONSE, IDENTICAL_RESPONSES, SCHEMAS, Drop, PreferenceSet, RowError
from guard.adapters.pku_saferlhf import PKU_SAFERLHF_DIMENSIONS, _pku_rows
from guard.adapters.ultrafeedback import ULTRAFEEDBACK_ASPECTS, _ultrafeedback_rows
from guard.adapters.ultrafeedback_binarized import _ultrafeedback_binarized_rows


_FILE_BUILDERS = {
    ".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json",
    ".parquet": "parquet", ".csv": "csv", ".csv.gz": "csv", ".arrow": "arrow",
}


_ADAPTERS = {
    "hh_rlhf": _hh_rows,
    "pku_saferlhf": _pku_rows,
    "ultrafeedback": _ultrafeedback_rows,
    "helpsteer2": _helpsteer2_rows,
    "ultrafeedback_binarized": _ultrafeedback_binarized_rows,
    "generic": _generic_rows,
}


# Each schema's dimensions (None: the schema has none; generic reads a column).
_DIMENSIONS = {"pku_saferlhf": PKU_SAFERLHF_DIMENSIONS, "ultrafeedback": ULTRAFEEDBACK_ASPECTS,
               "helpsteer2": HELPSTEER2_ATTRIBUTES}


def _columns(dataset: Any) -> list[str]:
    cols = getattr(dataset, "column_names", None)
    if cols is None:  # an IterableDataset with unknown features: look at the first row
        first = next(iter(dataset), None)
        cols = list(first) if first is not None else []
    return list(cols)


def _is_text_column(dataset: Any, column: str) -> bool | None:
    """True / False when the column is known to hold strings / something else; None if unknown."""
    import datasets

    features = getattr(dataset, "features", None)
    if features is not None and column in features:
        feat = features[column]
        return isinstance(feat, datasets.Value) and feat.dtype in ("string", "large_string")
    first = next(iter(dataset), None)
    return None if first is None else isinstance(first.get(column), str)


class UnknownSchema(ValueError):
    """Columns that match no schema. `describe(how)` words the error for where the schema is chosen:
    "schema=" (the library) or "--schema NAME" (the command line)."""

    def __init__(self, columns: list[str], note: str = ""):
        self.columns, self.note = columns, note
        super().__init__(self.describe("schema="))

    def describe(self, how: str) -> str:
        return (f"cannot tell the schema from the columns {self.columns}; expected one of: "
                "hh_rlhf (chosen, rejected), pku_saferlhf (prompt, response_0, response_1, "
                "better_response_id, safer_response_id, ...), ultrafeedback_binarized (prompt, chosen, "
                "rejected, score_chosen, score_rejected), ultrafeedback (instruction, completions), "
                "helpsteer2 (prompt, response, " + ", ".join(HELPSTEER2_ATTRIBUTES) + "), "
                f"generic (prompt, chosen, rejected){self.note}; or pass {how}")


def detect_schema(dataset: Any) -> str:
    """The schema name whose columns `dataset` (a datasets.Dataset or IterableDataset) has."""
    cols = set(_columns(dataset))
    if {"prompt", "response_0", "response_1", "better_response_id", "safer_response_id"} <= cols:
        return "pku_saferlhf"
    if {"instruction", "completions"} <= cols:
        return "ultrafeedback"
    if {"prompt", "response", *HELPSTEER2_ATTRIBUTES} <= cols:
        return "helpsteer2"
    if {"chosen", "rejected", "score_chosen", "score_rejected"} <= cols:
        return "ultrafeedback_binarized"
    if {"chosen", "rejected"} <= cols and "prompt" not in cols:
        return "generic" if _is_text_column(dataset, "chosen") is False else "hh_rlhf"
    if {"prompt", "chosen", "rejected"} <= cols:
        return "generic"
    raise UnknownSchema(sorted(cols))


def _iter_rows(dataset: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row index, row dict) in order, read in batches (Dataset or IterableDataset)."""
    i = 0
    for batch in dataset.iter(batch_size=1024):
        keys = list(batch)
        n = len(batch[keys[0]]) if keys else 0
        for j in range(n):
            yield i, {k: batch[k][j] for k in keys}
            i += 1


def adapt(dataset: Any, schema: str = "auto", *, chat_template: Any = None,
          dimensions: Sequence[str] | None = None, category: str | None = None) -> PreferenceSet:
    """A loaded `datasets.Dataset` / `IterableDataset` -> PreferenceSet (see the module docstring).

    category: a label for every pair of a schema that has no category of its own (hh_rlhf, ultrafeedback,
    ultrafeedback_binarized, helpsteer2, generic data without a category column).
    """
    if schema not in SCHEMAS:
        raise ValueError(f"unknown schema {schema!r}; expected one of {SCHEMAS}")
    if schema == "auto":
        schema = detect_schema(dataset)
    if category is not None:
        if not isinstance(category, str):
            raise ValueError(f"category must be a string (got {type(category).__name__})")
        if schema == "pku_saferlhf":
            raise ValueError("pku_saferlhf takes its categories from the data; category= is not accepted")
        if schema == "generic" and "category" in _columns(dataset):
            raise ValueError("the data has a category column; category= is not accepted")
    dims = _resolve_dimensions(schema, dimensions, dataset)
    render = _Renderer(chat_template)

    counter = {"rows": 0}

    def rows():
        for i, row in _iter_rows(dataset):
            counter["rows"] = i + 1
            yield i, row

    row_lines = row_lines_of(dataset)
    out = PreferenceSet([], [], [], dropped={}, n_input=0, n_candidates=0, schema=schema, row_lines=row_lines)
    n_candidates = 0

    def drop(row: int, reason: str) -> None:
        out.dropped[reason] = out.dropped.get(reason, 0) + 1
        out.dropped_rows.setdefault(reason, []).append(row)

    try:
        for item in _ADAPTERS[schema](rows(), render, category, dims):
            n_candidates += 1
            if isinstance(item, Drop):
                drop(item.row, item.reason)
                continue
            row, prompt, chosen, rejected, cat, dim = item
            if not chosen.strip() or not rejected.strip():
                drop(row, EMPTY_RESPONSE)
                continue
            if chosen == rejected:
                drop(row, IDENTICAL_RESPONSES)
                continue
            out.prompts.append(prompt)
            out.chosen.append(chosen)
            out.rejected.append(rejected)
            out.categories.append(cat)
            out.dimensions.append(dim)
            out.source_rows.append(row)
    except RowError as err:
        raise err.locate(row_lines) from None
    out.n_input = counter["rows"]
    out.n_candidates = n_candidates
    return out


def row_lines_of(dataset: Any) -> list[int] | None:
    """The line each row of `dataset` starts on, when guard read it from a text file (see _load)."""
    return getattr(dataset, "row_lines", None)


def _resolve_dimensions(schema: str, dimensions: Sequence[str] | None, dataset: Any):
    if dimensions is not None:
        if isinstance(dimensions, str):
            dimensions = [dimensions]
        dimensions = list(dimensions)
        if not dimensions:
            raise ValueError("dimensions= is empty")
        if len(set(dimensions)) != len(dimensions):
            raise ValueError(f"dimensions repeat: {dimensions}")
    known = _DIMENSIONS.get(schema)
    if known is not None:
        if dimensions is None:
            return list(known)
        unknown = [d for d in dimensions if d not in known]
        if unknown:
            raise ValueError(f"unknown dimensions {unknown} for {schema}; expected some of {list(known)}")
        return dimensions
    if dimensions is None:
        return None
    if schema == "generic" and "dimension" in _columns(dataset):
        return dimensions
    raise ValueError(f"{schema} data has no dimensions (generic data needs a dimension column); "
                     "leave dimensions=None")


def _split_files(data_files: Any, split: str | None) -> list[str] | None:
    """The file list that `split` reads from `data_files`, or None if it is not a plain list of paths."""
    if isinstance(data_files, Mapping):
        data_files = data_files.get(split) if split in data_files else None
    if isinstance(data_files, (str, os.PathLike)):
        return [os.fspath(data_files)]
    if isinstance(data_files, (list, tuple)) and all(isinstance(f, (str, os.PathLike)) for f in data_files):
        return [os.fspath(f) for f in data_files]
    return None


def _builder_for_file(path: str) -> str:
    lower = path.lower()
    for ext in sorted(_FILE_BUILDERS, key=len, reverse=True):
        if lower.endswith(ext):
            return _FILE_BUILDERS[ext]
    raise ValueError(f"{path}: cannot tell the file format from its name; expected one of "
                     f"{sorted(_FILE_BUILDERS)}, or pass a builder name (\"json\", \"parquet\", \"csv\") "
                     "with data_files=")


def _load(source: Any, name: str | None, split: str | None, data_files: Any, load_kwargs: dict) -> Any:
    """The table `source` names: a local JSON / JSON-lines file is read by guard itself (guard.adapters.files:
    every row keeps its line, each value its own type); anything else goes through datasets.load_dataset, a
    CSV file with the line of each record attached as `row_lines`."""
    import datasets

    lines = None
    if isinstance(source, os.PathLike) or (isinstance(source, str) and os.path.isfile(source)):
        path = os.fspath(source)
        if os.path.isfile(path):
            if data_files is not None:
                raise ValueError("source is a file; do not pass data_files= as well")
            if is_json_file(path) and not load_kwargs.get("streaming"):
                if split not in (None, "train"):
                    raise ValueError(f"a single file holds one split, 'train' (got split={split!r})")
                return read_json_rows(path)
            source, data_files = _builder_for_file(path), path
            if source == "csv":
                lines = csv_record_lines(path)
        else:
            source = path
    if source == "csv":
        # Text data: an empty cell is an empty string and "NA"/"None" are words, not missing values.
        load_kwargs = {"keep_default_na": False, **load_kwargs}
    ds = datasets.load_dataset(source, name, split=split, data_files=data_files, **load_kwargs)
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise ValueError(f"load_dataset returned several splits {list(ds)}; pass split=")
    if lines is not None and len(lines) == len(ds):
        ds.row_lines = lines
    return ds


def load_preferences(source: Any, *, schema: str = "auto", split: str | None = "train", data_files: Any = None,
                     name: str | None = None, chat_template: Any = None, dimensions: Sequence[str] | None = None,
                     category: str | None = None, **load_kwargs: Any) -> PreferenceSet:
    """Load a preference dataset through `datasets.load_dataset` and adapt it to a PreferenceSet.

    source: a hub name ("Anthropic/hh-rlhf"), a local folder, a builder name ("json", "parquet", "csv")
        used with `data_files`, a path to one .jsonl/.json/.parquet/.csv file, or an already loaded
        datasets.Dataset / IterableDataset.
    schema: one of SCHEMAS; "auto" detects it from the columns.
    split, data_files, name, **load_kwargs (data_dir=, revision=, streaming=, cache_dir=, ...): passed
        to datasets.load_dataset unchanged (split= must name one split).
    chat_template: callable(messages) -> str, or a tokenizer with apply_chat_template.
    dimensions: the dimensions to keep (PKU: "helpful", "harmless"; UltraFeedback: its four aspects;
        HelpSteer2: its five attributes; generic: values of the dimension column). None keeps all.
    category: label for every pair of a schema without categories; for hh_rlhf it overrides the subset.
    """
    if schema not in SCHEMAS:
        raise ValueError(f"unknown schema {schema!r}; expected one of {SCHEMAS}")
    kwargs = {"chat_template": chat_template, "dimensions": dimensions}
    if not isinstance(source, (str, os.PathLike)):  # a loaded dataset
        return adapt(source, schema, category=category, **kwargs)

    # HH-RLHF files from several subsets: one load per file, so each pair keeps its subset's category.
    files = _split_files(data_files, split)
    if category is None and schema in ("auto", "hh_rlhf") and files and len(files) > 1:
        per_file = [hh_category(f) for f in files]
        if None not in per_file and len(set(per_file)) > 1:
            parts = []
            for f, cat in zip(files, per_file):
                one = {split: f} if isinstance(data_files, Mapping) else f
                ds = _load(source, name, split, one, dict(load_kwargs))
                parts.append(adapt(ds, schema, category=cat, **kwargs))
            return PreferenceSet.concat(parts)

    ds = _load(source, name, split, data_files, dict(load_kwargs))
    if schema == "auto":
        schema = detect_schema(ds)
    if schema == "hh_rlhf" and category is None:
        category = _hh_source_category(source, name, split, data_files, load_kwargs.get("data_dir"))
    return adapt(ds, schema, category=category, **kwargs)


def _hh_source_category(source: Any, name: str | None, split: str | None, data_files: Any,
                        data_dir: Any) -> str | None:
    """The hh-rlhf subset category named by data_dir, name, data_files (if they agree) or the source path."""
    for hint in (data_dir, name):
        cat = hh_category(hint) if isinstance(hint, (str, os.PathLike)) else None
        if cat is not None:
            return cat
    files = _split_files(data_files, split)
    if files:
        cats = {hh_category(f) for f in files}
        if len(cats) == 1:
            cat = cats.pop()
            if cat is not None:
                return cat
    return hh_category(source) if isinstance(source, (str, os.PathLike)) else None
