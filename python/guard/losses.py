"""Reference math for every guard loss and the per-category reward moments, in plain torch.

This is the spec the fused kernels (`guard.ops`) are tested against: simple, float64-capable and
differentiable, with the formulas and paper equations in each docstring (DESIGN.md §3). Shapes: B pairs;
row i of a chosen tensor and row i of its rejected twin are one pair. Log-ratios are sequence sums
`log π(y|x) − log π_ref(y|x)` over response tokens.

    from guard.losses import pair_losses
    loss = pair_losses(chosen_logratios, rejected_logratios, loss_type="sigmoid", beta=0.1).mean()

Inputs are checked (shapes, finiteness, category range) and a ValueError names what is wrong; that check
synchronises with the device, which is fine for a reference and is why the training hot path uses
`guard.ops` instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "apo_zero", "apo_down", "kto_pair")

#: A category whose population variance is below this has skewness = kurtosis = 0 (DESIGN.md §3).
MOMENT_VARIANCE_FLOOR = 1e-12


def first_index(mask: torch.Tensor) -> int | tuple[int, ...] | None:
    """The index of the first True in `mask` (an int for 1-D, a tuple otherwise), or None: what error
    messages name."""
    if not bool(mask.any()):
        return None
    first = tuple(int(i) for i in mask.nonzero()[0])
    return first[0] if len(first) == 1 else first


def check_category_values(categories: torch.Tensor, num_categories: int) -> None:
    """ValueError unless categories is an integer tensor with every value in [0, num_categories)."""
    if categories.dtype.is_floating_point or categories.dtype == torch.bool:
        raise ValueError(f"categories must be an integer tensor, got {categories.dtype}")
    row = first_index((categories < 0) | (categories >= num_categories))
    if row is not None:
        raise ValueError(f"categories[{row}] = {int(categories[row])} is out of range [0, {num_categories})")


def _check_finite(name: str, x: torch.Tensor) -> None:
    where = first_index(~torch.isfinite(x))
    if where is not None:
        raise ValueError(f"{name} has a non-finite value (NaN or inf) at index {where}")


def _check_pair(chosen: torch.Tensor, rejected: torch.Tensor, what: str) -> None:
    if chosen.dim() != 1:
        raise ValueError(f"chosen_{what} must be 1-D [B], got shape {tuple(chosen.shape)}")
    if chosen.shape != rejected.shape:
        raise ValueError(
            f"chosen_{what} and rejected_{what} must have the same shape, "
            f"got {tuple(chosen.shape)} and {tuple(rejected.shape)}"
        )
    _check_finite(f"chosen_{what}", chosen)
    _check_finite(f"rejected_{what}", rejected)


def check_preference_params(loss_type: str, beta: float, label_smoothing: float, allowed: Sequence[str]) -> None:
    """ValueError unless loss_type is in `allowed`, beta > 0 and label_smoothing is in [0, 0.5)."""
    if loss_type not in allowed:
        raise ValueError(f"loss_type must be one of {tuple(allowed)}, got {loss_type!r}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")


def pair_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    loss_type: str,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair preference losses, Tensor[B], from the policy/reference log-ratios of each pair.

    With lr_c, lr_r the chosen and rejected log-ratios and Δ = lr_c − lr_r:

    - ``sigmoid`` (DPO, Rafailov et al. 2023; ε = label_smoothing, the conservative DPO of cDPO):
      ``-(1-ε)·logσ(βΔ) - ε·logσ(-βΔ)``
    - ``ipo`` (Azar et al. 2023): ``(Δ - 1/(2β))²``
    - ``apo_zero`` (APO eq. 7, plus a constant): ``1 - σ(β·lr_c) + σ(β·lr_r)``
    - ``apo_down`` (APO eq. 8, plus a constant): ``σ(β·lr_c) + 1 - σ(β·(lr_c - lr_r))``
    - ``kto_pair`` (APO eq. 9, TRL's paired KTO): with the batch reference points
      ``z_c = mean(lr_c).clamp(min=0)`` and ``z_r = mean(lr_r).clamp(min=0)``, both detached,
      ``(1 - σ(β(lr_c - z_r)) + 1 - σ(β(z_c - lr_r))) / 2``

    The constants in APO's losses change no gradient; they keep every loss non-negative.
    """
    check_preference_params(loss_type, beta, label_smoothing, LOSS_TYPES)
    _check_pair(chosen_logratios, rejected_logratios, "logratios")
    lr_c, lr_r = chosen_logratios, rejected_logratios
    if loss_type == "sigmoid":
        z = beta * (lr_c - lr_r)
        return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    if loss_type == "ipo":
        return (lr_c - lr_r - 1 / (2 * beta)) ** 2
    if loss_type == "apo_zero":
        return 1 - torch.sigmoid(beta * lr_c) + torch.sigmoid(beta * lr_r)
    if loss_type == "apo_down":
        return torch.sigmoid(beta * lr_c) + 1 - torch.sigmoid(beta * (lr_c - lr_r))
    # kto_pair
    z_c = lr_c.detach().mean().clamp(min=0)
    z_r = lr_r.detach().mean().clamp(min=0)
    return (2 - torch.sigmoid(beta * (lr_c - z_r)) - torch.sigmoid(beta * (z_c - lr_r))) / 2


