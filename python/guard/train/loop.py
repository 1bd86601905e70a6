"""The training loop's pieces that every recipe spells out in its own loop: seeding, the schedule (which
pairs each step takes, at what learning rate), the optimizers with GUARD's fairness adversary, and batches
to tensors and scores.

    schedule = plan_steps(cfg, len(train))
    opt = Optimization(cfg, model, num_categories, device)
    for step, rows, lr in schedule.steps(start_step, cfg.seed, cfg.lr, cfg.lr_schedule):
        opt.set_lr(lr)
        loss, adv_loss = opt.fairness(out.loss, lambda_adv, out.moments, out.counts, r_c, r_r, cats)
        opt.step(loss)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from guard import data as gdata
from guard.config import ConfigError
from guard.train.inputs import PairData
from guard.train.options import TrainOptions
from guard.train.rundir import NonFiniteLoss


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
class Schedule:
    """Which pairs each optimizer step takes and at what learning rate: epochs of `steps_per_epoch` full
    batches in a (seed, epoch) order, linear warmup then the decay of `lr_schedule`."""

    n_pairs: int
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    order: Callable[[int, int], np.ndarray] | None = None  # (seed, epoch) -> the epoch's rows; None: epoch_order

    def steps(self, start_step: int, seed: int, peak_lr: float, lr_schedule: str):
        """(step, rows of the global batch, learning rate) for every step from `start_step` on."""
        order, order_epoch = None, -1
        for step in range(start_step, self.total_steps):
            epoch, k = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:
                order = self.order(seed, epoch) if self.order else epoch_order(self.n_pairs, seed, epoch)
                order_epoch = epoch
            rows = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield step, rows, peak_lr * lr_factor(lr_schedule, step, self.warmup_steps, self.total_steps)

    def epoch(self, done: int) -> float:
        return round(done / self.steps_per_epoch, 4)

    def local_rows(self, step: int, rows: np.ndarray, dist) -> np.ndarray:
        """This rank's share of the rows `steps` gave for `step` (an equal, contiguous one)."""
        from guard import distributed

        return distributed.local_rows(rows, dist)


def plan_steps(cfg: TrainOptions, n_pairs: int, what: str = "training pairs",
               order: Callable[[int, int], np.ndarray] | None = None) -> Schedule:
    """--batch-size items per step in a (seed, epoch) order: `order(seed, epoch)`, or epoch_order."""
    steps_per_epoch = n_pairs // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the {n_pairs} {what}")
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    return Schedule(n_pairs, cfg.batch_size, steps_per_epoch, total, int(cfg.warmup_ratio * total), order)


class Optimization:
    """The model's AdamW and, with two or more categories, GUARD's fairness term (guard.fairness.Fairness: the
    penalty of --fairness and an adversary with its Adam). With λ = 0 (or the moments penalty) the adversary
    only watches: its loss says how much the rewards leak, and it never enters the model's loss. It is built
    in a forked RNG so the model's initial weights and batches do not depend on λ."""

    def __init__(self, cfg: TrainOptions, model: torch.nn.Module, num_categories: int, device: torch.device):
        from guard.fairness import Fairness

        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           fused=device.type == "cuda")
        self.max_grad_norm = cfg.max_grad_norm
        self.fair = self.adversary = self.adv_optimizer = None
        if num_categories >= 2:
            self.fair = Fairness(num_categories, penalty=cfg.fairness, adversary=cfg.adversary,
                                 objective=cfg.adv_objective, hidden=cfg.adv_hidden, lr=cfg.adv_lr,
                                 steps=cfg.adv_steps, moment_weights=cfg.moment_weights, device=device,
                                 seed=cfg.seed + 1)
            self.adversary, self.adv_optimizer = self.fair.adversary, self.fair.optimizer

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
        """The adversary's steps on the detached features of the batch's rewards, then the model's loss
        L + λ·fairness penalty (guard.fairness). Returns (the model's loss, the adversary's loss or None)."""
        if self.fair is None:
            return loss, None
        return self.fair(loss, lambda_adv, moments, counts, chosen, rejected, categories)

    def fair_penalty(self) -> float | None:
        """The last step's moments penalty (for the metrics; None without one)."""
        term = None if self.fair is None else self.fair.last_moment_penalty
        return None if term is None else term.item()

    def step(self, loss: torch.Tensor) -> None:
        """backward, clip (max_grad_norm > 0), AdamW step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()


def to_tensors(batch: dict[str, np.ndarray], device: torch.device,
               keys: Sequence[str] = ("input_ids", "attention_mask")) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(batch[k]).to(device, non_blocking=True) for k in keys}


@torch.no_grad()
def score_pairs(score: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]], data: PairData,
                batch_size: int, pad_id: int, dist, keys: Sequence[str] = ("input_ids", "attention_mask"),
                batch_of: Callable[[np.ndarray], dict] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """float64 (chosen, rejected) scores of every pair in `data` (in order), the work split over the ranks;
    `score` maps one rank's pair batch to its chosen and rejected scores: padded (tensors `keys`), or what
    `batch_of(rows)` makes of the rows (e.g. a packed row, guard.train.batches.Layout)."""
    from guard import distributed

    chosen, rejected = [], []
    for n, mine in distributed.rank_chunks(len(data), batch_size, dist):
        batch = (batch_of(mine) if batch_of is not None
                 else to_tensors(gdata.padded_batch(data.encoded, mine, pad_id), dist.device, keys))
        r_c, r_r = score(batch)
        chosen.append(distributed.gather_rows(r_c, dist)[:n].double().cpu())
        rejected.append(distributed.gather_rows(r_r, dist)[:n].double().cpu())
    return torch.cat(chosen).numpy(), torch.cat(rejected).numpy()


class FiniteWatch:
    """Watches the loss for its first non-finite value without a host sync per step: `watch` adds one device-side
    comparison; `check` (at log and checkpoint steps and at the end, where the loop syncs anyway) reads the first
    bad step, agreed over the ranks, and stops the run with an error naming it."""

    def __init__(self, device: torch.device, dist=None):
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.dist = dist

    def watch(self, step: int, loss: torch.Tensor) -> None:
        """Note `step` (1-based) if its loss is NaN or infinite and no earlier step's was."""
        bad = ~torch.isfinite(loss.detach()).all()
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)

    def check(self, lr: float | None = None) -> None:
        first = self.first_bad
        if self.dist is not None and self.dist.enabled:
            import torch.distributed as tdist

            first = torch.where(first < 0, torch.iinfo(torch.int64).max, first)
            tdist.all_reduce(first, op=tdist.ReduceOp.MIN)
            first = torch.where(first == torch.iinfo(torch.int64).max, -1, first)
        step = int(first)
        if step >= 0:
            hint = f" (--lr {lr:g})" if lr is not None else ""
            raise NonFiniteLoss(f"step {step}: the loss is not finite (NaN or infinite); the run stopped before "
                                f"writing that step's metrics or a checkpoint. Try a lower learning rate{hint}, "
                                "--max-grad-norm, or look for extreme values in the data")


def require_finite(step: int, values: dict) -> None:
    """Stop the run at `step` when one of `values` (numbers the loop already holds on the host) is NaN or infinite."""
    bad = [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise NonFiniteLoss(f"step {step}: " + ", ".join(f"{k} = {values[k]}" for k in bad) + " is not finite; the "
                            "run stopped before writing that step's metrics or a checkpoint. Try a lower learning rate")
