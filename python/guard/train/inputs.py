"""A run's inputs: preference pairs (or prompts) from a file, folder or hub dataset name, down to token ids,
category ids and margins, with every row set aside counted by reason, and the fixed-seed held-out split.

    data = load_train_eval(cfg, tok, eos_token_id)     # TrainEval(train=PairData, eval=PairData, set_aside)
    prompts = tokenize_prompts(prompt_set, tok, cmap, max_prompt_length=512, what="prompts")
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from guard import data as gdata
from guard.adapters import CategoryMap, NeedsChatTemplate, PreferenceSet, load_preferences
from guard.config import ConfigError

#: The category given to every pair of data that has none (a single-category run: no fairness term).
NO_CATEGORY = "all"


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
                  chat_template=None, tokenizer_name: str = "the tokenizer", what: str = "data",
                  loader: Callable = load_preferences, items: str = "preference pairs"):
    """A PreferenceSet (or what `loader` returns: guard.prompts.load_prompts gives a PromptSet of `items`
    "prompts") from a local file/folder or a hub dataset name, with every failure turned into one clear
    ConfigError naming the source (a malformed JSON line by its number). Plain-text prompts are used as they
    are; `chat_template` (a tokenizer with one, or None) renders conversational data only. A dimension asked
    for in `dimensions` that has no data is an error."""
    if not source:
        raise ConfigError(f"no {what} given (--{what.replace('_', '-')} PATH_OR_HUB_NAME)")
    path = Path(source).expanduser()
    looks_local = path.exists() or source.startswith((".", "/", "~")) or path.suffix in (
        ".jsonl", ".json", ".parquet", ".csv")
    if looks_local and not path.exists():
        raise ConfigError(f"{what} not found: {source} (no such file or directory)")
    if path.is_file() and path.suffix in (".jsonl", ".json") and path.stat().st_size == 0:
        raise ConfigError(f"{what} {source} is empty: no {items} to train on")
    if path.is_file() and path.suffix == ".jsonl":  # name the bad line before datasets' parser gets to it
        bad = _first_bad_json_line(path)
        if bad:
            raise ConfigError(bad)

    def load(template, dims):
        try:
            return loader(str(path) if looks_local else source, schema=schema, split=split, dimensions=dims,
                          chat_template=template)
        except NeedsChatTemplate as err:
            if template is None and chat_template is not None:  # conversational: render with the template
                return load(chat_template, dims)
            where = f" row {err.row}" if err.row is not None else ""
            raise ConfigError(f"{what} {source}{where}: conversational data (lists of messages) needs a chat "
                              f"template, and {tokenizer_name} has none; pass --chat-template FILE (a Jinja template) "
                              "or a --tokenizer that has one") from err
        except Exception as err:  # noqa: BLE001 - every loader failure becomes one readable message
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"cannot read {what} {source}: {reason}") from err

    loaded = load(None, dimensions)
    names = getattr(loaded, "dimension_names", None)  # a PromptSet's prompts carry no dimension
    missing = [d for d in dimensions or () if names is not None and d not in names]
    if missing:
        present = load(None, None).dimension_names
        raise ConfigError(f"{what} {source}: no pairs for dimension {missing[0]!r} named in --dimensions "
                          f"(dimensions in the data: {present or 'none (no dimension column)'})")
    if len(loaded) == 0:
        raise ConfigError(f"{what} {source} has no usable {items} (rows read: {loaded.n_input}; "
                          f"set aside: {loaded.dropped or 'none'})")
    return loaded


def chat_template_source(hf_tok, template_file: str | None):
    """The tokenizer to render conversational data with (--chat-template FILE installs that template on
    it), or None when it has no template."""
    if template_file:
        path = Path(template_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"chat template not found: {template_file}")
        hf_tok.chat_template = path.read_text(encoding="utf-8")
    return hf_tok if getattr(hf_tok, "chat_template", None) else None


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
    rows: np.ndarray | None = None  # int64 [n]: each pair's position in the loaded PreferenceSet

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


def categories_of(items, cmap: CategoryMap, what: str) -> np.ndarray:
    """The category id of each item of a PreferenceSet or PromptSet (its `categories` and `source_rows`): items
    without one take NO_CATEGORY in a single-category run; an unknown category is an error naming its row in the
    input (not its position after the loader)."""
    labels = [NO_CATEGORY if c is None and len(cmap) == 1 and NO_CATEGORY in cmap else c for c in items.categories]
    unknown = next((k for k, label in enumerate(labels) if label not in cmap), None)
    if unknown is not None:
        raise ConfigError(f"{what} row {items.source_rows[unknown]}: unknown category {labels[unknown]!r}; "
                          f"known: {list(cmap.names)}")
    return cmap.ids(labels)


def tokenize_pairs(pairs: PreferenceSet, tok: gdata.Tokenizer, cmap: CategoryMap, *, max_length: int,
                   max_prompt_length: int | None, eos_token_id: int | None, margins: np.ndarray | None = None,
                   what: str = "data") -> PairData:
    """Categories -> ids (an unknown category is an error naming its row), exact dedup of (prompt, chosen,
    rejected) keeping first occurrences, and tokenization with rows that cannot be encoded set aside by
    reason. Each sequence is prompt + response (+ EOS), as guard.data.encode_pairs builds it."""
    set_aside = {f"dropped by the {pairs.schema} adapter: {reason}": n for reason, n in pairs.dropped.items() if n}
    category_ids = categories_of(pairs, cmap, what)

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
                    rows_read=int(pairs.n_input or 0), rows=rows)


@dataclass
class PromptData:
    """Tokenized prompts: ids[k] is prompt k's token ids, texts[k] its text, categories[k] its category id."""

    ids: list[np.ndarray]
    texts: list[str]
    categories: np.ndarray
    category_names: tuple[str, ...]
    set_aside: dict[str, int]
    truncated: int = 0
    rows: np.ndarray | None = None  # int64 [n]: each prompt's position in the loaded PromptSet

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, rows) -> PromptData:
        rows = np.asarray(rows, dtype=np.int64)
        return PromptData([self.ids[r] for r in rows], [self.texts[r] for r in rows], self.categories[rows],
                          self.category_names, self.set_aside, self.truncated,
                          None if self.rows is None else self.rows[rows])