def spo_kappas(beta: float, alphas: float | Sequence[float], rounds: int) -> list[float]:
    """The weights κ_1..κ_{n-1} of the earlier rounds in SPO's round-n reward (SPO eq. 7), oldest first.

    With R = n − 1 earlier rounds and α_k the importance of dimension k:
    ``κ_{n-1} = -β·α_{n-1}`` and ``κ_{n-i} = -β·α_{n-i}·Π_{j=2..i}(1 - α_{n-1-i+j})`` for i ≥ 2, i.e.
    ``κ_k = -β·α_k·Π_{m=k+1..n-1}(1 - α_m)``. (κ_n = β weighs the current round.) A single float α
    means every earlier dimension weighs the same, giving ``κ_{n-i} = -β·α·(1-α)^{i-1}``.
    """
    if isinstance(alphas, (int, float)):
        alphas = [float(alphas)] * rounds
    alphas = [float(a) for a in alphas]
    if len(alphas) != rounds:
        raise ValueError(f"alphas must hold one value per earlier round ({rounds}), got {len(alphas)}")
    kappas = []
    for k in range(rounds):  # k = 0 is round 1, the oldest
        weight = -beta * alphas[k]
        for later in alphas[k + 1 :]:
            weight *= 1 - later
        kappas.append(weight)
    return kappas


def spo_pair_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    previous_chosen_logratios: torch.Tensor,
    previous_rejected_logratios: torch.Tensor,
    *,
    beta: float = 0.1,
    alphas: float | Sequence[float],
) -> torch.Tensor:
    """Per-pair loss of SPO round n, Tensor[B] (Lou et al., Sequential Preference Optimization).

    ``chosen_logratios`` / ``rejected_logratios`` [B] are the current round's log-ratios against π_{n-1};
    ``previous_*_logratios`` [R, B] hold the cached log-ratio of each earlier round i against π_{i-1},
    oldest round first (R = n − 1, may be 0). The round-n reward is SPO eq. 7,
    ``R_n(y) = β·lr_n(y) + Σ_{i<n} κ_i·lr_i(y)`` with κ from :func:`spo_kappas`, and the loss is the
    Bradley–Terry likelihood ``-logσ(R_n(y_w) - R_n(y_l))``. With one earlier round this is SPO eq. 5,
    ``-logσ(β·Δ_2 - α_1·β·Δ_1)``; with α = 0 or no earlier round it is DPO. (SPO eq. 8 prints the loss
    without the log; eq. 5 has it, and guard uses it for every round.)
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    _check_pair(chosen_logratios, rejected_logratios, "logratios")
    prev_c, prev_r = previous_chosen_logratios, previous_rejected_logratios
    batch = chosen_logratios.shape[0]
    for name, prev in (("previous_chosen_logratios", prev_c), ("previous_rejected_logratios", prev_r)):
        if prev.dim() != 2 or prev.shape[1] != batch:
            raise ValueError(f"{name} must be [R, B] with B = {batch}, got shape {tuple(prev.shape)}")
        _check_finite(name, prev)
    if prev_c.shape != prev_r.shape:
        raise ValueError(
            "previous_chosen_logratios and previous_rejected_logratios must have the same shape, "
            f"got {tuple(prev_c.shape)} and {tuple(prev_r.shape)}"
        )
    kappas = torch.tensor(spo_kappas(beta, alphas, prev_c.shape[0]), dtype=prev_c.dtype, device=prev_c.device)
    margin = beta * (chosen_logratios - rejected_logratios) + kappas @ (prev_c - prev_r)
    return -F.logsigmoid(margin)


def bt_pair_losses(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    margin: torch.Tensor | float | None = None,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Per-pair Bradley–Terry reward-model losses, Tensor[B].

    ``-logσ(r_c - r_r - margin) + center_coef·(r_c + r_r)²``. The mean over pairs is the reward-model
    loss with the centering term ``center_coef·mean((r_c + r_r)²)`` of Eisenstein et al. (TRL's
    ``center_rewards_coefficient``); ``margin`` is a float or a Tensor[B] (Llama 2's margin loss).
    """
    _check_pair(chosen_rewards, rejected_rewards, "rewards")
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        if isinstance(margin, torch.Tensor):
            if margin.shape != chosen_rewards.shape:
                raise ValueError(
                    f"margin must be a float or have the shape of the rewards {tuple(chosen_rewards.shape)}, "
                    f"got {tuple(margin.shape)}"
                )
            _check_finite("margin", margin)
        diff = diff - margin
    losses = -F.logsigmoid(diff)
    if center_coef:
        losses = losses + center_coef * (chosen_rewards + rejected_rewards) ** 2
    return losses


