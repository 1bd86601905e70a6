"""The preference-loss head: from sequence log-probs [2B] to the DPO / IPO / APO / KTO / SPO loss, the
rewards and the per-category reward moments, in one Triton launch forward and one backward.

The tensors are [B]-sized, so the work is trivial and the cost is launches: a plain-torch head spends a
dozen small kernels forward and more backward. Here a single program (grid = (1,)) walks the batch in
blocks of BLOCK_B pairs, a few times:

    forward   pass 1: rewards = β·(logp − ref), per-category counts and sums, the batch sums of the
                      log-ratios (KTO's reference points z_c, z_r), rows with a stray category
              pass 2: per-pair losses and their sum, per-category centered powers Σd², Σd³, Σd⁴
    backward  passes 1–2 again (cheaper than saving their results), pass 3: ∂/∂logps of the loss,
              the pair losses, the rewards and the moments, all at once

Rows are chosen first: logps[i] and logps[B + i] are one pair. The math is `guard.losses.pair_losses`,
`guard.losses.spo_pair_losses` and `guard.losses.category_moments` (DESIGN.md §3). SPO's earlier rounds
enter as one margin shift Σ_k κ_k·(prev_c[k] − prev_r[k]) [B] (`guard.losses.spo_shift`, a few torch ops
before the launch: κ stays a Python float, so nothing is copied to the device and nothing synchronises).
The moment passes and their derivatives are in `guard.kernels.moments`, σ and logσ in
`guard.kernels.stable_math`, the block sizes in `guard.kernels.tuning.head_blocks`. Everything is
float32 inside.

    loss, pair_losses, rewards, moments, counts = PreferenceHeadFunction.apply(
        logps, ref_logps, categories, previous_logratios, "sigmoid", 0.1, 0.0, (), num_categories)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from guard.kernels.moments import (
    _add_pair_power_sums,
    _add_pair_sums,
    _category_onehot,
    _moment_grad,
    _moment_grad_coefficients,
    _pair_means,
    _store_pair_moments,
    _stray_rows,
    _zero_pair_power_sums,
    _zero_pair_sums,
)
from guard.kernels.stable_math import _log_sigmoid, _sigmoid
from guard.kernels.tuning import head_blocks
from guard.losses import MOMENT_VARIANCE_FLOOR, check_preference_params, spo_shift

#: loss_type → the LOSS constexpr of the kernels.
_LOSS_CODES = {"sigmoid": 0, "ipo": 1, "apo_zero": 2, "apo_down": 3, "kto_pair": 4, "spo": 5}


@triton.jit
def _load_logratios(logps_ptr, ref_ptr, offs, mask, B, HAS_REF: tl.constexpr):
    lr_c = tl.load(logps_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    lr_r = tl.load(logps_ptr + B + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_REF:
        lr_c -= tl.load(ref_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        lr_r -= tl.load(ref_ptr + B + offs, mask=mask, other=0.0).to(tl.float32)
    return lr_c, lr_r


@triton.jit
def _logratio_sums(
    logps_ptr, ref_ptr, cats_ptr, rewards_ptr, B, C, beta,
    HAS_REF: tl.constexpr, CATS: tl.constexpr, STORE_REWARDS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Pass 1: KTO's reference points z_c, z_r (the batch means of the log-ratios, floored at 0), then the
    per-category counts and sums of the rewards β·lr and the rows with a stray category (zeros unless
    CATS); stores the rewards if STORE_REWARDS."""
    rows = tl.arange(0, BLOCK_B)
    lr_sum_c = tl.zeros([BLOCK_B], dtype=tl.float32)
    lr_sum_r = tl.zeros([BLOCK_B], dtype=tl.float32)
    stray = tl.zeros([BLOCK_B], dtype=tl.float32)
    count, sum_c, sum_r = _zero_pair_sums(BLOCK_C)
    for start in range(0, B, BLOCK_B):
        offs = start + rows
        mask = offs < B
        lr_c, lr_r = _load_logratios(logps_ptr, ref_ptr, offs, mask, B, HAS_REF)
        if STORE_REWARDS:
            tl.store(rewards_ptr + offs, beta * lr_c, mask=mask)
            tl.store(rewards_ptr + B + offs, beta * lr_r, mask=mask)
        lr_sum_c += lr_c
        lr_sum_r += lr_r
        if CATS:
            count, sum_c, sum_r = _add_pair_sums(
                count, sum_c, sum_r, cats_ptr, offs, mask, beta * lr_c, beta * lr_r, BLOCK_C
            )
            stray += _stray_rows(cats_ptr, offs, mask, C)
    z_c = tl.maximum(tl.sum(lr_sum_c, axis=0) / B, 0.0)
    z_r = tl.maximum(tl.sum(lr_sum_r, axis=0) / B, 0.0)
    return z_c, z_r, count, sum_c, sum_r, stray