def tokenize_prompts(prompts, tok: gdata.Tokenizer, cmap, max_prompt_length: int | None, what: str) -> PromptData:
    """Category ids (an unknown category is an error naming its row) and token ids (the last
    max_prompt_length kept); prompts that cannot be tokenized are set aside by reason."""
    set_aside = {f"dropped by the {prompts.schema} loader: {reason}": n for reason, n in prompts.dropped.items() if n}
    category_ids = categories_of(prompts, cmap, what)
    encoded = gdata.encode_texts(tok, prompts.prompts, add_special_tokens=True, errors="skip")
    for reason, rows in encoded.dropped.items():
        if rows:
            set_aside[f"tokenization: {reason}"] = len(rows)
    ids, truncated = [], 0
    for k in range(len(encoded)):
        row = encoded[k]
        if max_prompt_length is not None and len(row) > max_prompt_length:
            row, truncated = row[-max_prompt_length:], truncated + 1
        ids.append(row.astype(np.int64))
    kept = np.asarray(encoded.kept, dtype=np.int64)
    if not ids:
        raise ConfigError(f"{what}: no prompt survived tokenization (set aside: {set_aside})")
    return PromptData(ids, [prompts.prompts[k] for k in kept], category_ids[kept], cmap.names, set_aside, truncated,
                      kept)


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
                    None if data.margins is None else data.margins[rows], dict(data.set_aside), data.rows_read,
                    None if data.rows is None else data.rows[rows])


@dataclass
class TrainEval:
    """The training and held-out pairs of a run."""

    train: PairData
    eval: PairData
    set_aside: dict[str, int]  # every row or pair left out of train + eval, by stage and reason


def load_train_eval(cfg, tok: gdata.Tokenizer, eos_token_id: int | None, chat_template=None) -> TrainEval:
    """Training and held-out pairs, tokenized, with the category ids of the run. `cfg` is a recipe's config:
    data, eval_data, eval_fraction, split, schema, dimensions, categories, max_length, max_prompt_length,
    seed and (optionally) margin_column; `chat_template` renders conversational data (chat_template_source)."""
    margin_column = getattr(cfg, "margin_column", None)
    tokenizer_name = f"the tokenizer of {cfg.tokenizer or cfg.model}"
    train_set = load_pair_set(cfg.data, split=cfg.split, schema=cfg.schema, dimensions=cfg.dimensions,
                              chat_template=chat_template, tokenizer_name=tokenizer_name)
    cmap = category_map(train_set, cfg.categories)
    encode = dict(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, eos_token_id=eos_token_id)
    margins = None if margin_column is None else load_margins(cfg.data, train_set, margin_column, split=cfg.split)
    train = tokenize_pairs(train_set, tok, cmap, margins=margins, what=f"training data {cfg.data}", **encode)
    if cfg.eval_data:
        eval_set = load_pair_set(cfg.eval_data, split=cfg.split, schema=cfg.schema, dimensions=cfg.dimensions,
                                 chat_template=chat_template, tokenizer_name=tokenizer_name, what="eval_data")
        eval_margins = None if margin_column is None else load_margins(cfg.eval_data, eval_set, margin_column,
                                                                        split=cfg.split)
        held_out = tokenize_pairs(eval_set, tok, cmap, margins=eval_margins, what=f"eval data {cfg.eval_data}",
                                  **encode)
        set_aside = {f"train {k}": v for k, v in train.set_aside.items()}
        set_aside.update({f"eval {k}": v for k, v in held_out.set_aside.items()})
    else:
        train_rows, eval_rows = holdout_split(len(train), cfg.eval_fraction, cfg.seed)
        train, held_out, set_aside = subset(train, train_rows), subset(train, eval_rows), train.set_aside
    return TrainEval(train, held_out, set_aside)


def model_tokenizer(model: str, tokenizer: str | None):
    """(hf tokenizer, guard tokenizer, EOS id to append or None) for a run's --model / --tokenizer; a missing
    model path fails here, before any data work."""
    from guard import models

    models.resolve_model(model)
    hf_tok, tok = models.load_tokenizer(tokenizer or (models.TINY_TOKENIZER if model == "tiny" else model))
    eos = hf_tok.eos_token_id if hf_tok.eos_token_id not in (None, hf_tok.pad_token_id) else None
    return hf_tok, tok, eos
