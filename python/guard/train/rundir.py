"""The run directory of a training recipe: created (or refused, resumed, replaced) at the start, config.yaml,
metrics.jsonl (one JSON line per logged step), checkpoints and resume from the newest one.

    run_dir = start_run(Path(cfg.output_dir), cfg, cfg, dist)          # config.yaml written
    start_step, log = resume_state(cfg, run_dir, model, opt, dist)     # step 0, or the last checkpoint's
    log.log({"step": 10, "loss": 0.5})
    save_step(run_dir, 10, model, opt, cfg, dist)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from guard.config import ConfigError
from guard.jsonfiles import _write_lines, read_jsonl
from guard.train.options import TrainOptions


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


def start_run(run_dir: Path, cfg: TrainOptions, saved_config, dist) -> Path:
    """The run directory (see prepare_run_dir) with `saved_config` written as config.yaml."""
    from guard import distributed
    from guard.config import save_config

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
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


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
