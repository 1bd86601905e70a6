"""What every training recipe shares: the run directory (config, metrics, resume), preference data from a
file or hub name down to tokenized pairs with every set-aside row counted, the fixed-seed held-out split,
the epoch order, the learning-rate schedule and the command line's error handling.

The recipes (rm.py, and the preference and PPO recipes after it) compose these pieces in a loop they
spell out themselves; nothing here hides a training step.
"""

from __future__ import annotations

import contextlib
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
from guard.adapters import SCHEMAS, CategoryMap, NeedsChatTemplate, PreferenceSet, load_preferences
from guard.config import ConfigError, option

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


def parse_config(cls: type, argv: list[str] | None, prog: str, description: str,
                 presets: dict[str, dict] | None = None):
    """A recipe's config from the command line: every field of `cls` as a flag, `--config run.yaml`, and, when
    the recipe has `presets`, the one named by --preset (on the command line or in the yaml) under both."""
    import argparse

    from guard.config import add_arguments, build_config

    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="a yaml file of options; flags given on the command line win")
    add_arguments(parser, cls)
    args = parser.parse_args(argv)
    preset = None
    if presets:
        name = getattr(args, "preset", None)
        if not isinstance(name, str) and args.config:  # a preset named in the yaml file
            name = build_config(cls, None, yaml_path=args.config).preset
        preset = presets.get(name) if isinstance(name, str) else None
    return build_config(cls, args, yaml_path=args.config, preset=preset)


