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
`guard.losses.bt_pair_losses` and `guard.losses.category_moments` (DESIGN.md §3); the moment derivatives
are in `guard.kernels.moments`.

    loss, pair_losses, moments, counts, accuracy = BTHeadFunction.apply(
        chosen_rewards, rejected_rewards, margin, categories, num_categories, center_coef)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from guard.kernels.moments import (
    _category_onehot,
    _category_sum,
    _central_power_sums,
    _moment_grad,
    _moment_grad_coefficients,
    _store_moments,
)
from guard.losses import MOMENT_VARIANCE_FLOOR


@triton.jit
def _sigmoid(x):
    e = tl.exp(-tl.abs(x))  # never overflows
    inv = 1.0 / (1.0 + e)
    return tl.where(x >= 0, inv, e * inv)


@triton.jit
def _log_sigmoid(x):
    # logσ(x) = min(x, 0) − log1p(e^−|x|), log1p(e) as log(u)·e/(u − 1) with u = 1 + e (e where u rounds to 1).
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    exact = u == 1.0
    log1p = tl.where(exact, e, tl.log(u) * (e / tl.where(exact, 1.0, u - 1.0)))
    return tl.minimum(x, 0.0) - log1p


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
def _bt_head_fwd_kernel(
    chosen_ptr, rejected_ptr, margin_ptr, cats_ptr,
    loss_ptr, pair_losses_ptr, moments_ptr, counts_ptr, accuracy_ptr,
    B, C, margin_value, center_coef,
    HAS_MARGIN: tl.constexpr, HAS_CENTER: tl.constexpr, HAS_CATS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, VARIANCE_FLOOR: tl.constexpr,
):  # fmt: skip
    rows = tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_C)

    # Pass 1: losses, accuracy, per-category counts and sums.
    total = tl.zeros([BLOCK_B], dtype=tl.float32)
    correct = tl.zeros([BLOCK_B], dtype=tl.float32)
    count = tl.zeros([BLOCK_C], dtype=tl.float32)
    sum_c = tl.zeros([BLOCK_C], dtype=tl.float32)
    sum_r = tl.zeros([BLOCK_C], dtype=tl.float32)
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
            cats = tl.load(cats_ptr + offs, mask=mask, other=-1)
            onehot = _category_onehot(cats, mask, BLOCK_C)
            count += tl.sum(onehot, axis=0)
            sum_c += _category_sum(onehot, r_c)
            sum_r += _category_sum(onehot, r_r)
    tl.store(loss_ptr, tl.sum(total, axis=0) / B)
    tl.store(accuracy_ptr, tl.sum(correct, axis=0) / B)

    # Pass 2: the centered powers.
    if HAS_CATS:
        inv_n = 1.0 / tl.maximum(count, 1.0)
        mean_c = sum_c * inv_n
        mean_r = sum_r * inv_n
        s2_c = tl.zeros([BLOCK_C], dtype=tl.float32)
        s3_c = tl.zeros([BLOCK_C], dtype=tl.float32)
        s4_c = tl.zeros([BLOCK_C], dtype=tl.float32)
        s2_r = tl.zeros([BLOCK_C], dtype=tl.float32)
        s3_r = tl.zeros([BLOCK_C], dtype=tl.float32)
        s4_r = tl.zeros([BLOCK_C], dtype=tl.float32)
        for start in range(0, B, BLOCK_B):
            offs = start + rows
            mask = offs < B
            r_c, r_r = _load_rewards(chosen_ptr, rejected_ptr, offs, mask)
            cats = tl.load(cats_ptr + offs, mask=mask, other=-1)
            onehot = _category_onehot(cats, mask, BLOCK_C)
            p2, p3, p4 = _central_power_sums(onehot, r_c, mean_c)
            s2_c += p2
            s3_c += p3
            s4_c += p4
            p2, p3, p4 = _central_power_sums(onehot, r_r, mean_r)
            s2_r += p2
            s3_r += p3
            s4_r += p4
        _store_moments(moments_ptr, 0, mean_c, s2_c * inv_n, s3_c * inv_n, s4_c * inv_n, C, BLOCK_C, VARIANCE_FLOOR)
        _store_moments(moments_ptr, 1, mean_r, s2_r * inv_n, s3_r * inv_n, s4_r * inv_n, C, BLOCK_C, VARIANCE_FLOOR)
        tl.store(counts_ptr + cols, count.to(tl.int64), mask=cols < C)


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
        count = tl.zeros([BLOCK_C], dtype=tl.float32)
        sum_c = tl.zeros([BLOCK_C], dtype=tl.float32)
        sum_r = tl.zeros([BLOCK_C], dtype=tl.float32)
        for start in range(0, B, BLOCK_B):
            offs = start + rows
            mask = offs < B
            r_c, r_r = _load_rewards(chosen_ptr, rejected_ptr, offs, mask)
            cats = tl.load(cats_ptr + offs, mask=mask, other=-1)
            onehot = _category_onehot(cats, mask, BLOCK_C)
            count += tl.sum(onehot, axis=0)
            sum_c += _category_sum(onehot, r_c)
            sum_r += _category_sum(onehot, r_r)
        inv_n = 1.0 / tl.maximum(count, 1.0)
        mean_c = sum_c * inv_n
        mean_r = sum_r * inv_n
        s2_c = tl.zeros([BLOCK_C], dtype=tl.float32)
        s3_c = tl.zeros([BLOCK_C], dtype=tl.float32)
        s4_c = tl.zeros([BLOCK_C], dtype=tl.float32)
        s2_r = tl.zeros([BLOCK_C], dtype=tl.float32)
        s3_r = tl.zeros([BLOCK_C], dtype=tl.float32)
        s4_r = tl.zeros([BLOCK_C], dtype=tl.float32)
        for start in range(0, B, BLOCK_B):
            offs = start + rows
            mask = offs < B
            r_c, r_r = _load_rewards(chosen_ptr, rejected_ptr, offs, mask)
            cats = tl.load(cats_ptr + offs, mask=mask, other=-1)
            onehot = _category_onehot(cats, mask, BLOCK_C)
            p2, p3, p4 = _central_power_sums(onehot, r_c, mean_c)
            s2_c += p2
            s3_c += p3
            s4_c += p4
            p2, p3, p4 = _central_power_sums(onehot, r_r, mean_r)
            s2_r += p2
            s3_r += p3
            s4_r += p4
        m2_c = s2_c * inv_n
        m3_c = s3_c * inv_n
        m2_r = s2_r * inv_n
        m3_r = s3_r * inv_n
        a0_c, a1_c, a2_c, a3_c = _moment_grad_coefficients(
            g_moments_ptr, 0, inv_n, m2_c, m3_c, s4_c * inv_n, C, BLOCK_C, VARIANCE_FLOOR
        )
        a0_r, a1_r, a2_r, a3_r = _moment_grad_coefficients(
            g_moments_ptr, 1, inv_n, m2_r, m3_r, s4_r * inv_n, C, BLOCK_C, VARIANCE_FLOOR
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
            cats = tl.load(cats_ptr + offs, mask=mask, other=-1)
            onehot = _category_onehot(cats, mask, BLOCK_C)
            grad_c += _moment_grad(onehot, r_c, mean_c, m2_c, m3_c, a0_c, a1_c, a2_c, a3_c)
            grad_r += _moment_grad(onehot, r_r, mean_r, m2_r, m3_r, a0_r, a1_r, a2_r, a3_r)
        tl.store(grad_chosen_ptr + offs, grad_c.to(grad_chosen_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_rejected_ptr + offs, grad_r.to(grad_rejected_ptr.dtype.element_ty), mask=mask)


def _block_sizes(batch: int, num_categories: int | None) -> tuple[int, int]:
    """BLOCK_C ≥ C; BLOCK_B keeps a [BLOCK_B, BLOCK_C] one-hot tile at 4096 elements or fewer (it lives in
    registers), and at most 1024 rows without categories."""
    block_c = max(2, triton.next_power_of_2(num_categories or 1))
    block_b = max(16, min(triton.next_power_of_2(batch), 4096 // block_c, 1024))
    return block_b, block_c


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


def _bt_head_forward(chosen, rejected, margin, categories, num_categories, center_coef):
    """One launch: (loss, pair_losses, moments | None, counts | None, accuracy). Inputs contiguous."""
    batch = chosen.shape[0]
    device = chosen.device
    has_cats = categories is not None
    has_margin = isinstance(margin, torch.Tensor)
    block_b, block_c = _block_sizes(batch, num_categories if has_cats else None)
    loss = torch.empty((), dtype=torch.float32, device=device)
    accuracy = torch.empty((), dtype=torch.float32, device=device)
    pair_losses = torch.empty(batch, dtype=torch.float32, device=device)
    moments = counts = None
    if has_cats:
        moments = torch.empty(num_categories, 2, 4, dtype=torch.float32, device=device)
        counts = torch.empty(num_categories, dtype=torch.int64, device=device)
    _bt_head_fwd_kernel[(1,)](
        chosen, rejected, margin if has_margin else chosen, categories if has_cats else chosen,
        loss, pair_losses, pair_losses if moments is None else moments, pair_losses if counts is None else counts, accuracy,
        batch, num_categories if has_cats else 1, 0.0 if has_margin or margin is None else float(margin), float(center_coef),
        HAS_MARGIN=has_margin, HAS_CENTER=bool(center_coef), HAS_CATS=has_cats,
        BLOCK_B=block_b, BLOCK_C=block_c, VARIANCE_FLOOR=MOMENT_VARIANCE_FLOOR,
    )  # fmt: skip
    return loss, pair_losses, moments, counts, accuracy


def _bt_head_backward(chosen, rejected, margin, categories, num_categories, center_coef, g_loss, g_pair, g_moments):
    """One launch: (∂/∂chosen, ∂/∂rejected) of Σ g·output over the outputs whose upstream gradient is not None."""
    batch = chosen.shape[0]
    has_margin = isinstance(margin, torch.Tensor)
    moment_grads = categories is not None and g_moments is not None
    block_b, block_c = _block_sizes(batch, num_categories if categories is not None else None)
    grad_chosen = torch.empty_like(chosen)
    grad_rejected = torch.empty_like(rejected)
    _bt_head_bwd_kernel[(1,)](
        chosen, rejected, margin if has_margin else chosen, categories if moment_grads else chosen,
        grad_chosen if g_loss is None else g_loss.contiguous(), grad_chosen if g_pair is None else g_pair.contiguous(),
        grad_chosen if not moment_grads else g_moments.contiguous(), grad_chosen, grad_rejected,
        batch, num_categories if moment_grads else 1, 0.0 if has_margin or margin is None else float(margin), float(center_coef),
        HAS_MARGIN=has_margin, HAS_CENTER=bool(center_coef), MOMENT_GRADS=moment_grads,
        HAS_G_LOSS=g_loss is not None, HAS_G_PAIR=g_pair is not None,
        BLOCK_B=block_b, BLOCK_C=block_c, VARIANCE_FLOOR=MOMENT_VARIANCE_FLOOR,
    )  # fmt: skip
    return grad_chosen, grad_rejected


class BTHeadFunction(torch.autograd.Function):
    """``apply(chosen_rewards, rejected_rewards, margin, categories, num_categories, center_coef)
    -> (loss, pair_losses, moments, counts, accuracy)``.

    chosen_rewards, rejected_rewards: [B], float32 / bfloat16 / float16 (differentiable). margin: float
    tensor [B], a float, or None (no gradient). categories: int [B] in [0, num_categories) or None (then
    moments = counts = None; out-of-range values count in no category). Returns loss (0-dim, mean of
    pair_losses), pair_losses [B], moments [C, 2, 4] (chosen, rejected) × (mean, variance, skewness,
    excess kurtosis), all float32, counts [C] int64 and accuracy (0-dim float32, the fraction of pairs with
    r_c > r_r); counts and accuracy are not differentiable. Gradients come back in the inputs' dtypes.
    """

    @staticmethod
    def forward(ctx, chosen_rewards, rejected_rewards, margin, categories, num_categories, center_coef):
        _check_inputs(chosen_rewards, rejected_rewards, margin, categories, num_categories)
        chosen = chosen_rewards.contiguous()
        rejected = rejected_rewards.contiguous()
        margin_tensor = margin.contiguous() if isinstance(margin, torch.Tensor) else None
        categories = None if categories is None else categories.contiguous()
        outputs = _bt_head_forward(chosen, rejected, margin if margin_tensor is None else margin_tensor, categories, num_categories, center_coef)
        ctx.save_for_backward(chosen, rejected, margin_tensor, categories)
        ctx.options = (None if margin_tensor is not None else margin, num_categories, float(center_coef))
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(*(t for t in (outputs[3], outputs[4]) if t is not None))
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, g_loss, g_pair, g_moments, _g_counts, _g_accuracy):
        if not any(ctx.needs_input_grad[:2]) or all(g is None for g in (g_loss, g_pair, g_moments)):
            return (None,) * 6
        chosen, rejected, margin_tensor, categories = ctx.saved_tensors
        margin_value, num_categories, center_coef = ctx.options
        margin = margin_tensor if margin_tensor is not None else margin_value
        grad_chosen, grad_rejected = _bt_head_backward(
            chosen, rejected, margin, categories, num_categories, center_coef, g_loss, g_pair, g_moments
        )
        return (
            grad_chosen if ctx.needs_input_grad[0] else None,
            grad_rejected if ctx.needs_input_grad[1] else None,
        ) + (None,) * 4
