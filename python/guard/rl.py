"""PPO's math on per-token tensors: the KL penalty to a reference, KL-coefficient controllers, generalized
advantage estimation, masked whitening, and the clipped policy and value losses. Pure functions of tensors
(plus two small controller classes), used by the PPO recipe (guard/train/ppo.py) and callable from any loop.

    kl = kl_penalty(logp, ref_logp, "k1")                        # [B, T] per response token
    rewards = -ctl.value * kl;  rewards[rows, last] += score      # the sequence reward on its last token
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    adv = masked_whiten(adv, mask)
    pg, pg_clipfrac, approx_kl = policy_loss(new_logp, logp, adv, mask, clip=0.2)
    vf, vf_clipfrac = value_loss(new_values, values, ret, mask, clip=0.2)
    ctl.update(kl.sum(1).mean().item(), n_steps=B)

Conventions. Every [B, T] tensor is indexed by response token: position t of row b is the t-th generated
token, `mask[b, t]` says it exists (a prefix of each row: responses are right-padded). values[b, t] is the
value of the state before token t is generated; the state after the last token is terminal (value 0).
Masked positions never contribute: their advantages and returns are 0 and every mean is over `mask`.

KL estimators of KL(π || π_ref) per sampled token (Schulman, "Approximating KL divergence", 2020), with
log r = ref_logp − logp:  k1 = −log r (unbiased, can be negative),  k2 = ½ (log r)²,  k3 = (r − 1) − log r
(unbiased and ≥ 0).

Losses take an optional `denominator`: the loss is Σ_masked(term) / denominator, so micro-batches (and ranks
whose gradients are averaged) add up to the token mean over a whole minibatch; by default the denominator is
this mask's token count, i.e. the masked mean.
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π || π_ref) from the sampled tokens' log-probs (module docstring)."""
    log_ratio = ref_logp - logp
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the positions where mask is true (0 when there are none)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True,
                  stats: tuple[float, float, float] | None = None, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / sqrt(var + eps) over the masked positions (unbiased variance; with shift_mean=False the
    mean is added back). `stats` = (count, sum, sum of squares) of the whole batch when x is one rank's share
    of it (see whiten_stats), so every rank whitens with the same numbers. Masked positions give 0."""
    count, total, total_sq = stats if stats is not None else whiten_stats(x, mask)
    if count < 1:
        return torch.zeros_like(x)
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0) * (count / (count - 1) if count > 1 else 0.0)
    out = (x - mean) * (var + eps) ** -0.5
    if not shift_mean:
        out = out + mean
    return out * mask.to(out.dtype)


def whiten_stats(x: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, float]:
    """(count, sum, sum of squares) of x over the masked positions, in float64: sum them over ranks for
    masked_whiten's `stats`."""
    x = torch.where(mask.bool(), x.detach().double(), 0.0)
    return float(mask.sum()), float(x.sum()), float((x * x).sum())


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over response tokens: (advantages, returns), both [B, T].

    δ_t = r_t + γ·V_{t+1} − V_t and A_t = δ_t + γλ·A_{t+1}, with V and A zero past each row's last token;
    returns = A + V. Masked positions are 0 in both."""
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError(f"rewards, values and mask must be [B, T] alike, got {tuple(rewards.shape)}, "
                         f"{tuple(values.shape)} and {tuple(mask.shape)}")
    keep = mask.bool()
    m = keep.to(rewards.dtype)
    rewards, values = torch.where(keep, rewards, 0.0), torch.where(keep, values, 0.0)  # no NaN from padding
    advantages = torch.zeros_like(rewards)
    if rewards.shape[1] == 0:
        return advantages, torch.zeros_like(values)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * m[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * m


def _reduce(terms: torch.Tensor, mask: torch.Tensor, denominator: float | None) -> torch.Tensor:
    denom = mask.sum().clamp(min=1).to(terms.dtype) if denominator is None else denominator
    return torch.where(mask.bool(), terms, 0.0).sum() / denom


def _larger(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """max(a, b) whose gradient goes wholly to `a` on a tie (torch.maximum would split it in half)."""
    return torch.where(b > a, b, a)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                clip: float, denominator: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate: (loss, clip fraction, approximate KL(old || new)).

    loss = Σ max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) / denominator with ρ = exp(logp − old_logp); the clip fraction
    is the share of masked tokens where the clipped term is the larger; approx KL = masked mean of
    ½ (logp − old_logp)². The last two are detached."""
    log_ratio = torch.where(mask.bool(), logp - old_logp, 0.0)  # padding never overflows exp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = _reduce(_larger(unclipped, clipped), mask, denominator)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(0.5 * log_ratio.square(), mask)
    return loss, clipfrac, approx_kl


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *,
               clip: float, denominator: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: (loss, clip fraction). loss = Σ ½·max((V − R)², (V_clip − R)²) / denominator with
    V_clip = old + clip(V − old, −ε, ε); the clip fraction (detached) is the share of masked tokens where
    the clipped error is the larger."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    error = (values - returns).square()
    error_clipped = (clipped_values - returns).square()
    loss = _reduce(0.5 * _larger(error, error_clipped), mask, denominator)
    with torch.no_grad():
        clipfrac = masked_mean((error_clipped > error).float(), mask)
    return loss, clipfrac


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, value: float):
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. (2019)'s proportional controller toward a target KL: after a batch of `n_steps`
    rollouts with mean KL `current_kl`, β ← β · (1 + clip(current_kl / target − 1, −0.2, 0.2) · n_steps /
    horizon)."""

    def __init__(self, value: float, target: float, horizon: int):
        if not target > 0 or isinstance(horizon, bool) or int(horizon) != horizon or horizon < 1:
            raise ValueError(f"the adaptive KL controller needs target > 0 and horizon > 0, got {target}, {horizon}")
        super().__init__(value)
        self.target, self.horizon = float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
