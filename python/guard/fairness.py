"""GUARD's fairness term: what a training step adds to the Bradley–Terry (or preference) loss so that the
rewards stop telling the categories apart (GUARD A.6), in two kinds that combine.

    fair = Fairness(num_categories, penalty="moments")              # the default: see below
    out = guard.ops.bt_loss(r_chosen, r_rejected, categories=cats, num_categories=C)
    loss, adv_loss = fair(out.loss, lambda_adv, out.moments, out.counts, r_chosen, r_rejected, cats)
    loss.backward()

penalty "moments": a direct penalty on the per-category moments the fused ops return (moment_penalty):
    the share of the rewards' variance the category explains (η², the between-category spread of the means),
    the spread of the categories' log-variances and, with non-zero weights, of their skewness and kurtosis.
    Nothing to train, no game: its gradient always points to equal distributions and vanishes there.
penalty "adversary" (the paper's): a classifier q_φ tries to recover the category from the rewards, and the
    model step works against it. Per batch: (1) the loss, (2) `steps` Adam steps of q_φ on the detached
    features (adversary_step), (3) the model's loss L − λ·adversary_penalty. q_φ reads "moments" (the paper's
    appendix: one sample per category present in the batch, its 8 features the mean, variance, skewness and
    kurtosis of its chosen and rejected rewards) or "rewards" (the main text: one sample per pair, (r_c, r_r)).
    The model maximises q_φ's cross-entropy ("ce", the paper), its predictive entropy ("entropy", the authors'
    code) or minimises its divergence from chance, KL(prior ‖ q_φ(·|x)) with the prior the batch's category
    shares ("chance": the model is pushed to where q_φ cannot tell, and no further).
penalty "moments+adversary": both terms, λ times each.

Whatever the penalty, with two or more categories an adversary is trained every step: with λ = 0 or
penalty "moments" it only watches, and its loss (logged as adv_loss) says how much the rewards still leak.
guard.train.batches.balanced_epoch_order repairs the shuffled batch order so that every batch holds every
category.

Why "moments" with balanced batches is the default (issue 18; bench/results/fairness-*.md: five generators of
guard.synthetic, three seeds, the tiny preset): the adversary fights a moving target. The paper's moments
adversary sees one sample per category and batch (two for two categories), learns little from them, and the
model's ascent on its cross-entropy — unbounded, so it never settles at chance — cost 7 points of pair
accuracy on one generator and left the MI unchanged on another. Reading each pair's rewards does better, but
its push fades where q_φ is unsure while the post-hoc audit (an MLP trained to convergence) still finds the
rest: it missed on two of five generators. More adversary steps, or the bounded "chance" and "entropy"
objectives, did not help. The direct penalty has nothing to chase: its gradient points to equal means and
variances and vanishes there. Its details come from failures too: the mean alone leaves a variance gap; the
skewness and kurtosis terms are noisy enough to wreck training; the floor of one logit keeps it from
swamping the loss at initialisation; and categories absent from most batches keep their bias unless the
batches are balanced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from guard.losses import MOMENT_VARIANCE_FLOOR

MODES = ("moments", "rewards")
IGNORE = -100  # the target of a category absent from the batch: no sample
OBJECTIVES = ("ce", "entropy", "chance")
PENALTIES = ("moments", "adversary", "moments+adversary")
#: Default weights of moment_penalty's terms: η² of the means, spread of log-variances, of skewness, of kurtosis.
MOMENT_WEIGHTS = (4.0, 4.0, 0.0, 0.0)


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


def _target_shares(targets: torch.Tensor, num_categories: int) -> torch.Tensor:
    """The categories' shares among the rows with a target (the batch's prior), [C], without a sync."""
    keep = targets != IGNORE
    counts = torch.zeros(num_categories, device=targets.device).index_add_(
        0, torch.where(keep, targets, 0), keep.float())
    return counts / counts.sum().clamp(min=1)


def adversary_penalty(adversary: CategoryAdversary, features: torch.Tensor, targets: torch.Tensor,
                      *, objective: str = "ce") -> torch.Tensor:
    """What the model step maximises (it subtracts λ times this): the adversary's cross-entropy on the
    true categories ("ce"), the entropy of its prediction ("entropy"), or minus its divergence from chance,
    −KL(π ‖ q_φ(·|x)) with π the categories' shares among the rows ("chance": 0 at best, where q_φ predicts
    the prior everywhere). Gradients reach the features (hence the model) but not φ: the adversary's
    parameters are held fixed inside."""
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
        logp = F.log_softmax(logits.float(), dim=-1)
        if objective == "entropy":
            per_row = -(logp.exp() * logp).sum(-1)
        else:
            prior = _target_shares(targets, logits.shape[-1])
            per_row = -(prior * (torch.log(prior.clamp(min=1e-30)) - logp)).sum(-1)
    return _mean_over_targets(per_row, targets)


# ----------------------------------------------------------------------------------------------------
# The direct penalty on the per-category moments


def pooled_moments(moments: torch.Tensor) -> torch.Tensor:
    """[C, K, 4] per-column moments (mean, population variance, skewness, excess kurtosis of K equal-sized
    columns of values, e.g. the chosen and the rejected rewards of each category, as guard.ops returns
    them) -> [C, 4], the same four moments of each category's K columns pooled into one sample.

    With d_k = μ_k − μ the offset of column k from the pooled mean μ = mean_k μ_k, the pooled central moments
    are the column averages of m2_k + d², m3_k + 3·m2_k·d + d³ and m4_k + 4·m3_k·d + 6·m2_k·d² + d⁴, where
    m3_k = g1_k·m2_k^1.5 and m4_k = (g2_k + 3)·m2_k². A pooled variance below 1e-12 gives skewness =
    kurtosis = 0, as guard.losses.category_moments does."""
    if moments.dim() != 3 or moments.shape[-1] != 4:
        raise ValueError(f"moments must be [C, K, 4], got shape {tuple(moments.shape)}")
    m = moments.double()
    mean_k, m2_k, g1_k, g2_k = m.unbind(-1)
    m3_k = g1_k * m2_k.clamp(min=0) ** 1.5
    m4_k = (g2_k + 3) * m2_k**2
    mean = mean_k.mean(1)
    d = mean_k - mean[:, None]
    m2 = (m2_k + d**2).mean(1)
    m3 = (m3_k + 3 * m2_k * d + d**3).mean(1)
    m4 = (m4_k + 4 * m3_k * d + 6 * m2_k * d**2 + d**4).mean(1)
    varied = m2 > MOMENT_VARIANCE_FLOOR
    safe = torch.where(varied, m2, torch.ones_like(m2))  # finite gradients where m2 ~ 0
    skew = torch.where(varied, m3 / safe**1.5, torch.zeros_like(m2))
    kurt = torch.where(varied, m4 / safe**2 - 3, torch.zeros_like(m2))
    return torch.stack([mean, m2, skew, kurt], dim=-1).to(moments.dtype)


def _weighted_spread(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_c w_c (v_c − v̄)² with v̄ = Σ_c w_c v_c, for weights summing to 1 (or all 0: then 0)."""
    center = (weights * values).sum()
    return (weights * (values - center) ** 2).sum()


