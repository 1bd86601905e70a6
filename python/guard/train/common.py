"""What every training recipe shares: the run directory (config, metrics, resume), preference data from a
file or hub name down to tokenized pairs with every set-aside row counted, the fixed-seed held-out split,
the epoch order, the learning-rate schedule and the command line's error handling.

The recipes (rm.py, and the preference and PPO recipes after it) compose these pieces in a loop they
spell out themselves; nothing here hides a training step.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from guard import data as gdata
from guard.adapters import CategoryMap, PreferenceSet, load_preferences
from guard.config import ConfigError

#: The category given to every pair of data that has none (a single-category run: no fairness term).
NO_CATEGORY = "all"


# ----------------------------------------------------------------------------------------------------
# Command line


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a recipe's main; a user-facing problem (bad config, bad data, missing model) ends with
    "error: ..." on stderr and exit status 2 instead of a traceback. GUARD_DEBUG=1 shows the traceback."""
    try:
        return main(argv)
    except (ConfigError, FileNotFoundError) as err:
        if os.environ.get("GUARD_DEBUG"):
            traceback.print_exc()
        message = str(err) if not isinstance(err, FileNotFoundError) or not err.filename else (
            f"{err.strerror or 'not found'}: {err.filename}")
        print(f"error: {message}", file=sys.stderr)
        return 2


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------
# Run directory


