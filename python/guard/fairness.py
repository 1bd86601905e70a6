"""GUARD's fairness adversary: a small classifier q_φ that tries to recover the category from the rewards,
and the alternating update that trains the reward model (or policy) to defeat it (DESIGN.md §3, GUARD A.6).

    adversary = CategoryAdversary(num_categories, mode="moments")
    adv_opt = torch.optim.Adam(adversary.parameters(), lr=1e-3)
    out = guard.ops.bt_loss(r_chosen, r_rejected, categories=cats, num_categories=C)
    features, targets = adversary.features(out.moments, out.counts, r_chosen, r_rejected, cats)
    adv_loss = adversary_step(adversary, adv_opt, features, targets)          # (2) fit q_φ on detached features
    loss = out.loss - lambda_adv * adversary_penalty(adversary, features, targets, objective="ce")  # (3)
    loss.backward()

Two inputs for q_φ: "moments" (the paper's appendix): one sample per category present in the batch, its
8 features the mean, variance, skewness and excess kurtosis of that category's chosen and rejected
rewards; "rewards" (the paper's main text): one sample per pair, its features (r_c, r_r). Categories
absent from a batch contribute no sample. The model step maximises the adversary's cross-entropy
(objective "ce", the paper) or its predictive entropy (objective "entropy", the authors' code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("moments", "rewards")
IGNORE = -100  # the target of a category absent from the batch: no sample
OBJECTIVES = ("ce", "entropy")


class CategoryAdversary(nn.Module):
    """q_φ(c | features): a 2-layer MLP (ReLU), logits over the categories."""

    def __init__(self, num_categories: int, *, mode: str = "moments", hidden: int = 64):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"adversary mode must be one of {MODES}, got {mode!r}")
        if num_categories < 2:
            raise ValueError(f"the adversary needs at least 2 categories, got {num_categories}")
        self.mode = mode
        self.num_categories = num_categories
        in_features = 8 if mode == "moments" else 2
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_categories))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # No per-batch standardisation: with one sample per category (moments mode) it would turn any
        # difference between categories, however small, into ±1 and the model could never hide it.
        return self.net(features)

    def features(self, moments: torch.Tensor | None, counts: torch.Tensor | None, chosen_rewards: torch.Tensor,
                 rejected_rewards: torch.Tensor, categories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, targets) for this batch, differentiable with respect to the rewards.

        moments [C, 2, 4] and counts [C] come from guard.ops.bt_loss / fused_preference_loss; every category
        gives a row, and those absent from the batch (counts == 0) get the target IGNORE, so the losses
        skip them without a host-device sync. In "rewards" mode each pair gives (r_c, r_r)."""
        if self.mode == "rewards":
            return torch.stack([chosen_rewards, rejected_rewards], dim=1).float(), categories
        if moments is None or counts is None:
            raise ValueError("moments mode needs the moments and counts of the batch (pass categories to the loss op)")
        ids = torch.arange(moments.shape[0], device=moments.device)
        return moments.reshape(moments.shape[0], 8).float(), torch.where(counts > 0, ids, IGNORE)


def _mean_over_targets(per_row: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of per_row over the rows whose target is not IGNORE (0 when there is none), without a sync."""
    keep = (targets != IGNORE).to(per_row.dtype)
    return (per_row * keep).sum() / keep.sum().clamp(min=1)


def adversary_step(adversary: CategoryAdversary, optimizer: torch.optim.Optimizer,
                   features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """One adversary update: minimise CE(q_φ(features), targets) on detached features (rows whose target
    is IGNORE skipped). Returns the loss as a detached tensor (reading it is the caller's sync)."""
    per_row = F.cross_entropy(adversary(features.detach()), targets, ignore_index=IGNORE, reduction="none")
    loss = _mean_over_targets(per_row, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def adversary_penalty(adversary: CategoryAdversary, features: torch.Tensor, targets: torch.Tensor,
                      *, objective: str = "ce") -> torch.Tensor:
    """What the model step maximises (it subtracts λ times this): the adversary's cross-entropy on the
    true categories ("ce") or the entropy of its prediction ("entropy"). Gradients reach the features
    (hence the model) but not φ: the adversary's parameters are held fixed inside."""
    if objective not in OBJECTIVES:
        raise ValueError(f"adversary objective must be one of {OBJECTIVES}, got {objective!r}")
    params = list(adversary.parameters())
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        logits = adversary(features)
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)
    if objective == "ce":
        per_row = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="none")
    else:
        logp = F.log_softmax(logits, dim=-1)
        per_row = -(logp.exp() * logp).sum(-1)
    return _mean_over_targets(per_row, targets)
