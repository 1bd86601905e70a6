"""A run's inputs: preference pairs (or prompts) from a file, folder or hub dataset name, down to token ids,
category ids and margins, with every row set aside counted by reason, and the fixed-seed held-out split.

    data = load_train_eval(cfg, tok, eos_token_id)     # TrainEval(train=PairData, eval=PairData, set_aside)
    prompts = tokenize_prompts(prompt_set, tok, cmap, max_prompt_length=512, what="prompts")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from guard import data as gdata
from guard.adapters import (
    CategoryMap,
    DataFileError,
    NeedsChatTemplate,
    PreferenceSet,
    RowError,
    UnknownSchema,
    load_preferences,
)
from guard.config import ConfigError

#: The category given to every pair of data that has none (a single-category run: no fairness term).
NO_CATEGORY = "all"
#: How many of a reason's rows the console, report.md and summary.json name ("line 8", or "row 7").
SHOWN_ROWS = 5
#: The reason a pair is set aside when --max-length leaves its two sequences the same tokens.
IDENTICAL_AFTER_TRUNCATION = "chosen and rejected identical after truncation to --max-length"


def load_pair_set(source: str, *, split: str = "train", schema: str = "auto", dimensions: Sequence[str] | None = None,
                  chat_template=None, tokenizer_name: str = "the tokenizer", what: str = "data",
                  loader: Callable = load_preferences, items: str = "preference pairs"):
    """A PreferenceSet (or what `loader` returns: guard.prompts.load_prompts gives a PromptSet of `items`
    "prompts") from a local file/folder or a hub dataset name, with every failure turned into one clear
    ConfigError naming the source and, for a file, the line (else the 0-based row). Plain-text prompts are used as they
    are; `chat_template` (a tokenizer with one, or None) renders conversational data only. A dimension asked
    for in `dimensions` that has no data is an error."""
    if not source:
        raise ConfigError(f"no {what} given (--{what.replace('_', '-')} PATH_OR_HUB_NAME)")
    path = Path(source).expanduser()
    looks_local = path.exists() or source.startswith((".", "/", "~")) or path.suffix in (
        ".jsonl", ".json", ".parquet", ".csv")
    if looks_local and not path.exists():
        raise ConfigError(f"{what} not found: {source} (no such file or directory)")
    if path.is_file() and path.suffix in (".jsonl", ".json", ".csv") and path.stat().st_size == 0:
        raise ConfigError(f"{what} {source} is empty: no {items} to train on")

    def load(template, dims):
        try:
            return loader(str(path) if looks_local else source, schema=schema, split=split, dimensions=dims,
                          chat_template=template)
        except NeedsChatTemplate as err:
            if template is None and chat_template is not None:  # conversational: render with the template
                return load(chat_template, dims)
            where = f" {err.args[0].split(':')[0]}" if err.row is not None else ""
            raise ConfigError(f"{what} {source}{where}: conversational data (lists of messages) needs a chat "
                              f"template, and {tokenizer_name} has none; pass --chat-template FILE (a Jinja template) "
                              "or a --tokenizer that has one") from err
        except DataFileError as err:
            raise ConfigError(f"{what} {err}") from err
        except RowError as err:
            raise ConfigError(f"{what} {source} {err}") from err
        except UnknownSchema as err:
            raise ConfigError(f"{what} {source}: {err.describe('--schema NAME')}") from err
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
    from guard.adapters.loading import _load

    local = Path(source).expanduser()
    table = _load(str(local) if local.exists() else source, None, split, None, {})
    if column not in table.column_names:
        raise ConfigError(f"margin column {column!r} is not in {source} (columns: {table.column_names})")
    values = [value for batch in table.iter(batch_size=4096) for value in batch[column]]
    out = np.empty(len(pairs), dtype=np.float32)
    for k, row in enumerate(pairs.source_rows):
        value = values[row]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{source} {pairs.where(row)}: margin column {column!r} is not a finite number "
                              f"(got {value!r})")
        out[k] = value
    return out


@dataclass
class PairData:
    """Tokenized preference pairs ready for batching: row k of `encoded` is pair k, with its category id and
    margin. `set_aside` counts every input row or pair left out, by stage and reason, and `set_aside_rows`
    names the first SHOWN_ROWS of each ("line 8"); `truncated` pairs were kept with a sequence cut to the
    --max-length budget."""

    encoded: gdata.EncodedPairs
    categories: np.ndarray  # int64 [n]: index into category_names
    category_names: tuple[str, ...]
    margins: np.ndarray | None  # float32 [n] or None
    set_aside: dict[str, int] = field(default_factory=dict)
    rows_read: int = 0
    rows: np.ndarray | None = None  # int64 [n]: each pair's position in the loaded PreferenceSet
    set_aside_rows: dict[str, list[str]] = field(default_factory=dict)
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.encoded)


def note_set_aside(counts: dict[str, int], shown: dict[str, list[str]], reason: str, rows, where) -> None:
    """Count `rows` (input rows) under `reason` and name the first SHOWN_ROWS of the reason with `where(row)`."""
    rows = [int(r) for r in rows]
    if not rows:
        return
    counts[reason] = counts.get(reason, 0) + len(rows)
    names = shown.setdefault(reason, [])
    names.extend(where(r) for r in rows[:max(0, SHOWN_ROWS - len(names))])


def category_map(train: PreferenceSet, order: Sequence[str] | None) -> CategoryMap:
    """The category names of a run: `order` when given (data outside it is an error), else those of the
    training data (PKU-SafeRLHF: its canonical 19); data without categories gets the single NO_CATEGORY."""
    if order:
        return CategoryMap(order)
    if all(c is None for c in train.categories):
        return CategoryMap([NO_CATEGORY])
    if any(c is None for c in train.categories):
        row = train.source_rows[next(k for k, c in enumerate(train.categories) if c is None)]
        raise ConfigError(f"training data {train.where(row)}: no category, while other rows have one")
    return train.category_map()


def categories_of(items, cmap: CategoryMap, what: str) -> np.ndarray:
    """The category id of each item of a PreferenceSet or PromptSet (its `categories` and `source_rows`): items
    without one take NO_CATEGORY in a single-category run; an unknown category is an error naming its row in the
    input (not its position after the loader)."""
    labels = [NO_CATEGORY if c is None and len(cmap) == 1 and NO_CATEGORY in cmap else c for c in items.categories]
    unknown = next((k for k, label in enumerate(labels) if label not in cmap), None)
    if unknown is not None:
        raise ConfigError(f"{what} {items.where(items.source_rows[unknown])}: unknown category {labels[unknown]!r}; "
                          f"known: {list(cmap.names)}")
    return cmap.ids(labels)


def loader_drops(items, stage: str) -> tuple[dict[str, int], dict[str, list[str]]]:
    """(counts, first rows named) of what the loader of a PreferenceSet or PromptSet dropped, each reason
    prefixed with `stage`; a set built by hand may count its drops without their rows."""
    counts: dict[str, int] = {}
    shown: dict[str, list[str]] = {}
    for reason, n in items.dropped.items():
        rows = items.dropped_rows.get(reason)
        if rows is not None:
            note_set_aside(counts, shown, f"{stage}: {reason}", rows, items.where)
        elif n:
            counts[f"{stage}: {reason}"] = n
    return counts, shown


def tokenize_pairs(pairs: PreferenceSet, tok: gdata.Tokenizer, cmap: CategoryMap, *, max_length: int,
                   max_prompt_length: int | None, eos_token_id: int | None, margins: np.ndarray | None = None,
                   what: str = "data") -> PairData:
    """Categories -> ids (an unknown category is an error naming its row), exact dedup of (prompt, chosen,
    rejected) keeping first occurrences, and tokenization with rows that cannot be encoded set aside by
    reason. Each sequence is prompt + response (+ EOS), as guard.data.encode_pairs builds it. Pairs cut to
    --max-length are counted (`truncated`), and a pair whose two sequences the cut leaves the same tokens is
    set aside (its preference can no longer be seen)."""
    counts, shown = loader_drops(pairs, f"dropped by the {pairs.schema} adapter")
    category_ids = categories_of(pairs, cmap, what)
    source_rows = np.asarray(pairs.source_rows, dtype=np.int64)

    # A pair is its prompt with both responses; the length prefix makes (chosen, rejected) -> key one to one.
    keep = gdata.dedup(pairs.prompts, [f"{len(c)}:{c}{r}" for c, r in zip(pairs.chosen, pairs.rejected)])
    duplicates = np.setdiff1d(np.arange(len(pairs)), keep)
    note_set_aside(counts, shown, "duplicate pairs removed", source_rows[duplicates], pairs.where)
    kept = pairs.select(keep)
    encode = dict(max_prompt_length=max_prompt_length, eos_token_id=eos_token_id, errors="skip")
    encoded = gdata.encode_pairs(tok, kept.prompts, kept.chosen, kept.rejected, max_length=max_length, **encode)
    for reason, rows in encoded.dropped.items():
        note_set_aside(counts, shown, f"tokenization: {reason}", source_rows[keep[np.asarray(rows, dtype=np.int64)]],
                       pairs.where)
    rows = keep[encoded.kept]
    if len(rows) == 0:
        raise ConfigError(f"{what}: no pair survived tokenization (set aside: {counts})")
    data = PairData(encoded=encoded, categories=category_ids[rows], category_names=cmap.names,
                    margins=None if margins is None else margins[rows], set_aside=counts,
                    rows_read=int(pairs.n_input or 0), rows=rows, set_aside_rows=shown)

    # Truncation: a sequence at the budget may have been cut; the same pairs encoded without it tell.
    at_budget = np.flatnonzero((encoded.lengths >= max_length).any(axis=1))
    if len(at_budget):
        picked = kept.select(encoded.kept[at_budget])
        whole = gdata.encode_pairs(tok, picked.prompts, picked.chosen, picked.rejected, max_length=None, **encode)
        data.truncated = int((whole.lengths > encoded.lengths[at_budget][whole.kept]).any(axis=1).sum())
    same = [k for k in at_budget if np.array_equal(encoded.chosen[k], encoded.rejected[k])]
    if same:
        note_set_aside(counts, shown, IDENTICAL_AFTER_TRUNCATION, source_rows[rows[same]], pairs.where)
        data = subset(data, np.setdiff1d(np.arange(len(data)), same))
    if len(data) == 0:
        raise ConfigError(f"{what}: no pair left after tokenization (set aside: {counts})")
    return data


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
    set_aside_rows: dict[str, list[str]] = field(default_factory=dict)  # the first rows of each reason, named
    rows_read: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, rows) -> PromptData:
        rows = np.asarray(rows, dtype=np.int64)
        return PromptData([self.ids[r] for r in rows], [self.texts[r] for r in rows], self.categories[rows],
                          self.category_names, self.set_aside, self.truncated,
                          None if self.rows is None else self.rows[rows], self.set_aside_rows, self.rows_read)


def tokenize_prompts(prompts, tok: gdata.Tokenizer, cmap, max_prompt_length: int | None, what: str) -> PromptData:
    """Category ids (an unknown category is an error naming its row) and token ids (the last
    max_prompt_length kept); prompts that cannot be tokenized are set aside by reason."""
    set_aside, shown = loader_drops(prompts, f"dropped by the {prompts.schema} loader")
    category_ids = categories_of(prompts, cmap, what)
    encoded = gdata.encode_texts(tok, prompts.prompts, add_special_tokens=True, errors="skip")
    source_rows = np.asarray(prompts.source_rows, dtype=np.int64)
    for reason, rows in encoded.dropped.items():
        note_set_aside(set_aside, shown, f"tokenization: {reason}", source_rows[np.asarray(rows, dtype=np.int64)],
                       prompts.where)
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
                      kept, shown, int(prompts.n_input or 0))


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
                    None if data.rows is None else data.rows[rows], dict(data.set_aside_rows), data.truncated)


@dataclass
class TrainEval:
    """The training and held-out pairs of a run."""

    train: PairData
    eval: PairData
    set_aside: dict[str, int]  # every row or pair left out of train + eval, by stage and reason
    set_aside_rows: dict[str, list[str]] = field(default_factory=dict)  # the first rows of each reason, named
    truncated: int = 0  # pairs kept with a sequence cut to --max-length

    def accounting(self) -> dict:
        """What the data stage did, for summary.json and report.md."""
        return {"rows_read": self.train.rows_read, "train_pairs": len(self.train), "eval_pairs": len(self.eval),
                "truncated_pairs": self.truncated, "set_aside": dict(self.set_aside),
                "set_aside_rows": dict(self.set_aside_rows)}

    def describe(self, what: str = "data") -> str:
        """The lines the run prints before training: pairs kept, pairs cut, every reason rows were set aside."""
        cut = [f"{self.truncated} pairs kept with a sequence cut at its end to --max-length"] if self.truncated else []
        return describe_set_aside(f"{what}: {self.train.rows_read} rows read -> {len(self.train)} training + "
                                  f"{len(self.eval)} held-out pairs", self.set_aside, self.set_aside_rows, cut)


def describe_set_aside(head: str, set_aside: dict[str, int], set_aside_rows: dict[str, list[str]],
                       notes: Sequence[str] = ()) -> str:
    """`head`, then one line per reason rows were set aside (count, reason, the first rows named), then `notes`."""
    lines = [head + ("; nothing set aside" if not set_aside else "; set aside:")]
    for reason, n in set_aside.items():
        named = set_aside_rows.get(reason, [])
        more = ", ..." if n > len(named) else ""
        lines.append(f"  {n:>6}  {reason}" + (f" ({', '.join(named)}{more})" if named else ""))
    return "\n".join(lines + [f"  {note}" for note in notes])


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
        shown = {f"train {k}": v for k, v in train.set_aside_rows.items()}
        shown.update({f"eval {k}": v for k, v in held_out.set_aside_rows.items()})
        return TrainEval(train, held_out, set_aside, shown, train.truncated + held_out.truncated)
    train_rows, eval_rows = holdout_split(len(train), cfg.eval_fraction, cfg.seed)
    return TrainEval(subset(train, train_rows), subset(train, eval_rows), train.set_aside, train.set_aside_rows,
                     train.truncated)


def model_tokenizer(model: str, tokenizer: str | None):
    """(hf tokenizer, guard tokenizer, EOS id to append or None) for a run's --model / --tokenizer; a missing
    model path fails here, before any data work."""
    from guard import models

    models.resolve_model(model)
    hf_tok, tok = models.load_tokenizer(tokenizer or (models.TINY_TOKENIZER if model == "tiny" else model))
    eos = hf_tok.eos_token_id if hf_tok.eos_token_id not in (None, hf_tok.pad_token_id) else None
    return hf_tok, tok, eos