def moment_penalty(moments: torch.Tensor, counts: torch.Tensor,
                   weights: tuple[float, float, float, float] | list[float] = MOMENT_WEIGHTS,
                   *, min_count: int = 2, scale_floor: float = 1.0) -> torch.Tensor:
    """The direct fairness penalty on a batch's per-category reward moments: 0 when every category's rewards
    have the same mean, variance (and, with their weights, skewness and kurtosis), scale-free, differentiable.

    moments [C, K, 4] and counts [C] as guard.ops.bt_loss / fused_preference_loss return them (K = 2: chosen
    and rejected rewards, pooled here with pooled_moments, since the audit sees the rewards of both). With
    w_c = n_c / Σ n the categories' shares of the batch (each pair pulls alike; weighing categories equally
    instead lets one or two pairs of a rare category, noisy as their mean is, drive the loss: the model
    collapsed to constant rewards on pku19, issue 18), μ_c, σ²_c the pooled mean and variance:

      weights[0] · Σ w_c (μ_c − μ̄)² / (Σ w_c (μ_c − μ̄)² + Σ w_c σ²_c + s)    the share of the variance the
                                          category explains (η², the between-category spread of the means over
                                          the total variance), with s = scale_floor added below
    + weights[1] · Σ w'_c (log(σ²_c + s) − mean)²   spread of the log-variances
    + weights[2] · Σ w'_c (g1_c − mean)²            spread of the skewness
    + weights[3] · Σ w'_c (g2_c − mean)²            spread of the excess kurtosis

    where w' are the weights renormalised over the categories with at least `min_count` pairs in the batch
    (one pair's two rewards say little about a shape); categories absent from the batch weigh nothing. A
    batch with fewer than two categories gives 0. Returns a float32 scalar (the math in float64).

    The floor s (default 1: one logit, the unit of Bradley–Terry and DPO rewards) keeps the penalty small
    while the rewards are: a ratio of variances alone is scale-free, so its gradient grows as 1/scale, and
    at initialisation (rewards near 0, their category statistics pure noise) it would swamp the loss and
    keep the model from ever learning (seen with 19 categories, issue 18). Above one logit it is η² and the
    spread of log-variances, nearly scale-free.
    """
    if moments.dim() != 3 or moments.shape[-1] != 4 or counts.shape != moments.shape[:1]:
        raise ValueError(f"moments must be [C, K, 4] and counts [C], got {tuple(moments.shape)} and "
                         f"{tuple(counts.shape)}")
    if len(weights) != 4 or any(w < 0 for w in weights):
        raise ValueError(f"moment weights must be 4 non-negative numbers (mean, variance, skewness, kurtosis), "
                         f"got {list(weights)}")
    pooled = pooled_moments(moments).double()
    n = counts.double()
    share = n / n.sum().clamp(min=1)
    mean, var, skew, kurt = pooled.unbind(-1)
    total = torch.zeros((), dtype=torch.float64, device=moments.device)
    if weights[0]:
        between = _weighted_spread(mean, share)
        within = (share * var).sum()
        total = total + weights[0] * between / (between + within + scale_floor).clamp(min=MOMENT_VARIANCE_FLOOR)
    if any(weights[1:]):
        eligible = counts >= min_count
        shape_share = torch.where(eligible, n, torch.zeros_like(n))
        shape_share = shape_share / shape_share.sum().clamp(min=1)
        floor = max(scale_floor, MOMENT_VARIANCE_FLOOR)  # a constant category: finite, not log 0
        for weight, values in ((weights[1], torch.log(var.clamp(min=0) + floor)), (weights[2], skew),
                               (weights[3], kurt)):
            if weight:
                total = total + weight * _weighted_spread(values, shape_share)
    return total.float()


