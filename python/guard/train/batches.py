"""How a step's preference pairs reach the model: padded rows, or one packed row (--packing), and which pairs each
step takes when a token budget sets the batch (--tokens-per-step).

    layout = Layout(packed=decide_packing(cfg.packing, model, dist), pad_id=hf_tok.pad_token_id, device=device)
    batch = layout.pairs(train.encoded, rows)            # tensors of either layout, chosen sequences first
    hidden = backbone(**backbone_inputs(batch)).last_hidden_state
    schedule = plan_steps(cfg, train, dist)              # --batch-size pairs per step, or --tokens-per-step tokens

Packed: the batch's sequences (all chosen, then all rejected) end to end in one row [1, N], position_ids
restarting at 0 for each, no padding anywhere; the attention keeps each sequence to itself (guard.attention), so
every per-sequence number is the padded layout's up to float round-off. `labels` carry -100 on prompts and on
each sequence's first token (guard.data.packed_batch), so a row-wide shift never scores one sequence's token
from the one before it.

Token budget: each of the W processes gets --tokens-per-step / W tokens. guard.data.pack's best-fit-decreasing
fills bins of that size with whole pairs (a pair's chosen and rejected stay together) from the epoch's
(seed, epoch) permutation, which decides ties; a step is W consecutive bins of a (seed, epoch) shuffle of
them, bin r for rank r. So the batches depend only on (data, seed, epoch, budget, W), a resumed run takes the
same ones, and each rank's share is full to its own budget (they differ by a few tokens, not by a factor).
Every epoch has the same number of bins (best fit sees the same costs in the same order whatever the
permutation), W of them per step; the fewer than W bins that do not make a whole step are left out of that
epoch (other ones in another epoch: the shuffle differs), as --batch-size leaves out the pairs past its last
whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from guard import attention, data as gdata, models
from guard.config import ConfigError
from guard.train import loop
from guard.train.inputs import PairData

PADDED_KEYS = ("input_ids", "attention_mask", "labels")
PACKED_KEYS = ("input_ids", "position_ids", "labels")


@dataclass(frozen=True)
class Layout:
    """The tensors a batch of pairs becomes on `device`: padded rows (input_ids, attention_mask, labels [2b, L])
    or, `packed`, one row (input_ids, position_ids, labels [1, N], cu_seqlens [2b + 1] int32, max_seqlen)."""

    packed: bool
    pad_id: int
    device: torch.device

    def pairs(self, encoded: gdata.EncodedPairs, rows: np.ndarray) -> dict:
        if not self.packed:
            return loop.to_tensors(gdata.padded_batch(encoded, rows, self.pad_id), self.device, PADDED_KEYS)
        host = gdata.packed_batch(encoded, rows)
        out = loop.to_tensors(host, self.device, PACKED_KEYS)
        out["cu_seqlens"] = torch.from_numpy(host["cu_seqlens"]).to(self.device, non_blocking=True)
        out["max_seqlen"] = host["max_seqlen"]
        return out


def is_packed(batch: dict) -> bool:
    return "cu_seqlens" in batch


def backbone_inputs(batch: dict) -> dict:
    """The keyword arguments of a backbone forward over `batch` (either layout)."""
    if is_packed(batch):
        return attention.packed_inputs(batch["input_ids"], batch["position_ids"], batch["cu_seqlens"],
                                       batch["max_seqlen"])
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def shifted_labels(batch: dict) -> torch.Tensor:
    """The labels each hidden state predicts: padded [2b, L-1] (hidden[:, :-1] predicts them), packed [N] (the
    row's labels one to the left, -100 last, so hidden [N, H] is used whole)."""
    labels = batch["labels"]
    if not is_packed(batch):
        return labels[:, 1:]
    return torch.nn.functional.pad(labels[0, 1:], (0, 1), value=gdata.IGNORE_INDEX)


def decide_packing(requested: bool | None, model: torch.nn.Module, dist, *, head: str | None = None,
                   announce: bool = True) -> bool:
    """Whether a run packs its batches: --packing (True) needs a model that can (an error saying why not),
    --no-packing (False) never does, and the default (None) packs when the model can and, with `announce`, prints
    why not when it cannot (models.packing_unsupported)."""
    if requested is False:
        return False
    reason = models.packing_unsupported(model, head=head)
    if reason is None:
        return True
    if requested:
        raise ConfigError(f"--packing: {reason}; train on padded batches with --no-packing")
    if announce and dist.is_main:
        print(f"packing: off, {reason}", flush=True)
    return False


# ----------------------------------------------------------------------------------------------------
# The token-budget schedule


def pair_costs(train: PairData) -> np.ndarray:
    return train.encoded.lengths.sum(axis=1)


@dataclass
class TokenSchedule(loop.Schedule):
    """loop.Schedule's interface for --tokens-per-step: steps of W bins of at most `budget` tokens each (module
    docstring). `steps` yields the step's pairs rank by rank; `local_rows` gives this rank's bin."""

    seed: int = 0
    budget: int = 0  # tokens per rank
    world_size: int = 1
    costs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # tokens of each pair
    _cached: tuple = field(default=(None, ()), repr=False)  # (epoch, its bins)

    def epoch_bins(self, epoch: int) -> tuple[np.ndarray, ...]:
        """The bins of `epoch` in step order: best fit on the (seed, epoch) permutation, then a shuffle."""
        if self._cached[0] == epoch:
            return self._cached[1]
        order = loop.epoch_order(self.n_pairs, self.seed, epoch)
        bins = [order[b] for b in gdata.pack(self.costs[order], self.budget, pairs=False)]
        needed = self.steps_per_epoch * self.world_size
        if len(bins) < needed:  # cannot happen: best fit's count depends only on the costs, not their order
            raise RuntimeError(f"epoch {epoch} packed into {len(bins)} bins, fewer than its {needed}")
        shuffle = np.random.default_rng([self.seed, epoch, 0xB1]).permutation(len(bins))
        self._cached = (epoch, tuple(bins[i] for i in shuffle[:needed]))
        return self._cached[1]

    def parts(self, step: int) -> tuple[np.ndarray, ...]:
        """The W bins of `step`, rank by rank."""
        epoch, k = divmod(step, self.steps_per_epoch)
        return self.epoch_bins(epoch)[k * self.world_size:(k + 1) * self.world_size]

    def steps(self, start_step: int, seed: int, peak_lr: float, lr_schedule: str):
        if seed != self.seed:
            raise ValueError(f"this schedule was planned for seed {self.seed}, not {seed}")
        for step in range(start_step, self.total_steps):
            lr = peak_lr * loop.lr_factor(lr_schedule, step, self.warmup_steps, self.total_steps)
            yield step, np.concatenate(self.parts(step)), lr

    def local_rows(self, step: int, rows: np.ndarray, dist) -> np.ndarray:
        return self.parts(step)[dist.rank]


def balanced_epoch_order(categories: np.ndarray, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """The rows of one epoch: the plain shuffled order (loop.epoch_order, the same permutation),
    repaired so that each of its n // batch_size whole batches holds at least one pair of every category. A
    batch missing a category takes one of its pairs (the next of a shuffled queue of that category's pairs,
    reshuffled when used up: rare pairs come round again) in place of a pair of the batch's most frequent
    category. Batches that miss nothing are left as they were, so data whose batches already hold every
    category trains exactly as without it. A function of (seed, epoch) alone, so a resumed run visits the
    same batches; with more categories than batch_size, or fewer than 2, it is the plain order."""
    categories = np.asarray(categories)
    n = len(categories)
    order = loop.epoch_order(n, seed, epoch).copy()
    present = np.unique(categories)
    if not 2 <= len(present) <= batch_size:
        return order
    rng = np.random.default_rng([seed, epoch, 0xBA1A])
    members = {c: np.flatnonzero(categories == c) for c in present}
    queues: dict[int, list[int]] = {c: [] for c in present}
    for start in range(0, (n // batch_size) * batch_size, batch_size):
        batch = order[start:start + batch_size]  # a view: edits land in `order`
        for c in present:
            if (categories[batch] == c).any():
                continue
            if not queues[c]:
                queues[c] = list(rng.permutation(members[c]))
            cats = categories[batch]
            values, counts = np.unique(cats, return_counts=True)
            common = values[np.argmax(counts)]
            batch[np.flatnonzero(cats == common)[-1]] = queues[c].pop()
    return order


def plan_steps(cfg, train: PairData, dist) -> loop.Schedule:
    """--batch-size pairs per step (loop.plan_steps; with --balanced-batches in balanced_epoch_order), or with
    --tokens-per-step a TokenSchedule."""
    if getattr(cfg, "tokens_per_step", None) is None:
        balanced = getattr(cfg, "balanced_batches", False) and len(train.category_names) > 1
        order = partial(balanced_epoch_order, train.categories, cfg.batch_size) if balanced else None
        return loop.plan_steps(cfg, len(train), order=order)
    world = dist.world_size
    budget = cfg.tokens_per_step // world
    costs = train.encoded.lengths.sum(axis=1)
    longest = int(costs.max())
    if longest > budget:
        share = f"gives each of the {world} processes {budget} tokens, fewer" if world > 1 else "is fewer"
        raise ConfigError(f"--tokens-per-step {cfg.tokens_per_step} {share} than the {longest} tokens of the longest "
                          f"training pair (chosen + rejected); raise it to at least {longest * world} or lower "
                          f"--max-length")
    steps_per_epoch = len(gdata.pack(costs, budget, pairs=False)) // world  # the same count in every epoch
    if steps_per_epoch == 0:
        raise ConfigError(f"--tokens-per-step {cfg.tokens_per_step}: the {len(train)} training pairs "
                          f"({int(costs.sum())} tokens) do not fill one step's {world} bins of {budget} tokens")
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    return TokenSchedule(len(train), 0, steps_per_epoch, total, int(cfg.warmup_ratio * total), seed=cfg.seed,
                         budget=budget, world_size=world, costs=costs)