@contextlib.contextmanager
def recipe_session(cfg: TrainOptions, lambdas: Sequence[float] | None = None):
    """What every recipe's run does around its work: check the options, join the torchrun process group
    (or not), load the tokenizer; yields (dist, hf tokenizer, guard tokenizer, EOS id to append or None) and
    leaves the process group at the end."""
    from guard import distributed

    check_options(cfg, lambdas)
    dist = distributed.init_distributed(cfg.device)
    finished = False
    try:
        check_batch_split(cfg, dist)
        yield (dist, *model_tokenizer(cfg.model, cfg.tokenizer))
        finished = True
    finally:
        distributed.shutdown(dist, wait=finished)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainOptions:
    """The options every recipe shares (data, model, optimisation, run); a recipe's config subclasses it
    (or PairTrainOptions), adds its own and may redeclare a field to change its default or its help."""

    # data
    data: str = option("", "training pairs: a .jsonl/.json/.parquet/.csv file, a folder or a hub dataset name")
    eval_data: str | None = option(None, "held-out pairs; none: a fixed-seed --eval-fraction of --data is held out")
    eval_fraction: float = option(0.1, "share of --data held out for evaluation when --eval-data is not given")
    split: str = option("train", "dataset split to read")
    schema: str = option("auto", "data schema (auto: detected from the columns)", choices=SCHEMAS)
    dimensions: list[str] | None = option(None, "keep only these preference dimensions, e.g. harmless")
    categories: list[str] | None = option(
        None, "category names in order (data with another category is an error); default: the training data's")
    max_prompt_length: int | None = option(None, "keep at most the last N prompt tokens")
    # model
    model: str = option("tiny", "a local model directory, a hub name, or the preset 'tiny' (a small random Llama)")
    tokenizer: str | None = option(None, "tokenizer.json or a folder holding one (default: the model's; tiny: bundled)")
    lora: bool = option(False, "train LoRA adapters (peft) instead of every weight")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha")
    lora_dropout: float = option(0.05, "LoRA dropout")
    lora_target_modules: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj"], "modules given adapters")
    save_adapter: bool = option(False, "with --lora: save the adapter alone instead of the merged model")
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory")
    bf16: bool = option(True, "bf16 autocast on GPU (CPU runs stay in float32)")
    trust_remote_code: bool = option(False, "allow model code from the hub (off: safe by default)")
    # optimisation
    epochs: int = option(1, "passes over the training pairs")
    max_steps: int | None = option(None, "stop after this many optimizer steps (overrides --epochs)")
    batch_size: int = option(32, "preference pairs per optimizer step, over all processes")
    eval_batch_size: int = option(64, "pairs per forward pass when scoring the held-out set")
    lr: float = option(1e-5, "peak learning rate (AdamW)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_ratio: float = option(0.03, "share of the steps spent in linear warmup")
    lr_schedule: str = option("cosine", "decay after warmup", choices=("cosine", "linear", "constant"))
    max_grad_norm: float = option(1.0, "gradient clipping norm (0: off)")
    # run
    output_dir: str = option("", "where the run writes config, metrics, checkpoints, model and report")
    seed: int = option(0, "seed of the data order, the held-out split, the model init and the audit")
    log_every: int = option(10, "write metrics every N steps")
    save_every: int = option(200, "checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = option(2, "checkpoints kept on disk")
    resume: bool = option(False, "continue from the last checkpoint in --output-dir")
    overwrite: bool = option(False, "replace a finished or stopped run in --output-dir")
    device: str = option("auto", "cuda, cpu, or auto (cuda when available)")
    chat_template: str | None = option(None, "a Jinja chat template file for conversational data, when the "
                                       "tokenizer has none (plain-text prompts are used as they are)")


@dataclass
class PairTrainOptions(TrainOptions):
    """What the recipes that train on preference pairs (rm, pref) add: the sequence budget and GUARD's
    fairness adversary."""

    max_length: int = option(1024, "tokens per prompt+response sequence; a longer response is cut at its end")
    # fairness (GUARD)
    lambda_adv: list[float] = option([0.2], "fairness weight λ; 0 = the plain loss; several values (0,0.2,0.8) "
                                     "run a sweep")
    adversary: str = option("rewards", "what the adversary reads: each pair's rewards, or per-category moments",
                            choices=("rewards", "moments"))
    adv_objective: str = option("ce", "what the model maximises: the adversary's cross-entropy (paper) or "
                                "its predictive entropy (authors' code)", choices=("ce", "entropy"))
    adv_hidden: int = option(64, "hidden units of the adversary MLP")
    adv_lr: float = option(1e-3, "adversary learning rate (Adam)")


# ----------------------------------------------------------------------------------------------------
# Run directory


#: What a directory holding a run has: a recipe's metrics or checkpoints, or the cache of SPO rounds.
RUN_MARKERS = ("metrics.jsonl", "checkpoints", "spo-cache")


def prepare_run_dir(path: str | os.PathLike, *, resume: bool, overwrite: bool, is_main: bool = True) -> Path:
    """Create the output directory. A directory that already holds a run is an error unless the run is
    resumed (--resume) or replaced (--overwrite), so a finished run is never clobbered by accident."""
    run_dir = Path(path)
    has_run = any((run_dir / name).exists() for name in RUN_MARKERS)
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


def write_jsonl(path: str | os.PathLike, rows: Sequence[dict]) -> Path:
    """One JSON object per line, through a temporary name; returns the path."""
    path = Path(path)
    _write_lines(path, [json.dumps(row) for row in rows])
    return path


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text(encoding="utf-8"))


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


# ----------------------------------------------------------------------------------------------------
# The training loop's pieces


@dataclass
class Schedule:
    """Which pairs each optimizer step takes and at what learning rate: epochs of `steps_per_epoch` full
    batches in a (seed, epoch) order, linear warmup then the decay of `lr_schedule`."""

    n_pairs: int
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    def steps(self, start_step: int, seed: int, peak_lr: float, lr_schedule: str):
        """(step, rows of the global batch, learning rate) for every step from `start_step` on."""
        order, order_epoch = None, -1
        for step in range(start_step, self.total_steps):
            epoch, k = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(self.n_pairs, seed, epoch), epoch
            rows = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield step, rows, peak_lr * lr_factor(lr_schedule, step, self.warmup_steps, self.total_steps)

    def epoch(self, done: int) -> float:
        return round(done / self.steps_per_epoch, 4)


def plan_steps(cfg: TrainOptions, n_pairs: int, what: str = "training pairs") -> Schedule:
    steps_per_epoch = n_pairs // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the {n_pairs} {what}")
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    return Schedule(n_pairs, cfg.batch_size, steps_per_epoch, total, int(cfg.warmup_ratio * total))


def check_options(cfg: TrainOptions, lambdas: Sequence[float] | None = None) -> None:
    """The checks every recipe makes before any work: an output directory, positive sizes, valid λ (for the
    recipes with a fairness weight)."""
    if not cfg.output_dir:
        raise ConfigError("--output-dir is required")
    if cfg.batch_size < 1 or cfg.epochs < 1 or (cfg.max_steps is not None and cfg.max_steps < 1):
        raise ConfigError("--batch-size, --epochs and --max-steps must be positive")
    if lambdas is not None and (not lambdas or any(lam < 0 or not math.isfinite(lam) for lam in lambdas)):
        raise ConfigError(f"--lambda-adv must be one or more non-negative numbers, got {list(lambdas)}")


def check_batch_split(cfg: TrainOptions, dist) -> None:
    if cfg.batch_size % dist.world_size:
        raise ConfigError(f"--batch-size {cfg.batch_size} must be a multiple of the {dist.world_size} processes")


def check_fairness(lambda_adv: float, names: Sequence[str]) -> None:
    if lambda_adv > 0 and len(names) < 2:
        raise ConfigError("--lambda-adv > 0 needs at least two categories; the data has "
                          f"{list(names)} (give it a category column, or pass --lambda-adv 0)")


def start_run(run_dir: Path, cfg: TrainOptions, saved_config, dist) -> Path:
    """The run directory (see prepare_run_dir) with `saved_config` written as config.yaml."""
    from guard import distributed
    from guard.config import save_config

    run_dir = prepare_run_dir(run_dir, resume=cfg.resume, overwrite=cfg.overwrite, is_main=dist.is_main)
    distributed.barrier(dist)
    if dist.is_main:
        save_config(saved_config, run_dir / "config.yaml")
    return run_dir


class Optimization:
    """The model's AdamW and, with two or more categories, GUARD's adversary with its Adam. With λ = 0 the
    adversary only watches: its loss says how much the rewards leak, and it never enters the model's loss.
    It is built in a forked RNG so the model's initial weights and batches do not depend on λ."""

    def __init__(self, cfg: TrainOptions, model: torch.nn.Module, num_categories: int, device: torch.device):
        from guard.fairness import CategoryAdversary

        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           fused=device.type == "cuda")
        self.max_grad_norm = cfg.max_grad_norm
        self.adv_objective = cfg.adv_objective
        self.adversary = self.adv_optimizer = None
        if num_categories >= 2:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed + 1)
                self.adversary = CategoryAdversary(num_categories, mode=cfg.adversary, hidden=cfg.adv_hidden).to(device)
            self.adv_optimizer = torch.optim.Adam(self.adversary.parameters(), lr=cfg.adv_lr)

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer} | ({"adversary": self.adv_optimizer} if self.adversary is not None else {})

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"adversary": self.adversary} if self.adversary is not None else {}

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def fairness(self, loss: torch.Tensor, lambda_adv: float, moments, counts, chosen: torch.Tensor,
                 rejected: torch.Tensor, categories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(2) an adversary step on the detached features of the batch's rewards, then (3) the model's loss
        L − λ·penalty (DESIGN.md §3). Returns (the model's loss, the adversary's loss or None)."""
        from guard.fairness import adversary_penalty, adversary_step

        if self.adversary is None:
            return loss, None
        features, targets = self.adversary.features(moments, counts, chosen, rejected, categories)
        adv_loss = adversary_step(self.adversary, self.adv_optimizer, features, targets)
        if lambda_adv > 0:
            loss = loss - lambda_adv * adversary_penalty(self.adversary, features, targets,
                                                         objective=self.adv_objective)
        return loss, adv_loss

    def step(self, loss: torch.Tensor) -> None:
        """backward, clip (max_grad_norm > 0), AdamW step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()


def resume_state(cfg: TrainOptions, run_dir: Path, model: torch.nn.Module, opt, dist, extra: dict | None = None
                 ) -> tuple[int, MetricsLog]:
    """(first step, metrics log): with --resume, the last checkpoint is loaded into model, the optimizers and
    modules of `opt` (an Optimization, or anything with `optimizers` and `modules`), `extra` is updated with
    what save_step stored beside the step, and the metrics past it are dropped; otherwise step 0 and a fresh
    log."""
    from guard import distributed

    start_step = 0
    checkpoint = distributed.latest_checkpoint(run_dir) if cfg.resume else None
    if checkpoint is not None:
        saved = distributed.load_checkpoint(checkpoint, model, opt.optimizers, opt.modules, dist)
        start_step = saved.pop("step")
        if extra is not None:
            extra.update(saved)
    log = MetricsLog(run_dir / "metrics.jsonl", resume_step=start_step if cfg.resume else None, enabled=dist.is_main)
    return start_step, log


def log_now(done: int, cfg: TrainOptions, total_steps: int) -> bool:
    return done % cfg.log_every == 0 or done == total_steps


def checkpoint_now(done: int, cfg: TrainOptions, total_steps: int) -> bool:
    return bool(cfg.save_every and done % cfg.save_every == 0) or done == total_steps


def save_step(run_dir: Path, done: int, model: torch.nn.Module, opt, cfg: TrainOptions, dist,
              extra: dict | None = None) -> None:
    """A checkpoint of step `done`: model, `opt`'s optimizers and modules, and `extra` (JSON) beside the step."""
    from guard import distributed

    distributed.save_checkpoint(run_dir, done, model, opt.optimizers, opt.modules, {"step": done, **(extra or {})},
                                dist, keep=cfg.keep_checkpoints)


def finish_run(run_dir: Path, model: torch.nn.Module, hf_tok, dist, *, save_adapter: bool, eval_names: list[str],
               chosen: np.ndarray, rejected: np.ndarray, seed: int, extra: dict,
               write_report: Callable[[dict], None]) -> dict:
    """The end of a run (collective): rewards.jsonl of the held-out pairs, their GUARD audit (+ `extra`) as
    summary.json, the model in Hugging Face format and report.md (`write_report(summary)`). Returns the
    summary on the main rank, {} elsewhere."""
    from guard import audit, distributed, models

    state = distributed.full_state_dict(model, dist)
    summary = {}
    if dist.is_main:
        audit.write_rewards_jsonl(run_dir / "rewards.jsonl", eval_names, chosen, rejected)
        summary = audit.reward_summary(chosen, rejected, eval_names, seed=seed) | extra
        models.save_pretrained(model, run_dir / "model", tokenizer=hf_tok, state_dict=state,
                               merge_lora=not save_adapter)
        write_report(summary)
        write_json(run_dir / "summary.json", summary)
    distributed.barrier(dist)
    return summary


# ----------------------------------------------------------------------------------------------------
# Batches


def to_tensors(batch: dict[str, np.ndarray], device: torch.device,
               keys: Sequence[str] = ("input_ids", "attention_mask")) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(batch[k]).to(device, non_blocking=True) for k in keys}