# ----------------------------------------------------------------------------------------------------
# A training step's fairness term


class Fairness:
    """The fairness term of a recipe's step and the adversary it trains (see the module docstring).

    penalty: "moments", "adversary" or "moments+adversary"; adversary: "rewards" or "moments" (its input);
    objective: "ce", "entropy" or "chance" (what the model does to the adversary); hidden, lr, steps: its
    width, Adam learning rate and updates per model step; moment_weights: moment_penalty's four weights.
    The adversary (built here, on `device`) is trained whatever the penalty: with λ = 0 or penalty
    "moments" it only watches. `seed` seeds its initial weights in a forked RNG, so the model's initial
    weights and batches do not depend on it."""

    def __init__(self, num_categories: int, *, penalty: str = "moments", adversary: str = "rewards",
                 objective: str = "chance", hidden: int = 64, lr: float = 1e-2, steps: int = 1,
                 moment_weights=MOMENT_WEIGHTS, device: torch.device | str | None = None, seed: int = 0):
        if penalty not in PENALTIES:
            raise ValueError(f"fairness penalty must be one of {PENALTIES}, got {penalty!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"adversary objective must be one of {OBJECTIVES}, got {objective!r}")
        if steps < 1:
            raise ValueError(f"adversary steps must be at least 1, got {steps}")
        if len(moment_weights) != 4 or any(w < 0 for w in moment_weights):
            raise ValueError("moment weights must be 4 non-negative numbers (mean, variance, skewness, kurtosis), "
                             f"got {list(moment_weights)}")
        self.penalty, self.objective, self.steps = penalty, objective, steps
        self.moment_weights = tuple(float(w) for w in moment_weights)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.adversary = CategoryAdversary(num_categories, mode=adversary, hidden=hidden).to(device)
        self.optimizer = torch.optim.Adam(self.adversary.parameters(), lr=lr)
        self.last_moment_penalty: torch.Tensor | None = None  # detached, for logging

    def __call__(self, loss: torch.Tensor, lambda_adv: float, moments: torch.Tensor | None,
                 counts: torch.Tensor | None, chosen: torch.Tensor, rejected: torch.Tensor,
                 categories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the model's loss, the adversary's last loss): `steps` adversary updates on the batch's detached
        features, then L + λ·moment_penalty and/or L − λ·adversary_penalty, as the penalty says."""
        features, targets = self.adversary.features(moments, counts, chosen, rejected, categories)
        for _ in range(self.steps):
            adv_loss = adversary_step(self.adversary, self.optimizer, features, targets)
        self.last_moment_penalty = None
        if "moments" in self.penalty.split("+"):
            if moments is None or counts is None:
                raise ValueError("the moments penalty needs the moments and counts of the batch (pass categories "
                                 "to the loss op)")
            term = moment_penalty(moments, counts, self.moment_weights)
            self.last_moment_penalty = term.detach()
            if lambda_adv > 0:
                loss = loss + lambda_adv * term
        if lambda_adv > 0 and "adversary" in self.penalty.split("+"):
            loss = loss - lambda_adv * adversary_penalty(self.adversary, features, targets, objective=self.objective)
        return loss, adv_loss