def prepare_run_dir(path: str | os.PathLike, *, resume: bool, overwrite: bool, is_main: bool = True) -> Path:
    """Create the output directory. A directory that already holds a run is an error unless the run is
    resumed (--resume) or replaced (--overwrite), so a finished run is never clobbered by accident."""
    run_dir = Path(path)
    has_run = (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()
    if has_run and not resume:
        if not overwrite:
            raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite "
                              "to replace it")
        if is_main:
            for child in run_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step. Resuming from a checkpoint at step s drops the
    lines past s (written after the checkpoint, before the run was stopped) so the file reads as one run."""

    def __init__(self, path: Path, *, resume_step: int | None = None, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        if resume_step is not None and path.exists():
            kept = [row for row in read_jsonl(path) if row.get("step", 0) <= resume_step]
            _write_lines(path, [json.dumps(row) for row in kept])
        elif resume_step is None and path.exists():
            path.unlink()

    def log(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    """JSON through a temporary name, so a kill never leaves half a file."""
    _write_lines(path, [json.dumps(obj, indent=2)])


# ----------------------------------------------------------------------------------------------------
# Preference data


def _first_bad_json_line(path: Path) -> str | None:
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                return f"{path} line {number}: not valid JSON ({err.msg} at column {err.colno})"
            if not isinstance(row, dict):
                return f"{path} line {number}: expected a JSON object, got {type(row).__name__}"
    return None


def load_pair_set(source: str, *, split: str = "train", schema: str = "auto", dimensions: Sequence[str] | None = None,
                  chat_template=None, what: str = "data") -> PreferenceSet:
    """A PreferenceSet from a local file/folder or a hub dataset name, with every failure turned into one
    clear ConfigError naming the source (a malformed JSON line by its number)."""
    if not source:
        raise ConfigError(f"no {what} given (--{what.replace('_', '-')} PATH_OR_HUB_NAME)")
    path = Path(source).expanduser()
    looks_local = path.exists() or source.startswith((".", "/", "~")) or path.suffix in (
        ".jsonl", ".json", ".parquet", ".csv")
    if looks_local and not path.exists():
        raise ConfigError(f"{what} not found: {source} (no such file or directory)")
    if path.is_file() and path.suffix in (".jsonl", ".json") and path.stat().st_size == 0:
        raise ConfigError(f"{what} {source} is empty: no preference pairs to train on")
    if path.is_file() and path.suffix == ".jsonl":  # name the bad line before datasets' parser gets to it
        bad = _first_bad_json_line(path)
        if bad:
            raise ConfigError(bad)
    try:
        pairs = load_preferences(str(path) if looks_local else source, schema=schema, split=split,
                                 dimensions=dimensions, chat_template=chat_template)
    except Exception as err:  # noqa: BLE001 - every loader failure becomes one readable message
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"cannot read {what} {source}: {reason}") from err
    if len(pairs) == 0:
        raise ConfigError(f"{what} {source} has no usable preference pairs (rows read: {pairs.n_input}; "
                          f"set aside: {pairs.dropped or 'none'})")
    return pairs


def load_margins(source: str, pairs: PreferenceSet, column: str, *, split: str = "train") -> np.ndarray:
    """The per-pair margin column (float) of generic-schema data, aligned with `pairs` by source row."""
    import datasets

    path = Path(source).expanduser()
    if path.is_file():
        builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(path.suffix)
        table = datasets.load_dataset(builder, data_files=str(path), split=split)
    else:
        table = datasets.load_dataset(source, split=split)
    if column not in table.column_names:
        raise ConfigError(f"margin column {column!r} is not in {source} (columns: {table.column_names})")
    values = table[column]
    out = np.empty(len(pairs), dtype=np.float32)
    for k, row in enumerate(pairs.source_rows):
        value = values[row]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{source} row {row}: margin column {column!r} is not a finite number (got {value!r})")
        out[k] = value
    return out


@dataclass
class PairData:
    """Tokenized preference pairs ready for batching: row k of `encoded` is pair k, with its category id and
    margin. `set_aside` counts every input row or pair left out, by stage and reason."""

    encoded: gdata.EncodedPairs
    categories: np.ndarray  # int64 [n]: index into category_names
    category_names: tuple[str, ...]
    margins: np.ndarray | None  # float32 [n] or None
    set_aside: dict[str, int] = field(default_factory=dict)
    rows_read: int = 0

    def __len__(self) -> int:
        return len(self.encoded)


def category_map(train: PreferenceSet, order: Sequence[str] | None) -> CategoryMap:
    """The category names of a run: `order` when given (data outside it is an error), else those of the
    training data (PKU-SafeRLHF: its canonical 19); data without categories gets the single NO_CATEGORY."""
    if order:
        return CategoryMap(order)
    if all(c is None for c in train.categories):
        return CategoryMap([NO_CATEGORY])
    if any(c is None for c in train.categories):
        row = train.source_rows[next(k for k, c in enumerate(train.categories) if c is None)]
        raise ConfigError(f"training data row {row}: no category, while other rows have one")
    return train.category_map()


def tokenize_pairs(pairs: PreferenceSet, tok: gdata.Tokenizer, cmap: CategoryMap, *, max_length: int,
                   max_prompt_length: int | None, eos_token_id: int | None, margins: np.ndarray | None = None,
                   what: str = "data") -> PairData:
    """Categories -> ids (an unknown category is an error naming its row), exact dedup of (prompt, chosen,
    rejected) keeping first occurrences, and tokenization with rows that cannot be encoded set aside by
    reason. Each sequence is prompt + response (+ EOS), as guard.data.encode_pairs builds it."""
    set_aside = {f"dropped by the {pairs.schema} adapter: {reason}": n for reason, n in pairs.dropped.items() if n}
    labels = [NO_CATEGORY if c is None and len(cmap) == 1 and NO_CATEGORY in cmap else c for c in pairs.categories]
    unknown = next((k for k, label in enumerate(labels) if label not in cmap), None)
    if unknown is not None:  # named by its row in the input, not its position after the adapter
        raise ConfigError(f"{what} row {pairs.source_rows[unknown]}: unknown category {labels[unknown]!r}; "
                          f"known: {list(cmap.names)}")
    category_ids = cmap.ids(labels)

    # A pair is its prompt with both responses; the length prefix makes (chosen, rejected) -> key one to one.
    keep = gdata.dedup(pairs.prompts, [f"{len(c)}:{c}{r}" for c, r in zip(pairs.chosen, pairs.rejected)])
    if len(keep) < len(pairs):
        set_aside["duplicate pairs removed"] = len(pairs) - len(keep)
    kept = pairs.select(keep)
    encoded = gdata.encode_pairs(tok, kept.prompts, kept.chosen, kept.rejected, max_length=max_length,
                                 max_prompt_length=max_prompt_length, eos_token_id=eos_token_id, errors="skip")
    for reason, rows in encoded.dropped.items():
        if rows:
            set_aside[f"tokenization: {reason}"] = len(rows)
    rows = keep[encoded.kept]
    if len(rows) == 0:
        raise ConfigError(f"{what}: no pair survived tokenization (set aside: {set_aside})")
    return PairData(encoded=encoded, categories=category_ids[rows], category_names=cmap.names,
                    margins=None if margins is None else margins[rows], set_aside=set_aside,
                    rows_read=int(pairs.n_input or 0))


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed-seed random split of range(n): (train rows, held-out rows), each sorted."""
    if not 0 < fraction < 1:
        raise ConfigError(f"eval_fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng([seed, 0xE7A1]).permutation(n)
    n_eval = max(1, int(round(fraction * n)))
    if n - n_eval < 1:
        raise ConfigError(f"only {n} pairs: nothing left to train on after holding out {n_eval} for evaluation")
    return np.sort(order[n_eval:]), np.sort(order[:n_eval])


def subset(data: PairData, rows: np.ndarray) -> PairData:
    """The pairs at `rows` as a PairData of their own (set-aside counts kept)."""
    enc = data.encoded

    def texts(part: gdata.EncodedTexts) -> gdata.EncodedTexts:
        starts, ends = part.offsets[rows], part.offsets[rows + 1]
        position, offsets = gdata.packed_positions(ends - starts)
        ids = part.ids[np.repeat(starts, ends - starts) + position]
        return gdata.EncodedTexts(ids, offsets.astype(np.int64), part.kept[rows], part.dropped)

    encoded = gdata.EncodedPairs(texts(enc.chosen), texts(enc.rejected), enc.chosen_prompt_lengths[rows],
                                 enc.rejected_prompt_lengths[rows], enc.kept[rows], enc.dropped)
    return PairData(encoded, data.categories[rows], data.category_names,
                    None if data.margins is None else data.margins[rows], dict(data.set_aside), data.rows_read)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the n training pairs in one epoch: a permutation that depends only on (seed, epoch), so
    a resumed run visits the same batches as an uninterrupted one."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def lr_factor(schedule: str, step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier at `step`: linear warmup, then constant, linear or cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ConfigError(f"unknown lr schedule {schedule!r}; expected constant, linear or cosine")
