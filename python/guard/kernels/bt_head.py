"""The Bradley–Terry reward-model head: from the rewards of B pairs to the loss, the accuracy and the
per-category reward moments, in one Triton launch forward and one backward.

A single program (grid = (1,)) walks the batch in blocks of BLOCK_B pairs:

    forward   pass 1: per-pair losses −logσ(r_c − r_r − margin) + center_coef·(r_c + r_r)², their sum,
                      the count of r_c > r_r, per-category counts and sums
              pass 2: per-category centered powers Σd², Σd³, Σd⁴ of the chosen and the rejected rewards
    backward  passes 1–2 again for the moments (only when they receive a gradient), pass 3: ∂/∂r_c and
              ∂/∂r_r of the loss, the pair losses and the moments

The rewards may be float32, bfloat16 or float16: they are read, and everything is computed, in float32;
the outputs are float32 and the gradients come back in each input's dtype. The math is
`guard.losses.bt_pair_losses` and `guard.losses.category_moments` (DESIGN.md §3); the moment passes and
their derivatives are in `guard.kernels.moments`, σ and logσ in `guard.kernels.stable_math`, the block
sizes in `guard.kernels.tuning.head_blocks`.

    loss, pair_losses, moments, counts, accuracy = BTHeadFunction.apply(
        chosen_rewards, rejected_rewards, margin, categories, num_categories, center_coef)
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
from guard.losses import MOMENT_VARIANCE_FLOOR


@triton.jit
def _load_rewards(chosen_ptr, rejected_ptr, offs, mask):
    r_c = tl.load(chosen_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    r_r = tl.load(rejected_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return r_c, r_r


@triton.jit
def _bt_margin(r_c, r_r, margin_ptr, margin_value, offs, mask, HAS_MARGIN: tl.constexpr):
    x = r_c - r_r - margin_value
    if HAS_MARGIN:
        x -= tl.load(margin_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return x


@triton.jit
def _reward_power_sums(
    chosen_ptr, rejected_ptr, cats_ptr, B, mean_c, mean_r, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr
):
    """Pass 2: Σd², Σd³, Σd⁴ per category of the chosen, then of the rejected rewards."""
    rows = tl.arange(0, BLOCK_B)
    s2_c, s3_c, s4_c, s2_r, s3_r, s4_r = _zero_pair_power_sums(BLOCK_C)
    for start in range(0, B, BLOCK_B):
        offs = start + rows
        mask = offs < B
        r_c, r_r = _load_rewards(chosen_ptr, rejected_ptr, offs, mask)
        s2_c, s3_c, s4_c, s2_r, s3_r, s4_r = _add_pair_power_sums(
            s2_c, s3_c, s4_c, s2_r, s3_r, s4_r, cats_ptr, offs, mask, r_c, r_r, mean_c, mean_r, BLOCK_C
        )
    return s2_c, s3_c, s4_c, s2_r, s3_r, s4_r


@triton.jit
def _bt_head_fwd_kernel(
    chosen_ptr, rejected_ptr, margin_ptr, cats_ptr,
    loss_ptr, pair_losses_ptr, moments_ptr, counts_ptr, accuracy_ptr,
    B, C, margin_value, center_coef,
    HAS_MARGIN: tl.constexpr, HAS_CENTER: tl.constexpr, HAS_CATS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, VARIANCE_FLOOR: tl.constexpr,
):  # fmt: skip
    rows = tl.arange(0, BLOCK_B)

    # Pass 1: losses, accuracy, per-category counts and sums.
    total = tl.zeros([BLOCK_B], dtype=tl.float32)
    correct = tl.zeros([BLOCK_B], dtype=tl.float32)
    stray = tl.zeros([BLOCK_B], dtype=tl.float32)
    count, sum_c, sum_r = _zero_pair_sums(BLOCK_C)
    for start in range(0, B, BLOCK_B):
        offs = start + rows
        mask = offs < B
        r_c, r_r = _load_rewards(chosen_ptr, rejected_ptr, offs, mask)
        loss = -_log_sigmoid(_bt_margin(r_c, r_r, margin_ptr, margin_value, offs, mask, HAS_MARGIN))
        if HAS_CENTER:
            loss += center_coef * (r_c + r_r) * (r_c + r_r)
        loss = tl.where(mask, loss, 0.0)
        tl.store(pair_losses_ptr + offs, loss, mask=mask)
        total += loss
        correct += tl.where(mask & (r_c > r_r), 1.0, 0.0)
        if HAS_CATS:
            count, sum_c, sum_r = _add_pair_sums(count, sum_c, sum_r, cats_ptr, offs, mask, r_c, r_r, BLOCK_C)
            stray += _stray_rows(cats_ptr, offs, mask, C)
    tl.store(loss_ptr, tl.sum(total, axis=0) / B)
    tl.store(accuracy_ptr, tl.sum(correct, axis=0) / B)

    # Pass 2: the centered powers.
    if HAS_CATS:
        inv_n, mean_c, mean_r = _pair_means(count, sum_c, sum_r)
        s2_c, s3_c, s4_c, s2_r, s3_r, s4_r = _reward_power_sums(
            chosen_ptr, rejected_ptr, cats_ptr, B, mean_c, mean_r, BLOCK_B, BLOCK_C
        )
        _store_pair_moments(
            moments_ptr, counts_ptr, count, inv_n, mean_c, mean_r, s2_c, s3_c, s4_c, s2_r, s3_r, s4_r, stray,
            C, BLOCK_C, VARIANCE_FLOOR,
        )  # fmt: skip


@triton.jit
def _bt_head_bwd_kernel(
    chosen_ptr, rejected_ptr, margin_ptr, cats_ptr,
    g_loss_ptr, g_pair_ptr, g_moments_ptr, grad_chosen_ptr, grad_rejected_ptr,
    B, C, margin_value, center_coef,
    HAS_MARGIN: tl.constexpr, HAS_CENTER: tl.constexpr, MOMENT_GRADS: tl.constexpr,
    HAS_G_LOSS: tl.constexpr, HAS_G_PAIR: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, VARIANCE_FLOOR: tl.constexpr,
):  # fmt: skip
    rows = tl.arange(0, BLOCK_B)

    # Passes 1–2 (as forward), only for the moments: per-category means, central moments, and the
    # per-category factors of the moment gradient.
    if MOMENT_GRADS:
        count, sum_c, sum_r = _zero_pair_sums(BLOCK_C)
        for start in range(0, B, BLOCK_B):
            offs = start + rows
            mask = offs < B
            r_c, r_r = _load_rewards(chosen_ptr, rejected_ptr, offs, mask)
            count, sum_c, sum_r = _add_pair_sums(count, sum_c, sum_r, cats_ptr, offs, mask, r_c, r_r, BLOCK_C)
        inv_n, mean_c, mean_r = _pair_means(count, sum_c, sum_r)
        s2_c, s3_c, s4_c, s2_r, s3_r, s4_r = _reward_power_sums(
            chosen_ptr, rejected_ptr, cats_ptr, B, mean_c, mean_r, BLOCK_B, BLOCK_C
        )
        m2_c, m3_c, a0_c, a1_c, a2_c, a3_c = _moment_grad_coefficients(
            g_moments_ptr, 0, inv_n, s2_c, s3_c, s4_c, C, BLOCK_C, VARIANCE_FLOOR
        )
        m2_r, m3_r, a0_r, a1_r, a2_r, a3_r = _moment_grad_coefficients(
            g_moments_ptr, 1, inv_n, s2_r, s3_r, s4_r, C, BLOCK_C, VARIANCE_FLOOR
        )

    # Pass 3: the gradients.
    g_mean_loss = 0.0
    if HAS_G_LOSS:
        g_mean_loss = tl.load(g_loss_ptr).to(tl.float32) / B
    for start in range(0, B, BLOCK_B):
        offs = start + rows
        mask = offs < B
        r_c, r_r = _load_rewards(chosen_ptr, rejected_ptr, offs, mask)
        grad_c = tl.zeros([BLOCK_B], dtype=tl.float32)
        grad_r = tl.zeros([BLOCK_B], dtype=tl.float32)
        if HAS_G_LOSS or HAS_G_PAIR:
            g_pair = tl.zeros([BLOCK_B], dtype=tl.float32) + g_mean_loss
            if HAS_G_PAIR:
                g_pair += tl.load(g_pair_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            # ∂/∂x of −logσ(x) is −σ(−x), x = r_c − r_r − margin
            d_x = -_sigmoid(-_bt_margin(r_c, r_r, margin_ptr, margin_value, offs, mask, HAS_MARGIN))
            d_c = d_x
            d_r = -d_x
            if HAS_CENTER:
                d_center = 2.0 * center_coef * (r_c + r_r)
                d_c += d_center
                d_r += d_center
            grad_c += g_pair * d_c
            grad_r += g_pair * d_r
        if MOMENT_GRADS:
            onehot = _category_onehot(cats_ptr, offs, mask, BLOCK_C)
            grad_c += _moment_grad(onehot, r_c, mean_c, m2_c, m3_c, a0_c, a1_c, a2_c, a3_c)
            grad_r += _moment_grad(onehot, r_r, mean_r, m2_r, m3_r, a0_r, a1_r, a2_r, a3_r)
        tl.store(grad_chosen_ptr + offs, grad_c.to(grad_chosen_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_rejected_ptr + offs, grad_r.to(grad_rejected_ptr.dtype.element_ty), mask=mask)


def _check_inputs(chosen_rewards, rejected_rewards, margin, categories, num_categories):
    """Shape, dtype, device and option checks that need no device synchronisation. Returns B."""
    if chosen_rewards.dim() != 1 or chosen_rewards.shape[0] == 0:
        raise ValueError(f"chosen_rewards must be [B] with B ≥ 1, got shape {tuple(chosen_rewards.shape)}")
    if rejected_rewards.shape != chosen_rewards.shape:
        raise ValueError(
            f"chosen_rewards and rejected_rewards must have the same shape, "
            f"got {tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}"
        )
    for name, t in (("chosen_rewards", chosen_rewards), ("rejected_rewards", rejected_rewards)):
        if not t.dtype.is_floating_point:
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
    batch = chosen_rewards.shape[0]
    if isinstance(margin, torch.Tensor):
        if margin.shape != (batch,) or not margin.dtype.is_floating_point:
            raise ValueError(f"margin must be a float or a floating tensor [B] with B = {batch}, got {margin.dtype} {tuple(margin.shape)}")
    if categories is not None:
        if categories.shape != (batch,) or categories.dtype.is_floating_point or categories.dtype == torch.bool:
            raise ValueError(
                f"categories must be an integer tensor [B] with B = {batch}, got {categories.dtype} {tuple(categories.shape)}"
            )
        if num_categories is None or num_categories < 1:
            raise ValueError(f"num_categories must be a positive int when categories are given, got {num_categories}")
    for name, t in (("rejected_rewards", rejected_rewards), ("margin", margin), ("categories", categories)):
        if isinstance(t, torch.Tensor) and t.device != chosen_rewards.device:
            raise ValueError(f"{name} is on {t.device}, chosen_rewards on {chosen_rewards.device}")
    return batch


@torch.library.custom_op("guard::bt_head_fwd", mutates_args=())
def bt_head_fwd(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None, margin_value: float,
    categories: torch.Tensor | None, num_categories: int, center_coef: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One launch: (loss, pair_losses, moments, counts, accuracy); without categories moments is [0, 2, 4]
    and counts [0]. A margin tensor, when given, replaces margin_value. Inputs contiguous. A custom op,
    so torch.compile calls it as one opaque node."""
    batch = chosen.shape[0]
    device = chosen.device
    has_cats = categories is not None
    block_b, block_c = head_blocks(batch, num_categories if has_cats else None)
    loss = torch.empty((), dtype=torch.float32, device=device)
    accuracy = torch.empty((), dtype=torch.float32, device=device)
    pair_losses = torch.empty(batch, dtype=torch.float32, device=device)
    moments = torch.empty(num_categories if has_cats else 0, 2, 4, dtype=torch.float32, device=device)
    counts = torch.empty(num_categories if has_cats else 0, dtype=torch.int64, device=device)
    _bt_head_fwd_kernel[(1,)](
        chosen, rejected, chosen if margin is None else margin, categories if has_cats else chosen,
        loss, pair_losses, pair_losses if not has_cats else moments, pair_losses if not has_cats else counts, accuracy,
        batch, num_categories if has_cats else 1, float(margin_value), float(center_coef),
        HAS_MARGIN=margin is not None, HAS_CENTER=bool(center_coef), HAS_CATS=has_cats,
        BLOCK_B=block_b, BLOCK_C=block_c, VARIANCE_FLOOR=MOMENT_VARIANCE_FLOOR,
    )  # fmt: skip
    return loss, pair_losses, moments, counts, accuracy