def category_moments(
    values: torch.Tensor, categories: torch.Tensor, num_categories: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean, population variance, skewness g1 and excess kurtosis g2 of ``values`` within each category.

    ``values`` is Tensor[B] or Tensor[B, K] (K value columns, e.g. chosen and rejected rewards);
    ``categories`` is an integer Tensor[B] in [0, num_categories). Returns ``(moments, counts)`` with
    moments of shape [C, 4] or [C, K, 4] (last axis: mean μ, m2, m3/m2^1.5, m4/m2² − 3, where
    m_k = mean((v − μ)^k) over the category) and counts Tensor[C] (int64).

    A category with no values gives zeros; one whose variance is below 1e-12 gives skewness = kurtosis
    = 0. No NaN, ever, in values or in gradients. The moments are computed in float64 (the tensors are
    [B]-sized) and returned in the dtype of ``values``; they are differentiable with respect to it.
    """
    if values.dim() not in (1, 2):
        raise ValueError(f"values must be [B] or [B, K], got shape {tuple(values.shape)}")
    if categories.dim() != 1 or categories.shape[0] != values.shape[0]:
        raise ValueError(
            f"categories must be [B] with B = {values.shape[0]} (one per row of values), "
            f"got shape {tuple(categories.shape)}"
        )
    if num_categories < 1:
        raise ValueError(f"num_categories must be at least 1, got {num_categories}")
    check_category_values(categories, num_categories)
    _check_finite("values", values)

    squeeze = values.dim() == 1
    v = values.to(torch.float64)
    if squeeze:
        v = v[:, None]
    cats = categories.to(device=values.device, dtype=torch.long)
    counts = torch.bincount(cats, minlength=num_categories)
    n = counts.to(torch.float64).clamp(min=1)[:, None]

    def per_category_mean(x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(num_categories, x.shape[1]).index_add(0, cats, x) / n

    mean = per_category_mean(v)
    centered = v - mean[cats]
    m2 = per_category_mean(centered**2)
    m3 = per_category_mean(centered**3)
    m4 = per_category_mean(centered**4)
    varied = m2 > MOMENT_VARIANCE_FLOOR
    safe_m2 = torch.where(varied, m2, torch.ones_like(m2))  # keeps gradients finite where m2 ~ 0
    skew = torch.where(varied, m3 / safe_m2**1.5, torch.zeros_like(m2))
    kurt = torch.where(varied, m4 / safe_m2**2 - 3, torch.zeros_like(m2))
    moments = torch.stack([mean, m2, skew, kurt], dim=-1).to(values.dtype)
    return (moments[:, 0] if squeeze else moments), counts