@torch.no_grad()
def score_pairs(score: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]], data: PairData,
                batch_size: int, pad_id: int, dist, keys: Sequence[str] = ("input_ids", "attention_mask"),
                ) -> tuple[np.ndarray, np.ndarray]:
    """float64 (chosen, rejected) scores of every pair in `data` (in order), the work split over the ranks;
    `score` maps one rank's padded pair batch (tensors `keys`) to its chosen and rejected scores."""
    from guard import distributed

    chosen, rejected = [], []
    for n, mine in distributed.rank_chunks(len(data), batch_size, dist):
        batch = to_tensors(gdata.padded_batch(data.encoded, mine, pad_id), dist.device, keys)
        r_c, r_r = score(batch)
        chosen.append(distributed.gather_rows(r_c, dist)[:n].double().cpu())
        rejected.append(distributed.gather_rows(r_r, dist)[:n].double().cpu())
    return torch.cat(chosen).numpy(), torch.cat(rejected).numpy()


# ----------------------------------------------------------------------------------------------------
# Reports


def write_reward_report(run_dir: Path, title: str, intro: str, data: TrainEval, summary: dict,
                        summary_rows: Sequence[tuple[str, str]], chosen: np.ndarray, rejected: np.ndarray,
                        eval_names: list[str], curve_keys: Sequence[str], what: str = "rewards") -> None:
    """report.md with the held-out audit of (chosen, rejected) rewards, histograms by category and chosen vs
    rejected, training curves of `curve_keys` from metrics.jsonl, and the data accounting."""
    from guard import plots
    from guard.report import Report

    names = np.asarray(eval_names)
    by_category = {c: np.concatenate([chosen[names == c], rejected[names == c]]) for c in dict.fromkeys(eval_names)}
    plots.reward_histograms(run_dir / "rewards_by_category.png", by_category, f"held-out {what} by category ({title})")
    plots.chosen_rejected_histogram(run_dir / "chosen_vs_rejected.png", chosen, rejected,
                                    f"held-out {what}, chosen vs rejected ({title})")
    history = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    steps = [m["step"] for m in history]
    plots.curves(run_dir / "training_curves.png", {key: (steps, [m[key] for m in history])
                                                   for key in curve_keys if history},
                 "training (per logged step)", "value")

    report = Report(title)
    report.text(intro)
    report.heading("Held-out audit", 2)
    report.table([{"metric": label, "value": summary.get(key)} for label, key in summary_rows])
    report.table([{"category": c, **v} for c, v in summary.get("categories", {}).items()])
    report.image("rewards_by_category.png", f"{what} by category")
    report.image("chosen_vs_rejected.png", f"chosen vs rejected {what}")
    report.heading("Training", 2)
    report.image("training_curves.png", "training curves")
    report.heading("Data set aside", 2)
    report.text(f"Rows read: {data.train.rows_read}. Every row or pair left out, by stage and reason "
                "(none: nothing was set aside):")
    report.table([{"reason": k, "count": v} for k, v in data.set_aside.items()] or [{"reason": "none", "count": 0}])
    report.write(run_dir / "report.md")