@bt_head_fwd.register_fake
def _(chosen, rejected, margin, margin_value, categories, num_categories, center_coef):
    cats = num_categories if categories is not None else 0
    f32 = dict(dtype=torch.float32, device=chosen.device)
    return (torch.empty((), **f32), torch.empty(chosen.shape[0], **f32), torch.empty(cats, 2, 4, **f32),
            torch.empty(cats, dtype=torch.int64, device=chosen.device), torch.empty((), **f32))


@torch.library.custom_op("guard::bt_head_bwd", mutates_args=())
def bt_head_bwd(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None, margin_value: float,
    categories: torch.Tensor | None, num_categories: int, center_coef: float,
    g_loss: torch.Tensor | None, g_pair: torch.Tensor | None, g_moments: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One launch: (∂/∂chosen, ∂/∂rejected) of Σ g·output over the outputs whose upstream gradient is not None."""
    batch = chosen.shape[0]
    moment_grads = categories is not None and g_moments is not None
    block_b, block_c = head_blocks(batch, num_categories if categories is not None else None)
    grad_chosen = torch.empty_like(chosen)
    grad_rejected = torch.empty_like(rejected)
    _bt_head_bwd_kernel[(1,)](
        chosen, rejected, chosen if margin is None else margin, categories if moment_grads else chosen,
        grad_chosen if g_loss is None else g_loss.contiguous(), grad_chosen if g_pair is None else g_pair.contiguous(),
        grad_chosen if not moment_grads else g_moments.contiguous(), grad_chosen, grad_rejected,
        batch, num_categories if moment_grads else 1, float(margin_value), float(center_coef),
        HAS_MARGIN=margin is not None, HAS_CENTER=bool(center_coef), MOMENT_GRADS=moment_grads,
        HAS_G_LOSS=g_loss is not None, HAS_G_PAIR=g_pair is not None,
        BLOCK_B=block_b, BLOCK_C=block_c, VARIANCE_FLOOR=MOMENT_VARIANCE_FLOOR,
    )  # fmt: skip
    return grad_chosen, grad_rejected


@bt_head_bwd.register_fake
def _(chosen, rejected, *args):
    return torch.empty_like(chosen), torch.empty_like(rejected)


class BTHeadFunction(torch.autograd.Function):
    """``apply(chosen_rewards, rejected_rewards, margin, categories, num_categories, center_coef)
    -> (loss, pair_losses, moments, counts, accuracy)``.

    chosen_rewards, rejected_rewards: [B], float32 / bfloat16 / float16 (differentiable). margin: float
    tensor [B], a float, or None (no gradient). categories: int [B] in [0, num_categories) or None (then
    moments = counts = None; a value outside [0, C) counts in no category and makes every moment NaN).
    Returns loss (0-dim, mean of pair_losses), pair_losses [B], moments [C, 2, 4] (chosen, rejected) ×
    (mean, variance, skewness, excess kurtosis), all float32, counts [C] int64 and accuracy (0-dim
    float32, the fraction of pairs with r_c > r_r); counts and accuracy are not differentiable. Gradients
    come back in the inputs' dtypes.
    """

    @staticmethod
    def forward(ctx, chosen_rewards, rejected_rewards, margin, categories, num_categories, center_coef):
        _check_inputs(chosen_rewards, rejected_rewards, margin, categories, num_categories)
        chosen = chosen_rewards.contiguous()
        rejected = rejected_rewards.contiguous()
        margin_tensor = margin.contiguous() if isinstance(margin, torch.Tensor) else None
        categories = None if categories is None else categories.contiguous()
        margin_value = 0.0 if margin_tensor is not None or margin is None else float(margin)
        loss, pair_losses, moments, counts, accuracy = bt_head_fwd(
            chosen, rejected, margin_tensor, margin_value, categories, num_categories or 0, float(center_coef)
        )
        ctx.save_for_backward(chosen, rejected, margin_tensor, categories)
        ctx.options = (margin_value, num_categories or 0, float(center_coef))
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(counts, accuracy)
        if categories is None:
            return loss, pair_losses, None, None, accuracy
        return loss, pair_losses, moments, counts, accuracy

    @staticmethod
    @once_differentiable
    def backward(ctx, g_loss, g_pair, g_moments, _g_counts, _g_accuracy):
        if not any(ctx.needs_input_grad[:2]) or all(g is None for g in (g_loss, g_pair, g_moments)):
            return (None,) * 6
        chosen, rejected, margin_tensor, categories = ctx.saved_tensors
        margin_value, num_categories, center_coef = ctx.options
        grad_chosen, grad_rejected = bt_head_bwd(
            chosen, rejected, margin_tensor, margin_value, categories, num_categories, center_coef, g_loss, g_pair, g_moments
        )
        return (
            grad_chosen if ctx.needs_input_grad[0] else None,
            grad_rejected if ctx.needs_input_grad[1] else None,
        ) + (None,) * 4
