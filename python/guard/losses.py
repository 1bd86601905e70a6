"""Reference math for every guard loss and the per-category reward moments, in plain torch.

This is the spec the fused kernels (`guard.ops`) are tested against: simple, float64-capable and
differentiable, with the formulas and paper equations in each docstring (DESIGN.md §3). Shapes: B pairs;
row i of a chosen tensor and row i of its rejected twin are one pair. Log-ratios are sequence sums
`log π(y|x) − log π_ref(y|x)` over response tokens.

    from guard.losses import pair_losses
    loss = pair_losses(chosen_logratios, rejected_logratios, loss_type="sigmoid", beta=0.1).mean()

Inputs are checked (shapes, finiteness, category range) and a ValueError names what is wrong; the value
checks synchronise with the device (one sync per call), which is fine for a reference. With
``check=False`` they are skipped (what guard.ops's torch path does unless asked to check): nothing
synchronises, a non-finite input gives non-finite losses, and an out-of-range category makes every moment
NaN. The checks here are also the ones guard.ops runs, so both paths word their errors the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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


#: A value check: a mask that is True where the values are bad, and the error message for the first bad index.
Problem = tuple[torch.Tensor, Callable[[object], str]]


def raise_problems(problems: Sequence[Problem]) -> None:
    """ValueError with the message of the first problem that has a bad value, naming its index. One host
    sync answers all of them (the masks' `any` are stacked), a second one only on the error path."""
    problems = [(mask, message) for mask, message in problems if mask.numel()]
    if not problems:
        return
    flags = [mask.any() for mask, _ in problems]
    if len({f.device for f in flags}) == 1:
        flags = torch.stack(flags).tolist()
    for (mask, message), bad in zip(problems, flags):
        if bool(bad):
            raise ValueError(message(first_index(mask)))


def nonfinite_problem(name: str, x: torch.Tensor) -> Problem:
    """The check that `x` (the argument the caller named `name`) holds no NaN or inf."""
    return ~torch.isfinite(x), lambda where: f"{name} has a non-finite value (NaN or inf) at index {where}"


def category_problem(categories: torch.Tensor, num_categories: int) -> Problem:
    """The check that every category lies in [0, num_categories)."""
    bad = (categories < 0) | (categories >= num_categories)
    return bad, lambda row: f"categories[{row}] = {int(categories[row])} is out of range [0, {num_categories})"


def check_category_values(categories: torch.Tensor, num_categories: int) -> None:
    """ValueError unless categories is an integer tensor with every value in [0, num_categories)."""
    if categories.dtype.is_floating_point or categories.dtype == torch.bool:
        raise ValueError(f"categories must be an integer tensor, got {categories.dtype}")
    raise_problems([category_problem(categories, num_categories)])


def check_finite_number(name: str, value: float, *, positive: bool = False) -> None:
    """ValueError unless the Python number `value` is finite (and > 0 with `positive`): a NaN or inf option
    would otherwise turn every output into NaN without a word."""
    if not (math.isfinite(value) and (value > 0 or not positive)):
        raise ValueError(f"{name} must be {'positive and ' if positive else ''}finite, got {value}")


def _check_finite(name: str, x: torch.Tensor) -> None:
    raise_problems([nonfinite_problem(name, x)])


def _check_pair(chosen: torch.Tensor, rejected: torch.Tensor, what: str, check: bool = True) -> None:
    if chosen.dim() != 1:
        raise ValueError(f"chosen_{what} must be 1-D [B], got shape {tuple(chosen.shape)}")
    if chosen.shape != rejected.shape:
        raise ValueError(
            f"chosen_{what} and rejected_{what} must have the same shape, "
            f"got {tuple(chosen.shape)} and {tuple(rejected.shape)}"
        )
    if check:
        raise_problems([nonfinite_problem(f"chosen_{what}", chosen), nonfinite_problem(f"rejected_{what}", rejected)])


def check_preference_params(loss_type: str, beta: float, label_smoothing: float, allowed: Sequence[str]) -> None:
    """ValueError unless loss_type is in `allowed`, beta is finite and > 0 and label_smoothing is in [0, 0.5)."""
    if loss_type not in allowed:
        raise ValueError(f"loss_type must be one of {tuple(allowed)}, got {loss_type!r}")
    check_finite_number("beta", beta, positive=True)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")


def pair_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    loss_type: str,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    check: bool = True,
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
    _check_pair(chosen_logratios, rejected_logratios, "logratios", check)
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
    for alpha in alphas:
        check_finite_number("alphas", alpha)
    if len(alphas) != rounds:
        raise ValueError(f"alphas must hold one value per earlier round ({rounds}), got {len(alphas)}")
    kappas = []
    for k in range(rounds):  # k = 0 is round 1, the oldest
        weight = -beta * alphas[k]
        for later in alphas[k + 1 :]:
            weight *= 1 - later
        kappas.append(weight)
    return kappas


def spo_shift(previous_chosen_logratios: torch.Tensor, previous_rejected_logratios: torch.Tensor,
              kappas: Sequence[float]) -> torch.Tensor:
    """The earlier rounds' part of SPO's reward margin, ``Σ_k κ_k·(prev_c[k] − prev_r[k])`` [B], from [R, B]
    cached log-ratios and R Python floats κ: scalar multiplies on the device, no host-to-device copy."""
    diff = previous_chosen_logratios - previous_rejected_logratios
    shift = diff.new_zeros(diff.shape[1:])
    for k, kappa in enumerate(kappas):
        shift = shift + kappa * diff[k]
    return shift


def spo_pair_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    previous_chosen_logratios: torch.Tensor,
    previous_rejected_logratios: torch.Tensor,
    *,
    beta: float = 0.1,
    alphas: float | Sequence[float],
    check: bool = True,
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
    check_finite_number("beta", beta, positive=True)
    _check_pair(chosen_logratios, rejected_logratios, "logratios", check)
    prev_c, prev_r = previous_chosen_logratios, previous_rejected_logratios
    batch = chosen_logratios.shape[0]
    for name, prev in (("previous_chosen_logratios", prev_c), ("previous_rejected_logratios", prev_r)):
        if prev.dim() != 2 or prev.shape[1] != batch:
            raise ValueError(f"{name} must be [R, B] with B = {batch}, got shape {tuple(prev.shape)}")
    if prev_c.shape != prev_r.shape:
        raise ValueError(
            "previous_chosen_logratios and previous_rejected_logratios must have the same shape, "
            f"got {tuple(prev_c.shape)} and {tuple(prev_r.shape)}"
        )
    if check:
        raise_problems([nonfinite_problem("previous_chosen_logratios", prev_c),
                        nonfinite_problem("previous_rejected_logratios", prev_r)])
    shift = spo_shift(prev_c, prev_r, spo_kappas(beta, alphas, prev_c.shape[0]))
    margin = beta * (chosen_logratios - rejected_logratios) + shift
    return -F.logsigmoid(margin)


def bt_pair_losses(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    margin: torch.Tensor | float | None = None,
    center_coef: float = 0.0,
    check: bool = True,
) -> torch.Tensor:
    """Per-pair Bradley–Terry reward-model losses, Tensor[B].

    ``-logσ(r_c - r_r - margin) + center_coef·(r_c + r_r)²``. The mean over pairs is the reward-model
    loss with the centering term ``center_coef·mean((r_c + r_r)²)`` of Eisenstein et al. (TRL's
    ``center_rewards_coefficient``); ``margin`` is a float or a Tensor[B] (Llama 2's margin loss).
    """
    _check_pair(chosen_rewards, rejected_rewards, "rewards", check)
    check_finite_number("center_coef", center_coef)
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        if isinstance(margin, torch.Tensor):
            if margin.shape != chosen_rewards.shape:
                raise ValueError(
                    f"margin must be a float or have the shape of the rewards {tuple(chosen_rewards.shape)}, "
                    f"got {tuple(margin.shape)}"
                )
            if check:
                _check_finite("margin", margin)
        else:
            check_finite_number("margin", margin)
        diff = diff - margin
    losses = -F.logsigmoid(diff)
    if center_coef:
        losses = losses + center_coef * (chosen_rewards + rejected_rewards) ** 2
    return losses


def category_moments(
    values: torch.Tensor, categories: torch.Tensor, num_categories: int, *, check: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean, population variance, skewness g1 and excess kurtosis g2 of ``values`` within each category.

    ``values`` is Tensor[B] or Tensor[B, K] (K value columns, e.g. chosen and rejected rewards);
    ``categories`` is an integer Tensor[B] in [0, num_categories). Returns ``(moments, counts)`` with
    moments of shape [C, 4] or [C, K, 4] (last axis: mean μ, m2, m3/m2^1.5, m4/m2² − 3, where
    m_k = mean((v − μ)^k) over the category) and counts Tensor[C] (int64).

    A category with no values gives zeros; one whose variance is below 1e-12 gives skewness = kurtosis
    = 0. No NaN, ever, in values or in gradients. The moments are computed in float64 (the tensors are
    [B]-sized) and returned in the dtype of ``values``; they are differentiable with respect to it.
    With ``check=False`` nothing synchronises: a category outside [0, C) counts nowhere and makes every
    moment NaN (their gradient is that of the other rows), non-finite values give non-finite moments.
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
    if categories.dtype.is_floating_point or categories.dtype == torch.bool:
        raise ValueError(f"categories must be an integer tensor, got {categories.dtype}")
    if check:
        raise_problems([category_problem(categories, num_categories), nonfinite_problem("values", values)])

    squeeze = values.dim() == 1
    v = values.to(torch.float64)
    if squeeze:
        v = v[:, None]
    cats = categories.to(device=values.device, dtype=torch.long)
    # A stray category (only possible unchecked) goes to an extra slot C that is dropped: bincount would size
    # its output by the largest value, a shape only known after a sync.
    stray = (cats < 0) | (cats >= num_categories)
    cats = torch.where(stray, num_categories, cats)
    counts = torch.zeros(num_categories + 1, dtype=torch.long, device=cats.device).index_add(0, cats, torch.ones_like(cats))
    n = counts.to(torch.float64).clamp(min=1)[:, None]

    def per_category_mean(x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(num_categories + 1, x.shape[1]).index_add(0, cats, x) / n

    mean = per_category_mean(v)
    centered = v - mean[cats]
    m2 = per_category_mean(centered**2)
    m3 = per_category_mean(centered**3)
    m4 = per_category_mean(centered**4)
    varied = m2 > MOMENT_VARIANCE_FLOOR
    safe_m2 = torch.where(varied, m2, torch.ones_like(m2))  # keeps gradients finite where m2 ~ 0
    skew = torch.where(varied, m3 / safe_m2**1.5, torch.zeros_like(m2))
    kurt = torch.where(varied, m4 / safe_m2**2 - 3, torch.zeros_like(m2))
    moments = torch.stack([mean, m2, skew, kurt], dim=-1)[:num_categories]
    moments = moments + torch.where(stray.any(), float("nan"), 0.0)  # unchecked stray categories: NaN, loudly
    moments = moments.to(values.dtype)
    return (moments[:, 0] if squeeze else moments), counts[:num_categories]
