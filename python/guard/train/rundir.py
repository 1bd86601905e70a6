"""The run directory of a training recipe: locked for one run at a time, created (or refused, resumed, replaced)
at the start, config.yaml, metrics.jsonl (one JSON line per logged step, never a NaN), checkpoints and resume
from the newest one, refused when the config changed in a way that would make the resumed run another run.

    with RunLock(cfg.output_dir):                                      # a second run on the same dir: an error
        run_dir = start_run(Path(cfg.output_dir), cfg, cfg, dist)      # config.yaml written
    start_step, log = resume_state(cfg, run_dir, model, opt, dist)     # step 0, or the last checkpoint's
    log.log({"step": 10, "loss": 0.5})
    save_step(run_dir, 10, model, opt, cfg, dist)
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import math
import os
import shutil
from pathlib import Path

import torch

from guard.config import ConfigError, config_to_dict, flag_name
from guard.jsonfiles import _write_lines, read_jsonl
from guard.train.options import TrainOptions


#: What a directory holding a run has: a recipe's metrics or checkpoints, or the cache of SPO rounds.
RUN_MARKERS = ("metrics.jsonl", "checkpoints", "spo-cache")
#: What guard writes at the top of a run directory (and of a sweep's), by name or pattern; --overwrite deletes
#: these and nothing else, and never what the directory held before guard first wrote to it (MANIFEST).
RUN_OUTPUTS = ("config.yaml", "metrics.jsonl", "checkpoints", "model", "rewards.jsonl", "summary.json", "report.md",
               "samples.jsonl", "sweep.csv", "spo.csv", "ref-cache", "spo-cache", "*.png", "lambda-*", "round-*")
#: guard's note of what a run directory held before guard first wrote to it: {"preexisting": [names]}.
MANIFEST = ".guard-run.json"
#: The file a run's lock is taken on (RunLock).
LOCK = ".guard-lock"


class RunLock:
    """An exclusive lock on an output directory for one run (flock on OUTPUT_DIR/.guard-lock, taken by the main
    process): a second run on the same directory stops at once with an error naming the first one's process.
    The kernel drops the lock when its process ends, however it ends, so a killed run leaves no stale lock."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.dir, self.enabled, self.file = Path(path), enabled, None

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / LOCK
        while True:
            handle = open(path, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise ConfigError(f"another guard run ({holder}) is using --output-dir {self.dir}; wait for it to "
                                  "end or choose another directory") from None
            # The lock file may have been replaced between open and flock: hold the lock of the one on disk.
            if path.exists() and os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self.file = handle
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()  # closing the descriptor releases the flock
            self.file = None


def _is_output(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_OUTPUTS)


def _remove(path: Path) -> None:
    """Remove a file, a folder, or only the link when `path` is a symbolic link (never what it points to)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def _preexisting(run_dir: Path) -> set[str] | None:
    """What the directory held before guard first wrote to it (MANIFEST), or None when guard has no note."""
    try:
        return set(json.loads((run_dir / MANIFEST).read_text(encoding="utf-8"))["preexisting"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def prepare_run_dir(path: str | os.PathLike, *, resume: bool, overwrite: bool, is_main: bool = True) -> Path:
    """Create the output directory. A directory that already holds a run is an error unless the run is
    resumed (--resume) or replaced (--overwrite), so a finished run is never clobbered by accident. Replacing
    deletes only guard's own outputs (RUN_OUTPUTS), never an entry the directory held before guard first wrote
    to it, and of a symbolic link only the link."""
    run_dir = Path(path)
    has_run = any((run_dir / name).exists() for name in RUN_MARKERS)
    if has_run and not resume:
        if not overwrite:
            raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite "
                              "to replace it")
        if is_main:
            keep = _preexisting(run_dir) or set()
            for child in sorted(run_dir.iterdir()):
                if _is_output(child.name) and child.name not in keep:
                    _remove(child)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if _preexisting(run_dir) is None:
            before = sorted(p.name for p in run_dir.iterdir() if p.name not in (MANIFEST, LOCK))
            (run_dir / MANIFEST).write_text(json.dumps({"preexisting": before}) + "\n", encoding="utf-8")
    return run_dir


#: What --resume may never change: the data, its split and order, the model and the objective.
RESUME_FIXED = ("data", "eval_data", "eval_fraction", "split", "schema", "dimensions", "categories",
                "max_prompt_length", "max_length", "model", "tokenizer", "lora", "lora_r", "lora_alpha", "lora_dropout",
                "lora_target_modules", "seed", "batch_size", "chat_template", "loss", "beta", "label_smoothing",
                "alpha", "lambda_adv", "adversary", "adv_objective", "adv_hidden", "margin_column", "center_coef",
                "precompute_ref", "reward_model", "stop_token", "minibatch_size", "ppo_epochs", "kl_estimator",
                "trust_remote_code", "tokens_per_step")
#: What --resume may change without asking: how the run is run and reported, not what it computes. Any other
#: option (the learning rate and its schedule, the number of steps, ...) may change when --resume-changes names it.
RESUME_FREE = ("output_dir", "resume", "overwrite", "resume_changes", "log_every", "save_every", "keep_checkpoints",
               "eval_batch_size", "generation_batch_size", "micro_batch_size", "device", "threads", "ref_cache_dir",
               "gradient_checkpointing", "preset", "packing")


def check_resume(saved: dict, cfg) -> list[str]:
    """The options of `cfg` that differ from the run's saved config.yaml (`saved`, as read): an error for any in
    RESUME_FIXED, or for any other not named by --resume-changes; returns the changes it allows."""
    current = config_to_dict(cfg)
    changed = [k for k, v in current.items() if k in saved and saved[k] != v and k not in RESUME_FREE]
    fixed = [k for k in changed if k in RESUME_FIXED]
    if fixed:
        raise ConfigError(f"--resume continues the run as it was configured, and {_changes(fixed, saved, current)} "
                          "would change its data, their split or order, the model or the objective; start a new run "
                          "(another --output-dir) instead")
    unasked = [k for k in changed if k not in (getattr(cfg, "resume_changes", None) or [])]
    if unasked:
        verb = "differs" if len(unasked) == 1 else "differ"
        raise ConfigError(f"--resume: {_changes(unasked, saved, current)} {verb} from the run's config.yaml; pass "
                          f"--resume-changes {','.join(unasked)} to continue with the new values")
    return changed


def _changes(keys, saved: dict, current: dict) -> str:
    return ", ".join(f"{flag_name(k)} ({saved[k]!r} -> {current[k]!r})" for k in keys)


def check_resumable(run_dir: str | os.PathLike, cfg, saved_config) -> None:
    """With --resume, the run in `run_dir` (finished or not) must have been configured as `saved_config`."""
    config_file = Path(run_dir) / "config.yaml"
    if cfg.resume and config_file.exists():
        check_resume(_read_yaml(config_file), saved_config)


def _read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def start_run(run_dir: Path, cfg: TrainOptions, saved_config, dist) -> Path:
    """The run directory (see prepare_run_dir) with `saved_config` written as config.yaml; with --resume, the
    saved config.yaml must agree with it (check_resume)."""
    from guard import distributed
    from guard.config import save_config

    check_resumable(run_dir, cfg, saved_config)
    run_dir = prepare_run_dir(run_dir, resume=cfg.resume, overwrite=cfg.overwrite, is_main=dist.is_main)
    distributed.barrier(dist)
    if dist.is_main:
        save_config(saved_config, run_dir / "config.yaml")
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
        """Append one step's row; a NaN or infinite number is an error naming the key and the step, never
        written (JSON has no NaN)."""
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise NonFiniteLoss(f"step {row.get('step')}: " + ", ".join(f"{k} = {row[k]}" for k in bad)
                                + " is not finite; the run stopped before writing that step")
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, allow_nan=False) + "\n")


class NonFiniteLoss(ConfigError):
    """Training produced a NaN or infinite loss (or metric): the run stops with this error (exit 2), before that
    step's metrics or any later checkpoint is written."""


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
