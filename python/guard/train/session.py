"""What wraps a recipe's run: at the start, the option checks, the torchrun process group and the tokenizer;
at the end, the held-out rewards, their GUARD audit, the model in Hugging Face format and the report.

    with recipe_session(cfg, cfg.lambda_adv) as (dist, hf_tok, tok, eos):
        ...
        summary = finish_run(run_dir, model, hf_tok, dist, ...)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from guard.config import ConfigError
from guard.jsonfiles import write_json
from guard.train.inputs import model_tokenizer
from guard.train.options import TrainOptions, check_batch_split, check_options
from guard.train.rundir import RunLock


@contextlib.contextmanager
def recipe_session(cfg: TrainOptions, lambdas: Sequence[float] | None = None):
    """What every recipe's run does around its work: check the options, use --threads CPU threads, join the
    torchrun process group (or not), lock the output directory (RunLock), load the tokenizer; yields (dist, hf tokenizer, guard tokenizer, EOS id to
    append or None), and at the end leaves the process group and restores the thread count."""
    from guard import distributed

    check_options(cfg, lambdas)
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    dist = distributed.init_distributed(cfg.device)
    lock = RunLock(cfg.output_dir, enabled=dist.is_main)
    finished = False
    try:
        take_lock(lock, dist)
        check_batch_split(cfg, dist)
        yield (dist, *model_tokenizer(cfg.model, cfg.tokenizer))
        finished = True
    finally:
        lock.__exit__(None, None, None)
        distributed.shutdown(dist, wait=finished)
        torch.set_num_threads(threads)


def take_lock(lock: RunLock, dist) -> None:
    """Take the output directory's lock on the main process; every process stops with its error if it is held."""
    from guard import distributed

    try:
        lock.__enter__()
        error = None
    except ConfigError as err:
        error = str(err)
    errors = [e for e in distributed.gather_objects(error, dist) if e]
    if errors:
        raise ConfigError(errors[0])


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