@triton.jit
def _load_shift(shift_ptr, offs, mask, HAS_SHIFT: tl.constexpr, BLOCK_B: tl.constexpr):
    """SPO's earlier-round margin Σ_k κ_k·(prev_c[k] − prev_r[k]) of the block's pairs (zeros without one)."""
    shift = tl.zeros([BLOCK_B], dtype=tl.float32)
    if HAS_SHIFT:
        shift += tl.load(shift_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return shift


@triton.jit
def _pair_loss(lr_c, lr_r, shift, z_c, z_r, beta, label_smoothing, LOSS: tl.constexpr):
    """(loss, ∂loss/∂lr_c, ∂loss/∂lr_r) per pair; z_c, z_r are KTO's constant reference points and
    shift SPO's earlier-round margin."""
    if LOSS == 0:  # sigmoid: −(1−ε)·logσ(βΔ) − ε·logσ(−βΔ)
        z = beta * (lr_c - lr_r)
        loss = -(1.0 - label_smoothing) * _log_sigmoid(z) - label_smoothing * _log_sigmoid(-z)
        dz = label_smoothing * _sigmoid(z) - (1.0 - label_smoothing) * _sigmoid(-z)
        d_c = beta * dz
        d_r = -d_c
    elif LOSS == 1:  # ipo: (Δ − 1/(2β))²
        gap = lr_c - lr_r - 0.5 / beta
        loss = gap * gap
        d_c = 2.0 * gap
        d_r = -d_c
    elif LOSS == 2:  # apo_zero: 1 − σ(β·lr_c) + σ(β·lr_r)
        a = beta * lr_c
        b = beta * lr_r
        loss = 1.0 - _sigmoid(a) + _sigmoid(b)
        d_c = -beta * _sigmoid(a) * _sigmoid(-a)
        d_r = beta * _sigmoid(b) * _sigmoid(-b)
    elif LOSS == 3:  # apo_down: σ(β·lr_c) + 1 − σ(βΔ)
        a = beta * lr_c
        z = beta * (lr_c - lr_r)
        dsz = beta * _sigmoid(z) * _sigmoid(-z)
        loss = _sigmoid(a) + 1.0 - _sigmoid(z)
        d_c = beta * _sigmoid(a) * _sigmoid(-a) - dsz
        d_r = dsz
    elif LOSS == 4:  # kto_pair: (2 − σ(β(lr_c − z_r)) − σ(β(z_c − lr_r))) / 2
        a = beta * (lr_c - z_r)
        b = beta * (z_c - lr_r)
        loss = (2.0 - _sigmoid(a) - _sigmoid(b)) * 0.5
        d_c = -0.5 * beta * _sigmoid(a) * _sigmoid(-a)
        d_r = 0.5 * beta * _sigmoid(b) * _sigmoid(-b)
    else:  # spo: −logσ(βΔ + Σ_k κ_k·Δ_k)
        m = beta * (lr_c - lr_r) + shift
        loss = -_log_sigmoid(m)
        d_c = -beta * _sigmoid(-m)
        d_r = -d_c
    return loss, d_c, d_r


@triton.jit
def _preference_head_fwd_kernel(
    logps_ptr, ref_ptr, cats_ptr, shift_ptr,
    loss_ptr, pair_losses_ptr, rewards_ptr, moments_ptr, counts_ptr,
    B, C, beta, label_smoothing,
    LOSS: tl.constexpr, HAS_REF: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_CATS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, VARIANCE_FLOOR: tl.constexpr,
):  # fmt: skip
    rows = tl.arange(0, BLOCK_B)

    # Pass 1: rewards, counts and per-category sums, the batch sums of the log-ratios.
    z_c, z_r, count, sum_c, sum_r, stray = _logratio_sums(
        logps_ptr, ref_ptr, cats_ptr, rewards_ptr, B, C, beta, HAS_REF, HAS_CATS, True, BLOCK_B, BLOCK_C
    )
    inv_n, mean_c, mean_r = _pair_means(count, sum_c, sum_r)

    # Pass 2: the losses and the centered powers.
    total = tl.zeros([BLOCK_B], dtype=tl.float32)
    s2_c, s3_c, s4_c, s2_r, s3_r, s4_r = _zero_pair_power_sums(BLOCK_C)
    for start in range(0, B, BLOCK_B):
        offs = start + rows
        mask = offs < B
        lr_c, lr_r = _load_logratios(logps_ptr, ref_ptr, offs, mask, B, HAS_REF)
        shift = _load_shift(shift_ptr, offs, mask, HAS_SHIFT, BLOCK_B)
        loss, _d_c, _d_r = _pair_loss(lr_c, lr_r, shift, z_c, z_r, beta, label_smoothing, LOSS)
        loss = tl.where(mask, loss, 0.0)
        tl.store(pair_losses_ptr + offs, loss, mask=mask)
        total += loss
        if HAS_CATS:
            s2_c, s3_c, s4_c, s2_r, s3_r, s4_r = _add_pair_power_sums(
                s2_c, s3_c, s4_c, s2_r, s3_r, s4_r,
                cats_ptr, offs, mask, beta * lr_c, beta * lr_r, mean_c, mean_r, BLOCK_C,
            )  # fmt: skip
    tl.store(loss_ptr, tl.sum(total, axis=0) / B)
    if HAS_CATS:
        _store_pair_moments(
            moments_ptr, counts_ptr, count, inv_n, mean_c, mean_r, s2_c, s3_c, s4_c, s2_r, s3_r, s4_r, stray,
            C, BLOCK_C, VARIANCE_FLOOR,
        )  # fmt: skip


@triton.jit
def _preference_head_bwd_kernel(
    logps_ptr, ref_ptr, cats_ptr, shift_ptr,
    g_loss_ptr, g_pair_ptr, g_rewards_ptr, g_moments_ptr, grad_ptr,
    B, C, beta, label_smoothing,
    LOSS: tl.constexpr, HAS_REF: tl.constexpr, HAS_SHIFT: tl.constexpr, MOMENT_GRADS: tl.constexpr,
    HAS_G_LOSS: tl.constexpr, HAS_G_PAIR: tl.constexpr, HAS_G_REWARDS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, VARIANCE_FLOOR: tl.constexpr,
):  # fmt: skip
    rows = tl.arange(0, BLOCK_B)

    # Pass 1 (as forward, storing nothing): KTO's batch means, per-category counts and means.
    z_c, z_r, count, sum_c, sum_r, _stray = _logratio_sums(
        logps_ptr, ref_ptr, cats_ptr, None, B, C, beta, HAS_REF, MOMENT_GRADS, False, BLOCK_B, BLOCK_C
    )
    inv_n, mean_c, mean_r = _pair_means(count, sum_c, sum_r)

    # Pass 2 (as forward): the central moments, then the per-category gradient factors.
    if MOMENT_GRADS:
        s2_c, s3_c, s4_c, s2_r, s3_r, s4_r = _zero_pair_power_sums(BLOCK_C)
        for start in range(0, B, BLOCK_B):
            offs = start + rows
            mask = offs < B
            lr_c, lr_r = _load_logratios(logps_ptr, ref_ptr, offs, mask, B, HAS_REF)
            s2_c, s3_c, s4_c, s2_r, s3_r, s4_r = _add_pair_power_sums(
                s2_c, s3_c, s4_c, s2_r, s3_r, s4_r,
                cats_ptr, offs, mask, beta * lr_c, beta * lr_r, mean_c, mean_r, BLOCK_C,
            )  # fmt: skip
        m2_c, m3_c, a0_c, a1_c, a2_c, a3_c = _moment_grad_coefficients(
            g_moments_ptr, 0, inv_n, s2_c, s3_c, s4_c, C, BLOCK_C, VARIANCE_FLOOR
        )
        m2_r, m3_r, a0_r, a1_r, a2_r, a3_r = _moment_grad_coefficients(
            g_moments_ptr, 1, inv_n, s2_r, s3_r, s4_r, C, BLOCK_C, VARIANCE_FLOOR
        )

    # Pass 3: ∂/∂logps = ∂/∂lr (the reference is a constant) of the loss terms, the rewards, the moments.
    g_mean_loss = 0.0
    if HAS_G_LOSS:
        g_mean_loss = tl.load(g_loss_ptr).to(tl.float32) / B
    for start in range(0, B, BLOCK_B):
        offs = start + rows
        mask = offs < B
        lr_c, lr_r = _load_logratios(logps_ptr, ref_ptr, offs, mask, B, HAS_REF)
        grad_c = tl.zeros([BLOCK_B], dtype=tl.float32)
        grad_r = tl.zeros([BLOCK_B], dtype=tl.float32)
        if HAS_G_LOSS or HAS_G_PAIR:
            shift = _load_shift(shift_ptr, offs, mask, HAS_SHIFT, BLOCK_B)
            _loss, d_c, d_r = _pair_loss(lr_c, lr_r, shift, z_c, z_r, beta, label_smoothing, LOSS)
            g_pair = tl.zeros([BLOCK_B], dtype=tl.float32) + g_mean_loss
            if HAS_G_PAIR:
                g_pair += tl.load(g_pair_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            grad_c += g_pair * d_c
            grad_r += g_pair * d_r
        g_reward_c = tl.zeros([BLOCK_B], dtype=tl.float32)
        g_reward_r = tl.zeros([BLOCK_B], dtype=tl.float32)
        if HAS_G_REWARDS:
            g_reward_c += tl.load(g_rewards_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            g_reward_r += tl.load(g_rewards_ptr + B + offs, mask=mask, other=0.0).to(tl.float32)
        if MOMENT_GRADS:
            onehot = _category_onehot(cats_ptr, offs, mask, BLOCK_C)
            g_reward_c += _moment_grad(onehot, beta * lr_c, mean_c, m2_c, m3_c, a0_c, a1_c, a2_c, a3_c)
            g_reward_r += _moment_grad(onehot, beta * lr_r, mean_r, m2_r, m3_r, a0_r, a1_r, a2_r, a3_r)
        grad_c += beta * g_reward_c
        grad_r += beta * g_reward_r
        tl.store(grad_ptr + offs, grad_c.to(grad_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_ptr + B + offs, grad_r.to(grad_ptr.dtype.element_ty), mask=mask)


def _check_inputs(logps, ref_logps, categories, previous_logratios, loss_type, beta, label_smoothing, kappas, num_categories):
    """Shape, dtype, device and option checks that need no device synchronisation. Returns B."""
    check_preference_params(loss_type, beta, label_smoothing, tuple(_LOSS_CODES))
    if logps.dim() != 1 or logps.shape[0] == 0 or logps.shape[0] % 2:
        raise ValueError(f"logps must be [2B] with B ≥ 1 (chosen rows first), got shape {tuple(logps.shape)}")
    if not logps.dtype.is_floating_point:
        raise ValueError(f"logps must be floating point, got {logps.dtype}")
    batch = logps.shape[0] // 2
    if ref_logps is not None:
        if ref_logps.shape != logps.shape or not ref_logps.dtype.is_floating_point:
            raise ValueError(
                f"ref_logps must be a floating tensor shaped like logps {tuple(logps.shape)}, "
                f"got {ref_logps.dtype} {tuple(ref_logps.shape)}"
            )
    if categories is not None:
        if categories.shape != (batch,) or categories.dtype.is_floating_point or categories.dtype == torch.bool:
            raise ValueError(
                f"categories must be an integer tensor [B] with B = {batch}, got {categories.dtype} {tuple(categories.shape)}"
            )
        if num_categories is None or num_categories < 1:
            raise ValueError(f"num_categories must be a positive int when categories are given, got {num_categories}")
    rounds = 0
    if previous_logratios is not None:
        if loss_type != "spo":
            raise ValueError(f"previous_logratios are SPO's; loss_type is {loss_type!r}")
        if previous_logratios.dim() != 2 or previous_logratios.shape[1] != 2 * batch:
            raise ValueError(
                f"previous_logratios must be [R, 2B] with 2B = {2 * batch}, got shape {tuple(previous_logratios.shape)}"
            )
        rounds = previous_logratios.shape[0]
    if len(kappas) != rounds:
        raise ValueError(f"kappas must hold one weight per earlier round ({rounds}), got {len(kappas)}")
    for name, t in (("ref_logps", ref_logps), ("categories", categories), ("previous_logratios", previous_logratios)):
        if t is not None and t.device != logps.device:
            raise ValueError(f"{name} is on {t.device}, logps on {logps.device}")
    return batch


@torch.library.custom_op("guard::preference_head_fwd", mutates_args=())
def preference_head_fwd(
    logps: torch.Tensor, ref_logps: torch.Tensor | None, categories: torch.Tensor | None, shift: torch.Tensor | None,
    loss_type: str, beta: float, label_smoothing: float, num_categories: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One launch: (loss, pair_losses, rewards, moments, counts); without categories moments is [0, 2, 4]
    and counts [0]. shift: SPO's earlier-round margin [B] or None. Inputs contiguous. A custom op, so
    torch.compile calls it as one opaque node."""
    batch = logps.shape[0] // 2
    device = logps.device
    has_cats = categories is not None
    block_b, block_c = head_blocks(batch, num_categories if has_cats else None)
    loss = torch.empty((), dtype=torch.float32, device=device)
    pair_losses = torch.empty(batch, dtype=torch.float32, device=device)
    rewards = torch.empty(2 * batch, dtype=torch.float32, device=device)
    moments = torch.empty(num_categories if has_cats else 0, 2, 4, dtype=torch.float32, device=device)
    counts = torch.empty(num_categories if has_cats else 0, dtype=torch.int64, device=device)
    _preference_head_fwd_kernel[(1,)](
        logps, logps if ref_logps is None else ref_logps, categories if has_cats else logps, logps if shift is None else shift,
        loss, pair_losses, rewards, rewards if not has_cats else moments, rewards if not has_cats else counts,
        batch, num_categories if has_cats else 1, float(beta), float(label_smoothing),
        LOSS=_LOSS_CODES[loss_type], HAS_REF=ref_logps is not None, HAS_SHIFT=shift is not None, HAS_CATS=has_cats,
        BLOCK_B=block_b, BLOCK_C=block_c, VARIANCE_FLOOR=MOMENT_VARIANCE_FLOOR,
    )  # fmt: skip
    return loss, pair_losses, rewards, moments, counts


@preference_head_fwd.register_fake
def _(logps, ref_logps, categories, shift, loss_type, beta, label_smoothing, num_categories):
    batch, cats = logps.shape[0] // 2, num_categories if categories is not None else 0
    f32 = dict(dtype=torch.float32, device=logps.device)
    return (torch.empty((), **f32), torch.empty(batch, **f32), torch.empty(2 * batch, **f32), torch.empty(cats, 2, 4, **f32),
            torch.empty(cats, dtype=torch.int64, device=logps.device))


@torch.library.custom_op("guard::preference_head_bwd", mutates_args=())
def preference_head_bwd(
    logps: torch.Tensor, ref_logps: torch.Tensor | None, categories: torch.Tensor | None, shift: torch.Tensor | None,
    g_loss: torch.Tensor | None, g_pair: torch.Tensor | None, g_rewards: torch.Tensor | None, g_moments: torch.Tensor | None,
    loss_type: str, beta: float, label_smoothing: float, num_categories: int,
) -> torch.Tensor:
    """One launch: ∂/∂logps of Σ g·output over the outputs whose upstream gradient is not None."""
    batch = logps.shape[0] // 2
    moment_grads = categories is not None and g_moments is not None
    block_b, block_c = head_blocks(batch, num_categories if categories is not None else None)
    grad = torch.empty_like(logps)
    _preference_head_bwd_kernel[(1,)](
        logps, logps if ref_logps is None else ref_logps, categories if moment_grads else logps,
        logps if shift is None else shift,
        grad if g_loss is None else g_loss.contiguous(), grad if g_pair is None else g_pair.contiguous(),
        grad if g_rewards is None else g_rewards.contiguous(), grad if not moment_grads else g_moments.contiguous(),
        grad,
        batch, num_categories if moment_grads else 1, float(beta), float(label_smoothing),
        LOSS=_LOSS_CODES[loss_type], HAS_REF=ref_logps is not None, HAS_SHIFT=shift is not None, MOMENT_GRADS=moment_grads,
        HAS_G_LOSS=g_loss is not None, HAS_G_PAIR=g_pair is not None, HAS_G_REWARDS=g_rewards is not None,
        BLOCK_B=block_b, BLOCK_C=block_c, VARIANCE_FLOOR=MOMENT_VARIANCE_FLOOR,
    )  # fmt: skip
    return grad


@preference_head_bwd.register_fake
def _(logps, *args):
    return torch.empty_like(logps)


class PreferenceHeadFunction(torch.autograd.Function):
    """``apply(logps, ref_logps, categories, previous_logratios, loss_type, beta, label_smoothing, kappas,
    num_categories) -> (loss, pair_losses, rewards, moments, counts)``.

    logps: float [2B], chosen rows first (differentiable). ref_logps: [2B] or None (zeros). categories:
    int [B] in [0, num_categories) or None (then moments = counts = None; a value outside [0, C) counts
    in no category and makes every moment NaN: checking would synchronise). previous_logratios: [R, 2B]
    or None, SPO's cached log-ratios, oldest round first, with kappas the R weights κ of
    `guard.losses.spo_kappas` (empty otherwise); they enter as one shift [B] (`guard.losses.spo_shift`).
    Returns loss (0-dim, mean of pair_losses), pair_losses [B], rewards [2B] = β·(logps − ref_logps),
    moments [C, 2, 4] (chosen, rejected) × (mean, variance, skewness, excess kurtosis), all float32, and
    counts [C] int64 (not differentiable). Gradients reach logps only; the gradient has logps's dtype.
    """

    @staticmethod
    def forward(ctx, logps, ref_logps, categories, previous_logratios, loss_type, beta, label_smoothing, kappas, num_categories):
        kappas = tuple(float(k) for k in kappas)
        batch = _check_inputs(logps, ref_logps, categories, previous_logratios, loss_type, beta, label_smoothing, kappas,
                              num_categories)
        logps = logps.contiguous()
        ref_logps = None if ref_logps is None else ref_logps.contiguous()
        categories = None if categories is None else categories.contiguous()
        shift = None
        if kappas:  # R scalar multiply-adds on the device: κ never leaves the host, nothing synchronises
            prev = previous_logratios.float()
            shift = spo_shift(prev[:, :batch], prev[:, batch:], kappas).contiguous()
        loss, pair_losses, rewards, moments, counts = preference_head_fwd(
            logps, ref_logps, categories, shift, loss_type, float(beta), float(label_smoothing), num_categories or 0,
        )
        ctx.save_for_backward(logps, ref_logps, categories, shift)
        ctx.options = (loss_type, float(beta), float(label_smoothing), num_categories or 0)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(counts)
        if categories is None:
            return loss, pair_losses, rewards, None, None
        return loss, pair_losses, rewards, moments, counts

    @staticmethod
    @once_differentiable
    def backward(ctx, g_loss, g_pair, g_rewards, g_moments, _g_counts):
        if not ctx.needs_input_grad[0] or all(g is None for g in (g_loss, g_pair, g_rewards, g_moments)):
            return (None,) * 9
        logps, ref_logps, categories, shift = ctx.saved_tensors
        loss_type, beta, label_smoothing, num_categories = ctx.options
        grad = preference_head_bwd(
            logps, ref_logps, categories, shift, g_loss, g_pair, g_rewards, g_moments,
            loss_type, beta, label_smoothing, num_categories,
        )  # fmt: skip
        return (grad,) + (None,) * 8
