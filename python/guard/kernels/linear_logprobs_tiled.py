"""The tiled backward of the fused linear log-softmax (impl="tiled"): one kernel, fp32 atomics.

Each program takes one block of rows with a label (through the forward's device-side permutation; blocks
of ignored rows return at once) and one vocabulary tile, recomputes the logit tile, forms
dz = (g_logp·(onehot − p) − g_ent·p·(log p + H)) / T, and adds its share of grad_hidden = dz·weight,
grad_weight = dzᵀ·hidden and grad_bias = Σ dz into fp32 accumulators with atomics (the caller casts them
back). Only the gradients that are needed are formed: a frozen head (LoRA) skips the dzᵀ·hidden products,
their atomics and the fp32 [V, H] accumulator. The order of the atomic adds varies between runs, so the
last bits of the gradients may too (the chunked design is deterministic).

FLOPs: 2·N'·H·V each for the recompute, dz·weight and dzᵀ·hidden (N' = rows with a label).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from guard.kernels.linear_tiles import _compacted_rows, _dz_tile, _round_to
from guard.kernels.tuning import dot_flags, linear_logprobs_blocks


@triton.jit
def _linear_logprobs_tiled_bwd_kernel(
    hidden_ptr, weight_ptr, bias_ptr, labels_ptr, order_ptr, count_ptr, lse_ptr, entropy_ptr,
    grad_logp_ptr, grad_ent_ptr, grad_hidden_ptr, grad_weight_ptr, grad_bias_ptr,
    N, V, H, stride_hn, stride_hh, stride_wv, stride_wh, inv_temperature,
    HAS_BIAS: tl.constexpr, WITH_ENTROPY: tl.constexpr,
    NEED_HIDDEN: tl.constexpr, NEED_WEIGHT: tl.constexpr, NEED_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    slot_block = tl.program_id(0)
    rows, _in_range, live, any_live = _compacted_rows(order_ptr, count_ptr, slot_block, N, BLOCK_N)
    if any_live:
        cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
        col_mask = cols < V
        dz = _dz_tile(hidden_ptr, weight_ptr, bias_ptr, labels_ptr, lse_ptr, entropy_ptr, grad_logp_ptr, grad_ent_ptr,
                      rows, cols, live, col_mask, H, stride_hn, stride_hh, stride_wv, stride_wh, inv_temperature,
                      HAS_BIAS, WITH_ENTROPY, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION, UPCAST_DOT)
        dz_in = _round_to(dz, hidden_ptr.dtype.element_ty, UPCAST_DOT)  # the dots take hidden's dtype, as cuBLAS would
        if UPCAST_DOT:
            dz_in = dz_in.to(tl.float32)
        cols64 = cols.to(tl.int64)
        if NEED_HIDDEN or NEED_WEIGHT:
            for h0 in range(0, H, BLOCK_H):
                hs = h0 + tl.arange(0, BLOCK_H)
                h_mask = hs < H
                if NEED_HIDDEN:
                    w = tl.load(weight_ptr + cols64[:, None] * stride_wv + hs[None, :] * stride_wh,
                                mask=col_mask[:, None] & h_mask[None, :], other=0.0)
                    w = _round_to(w, hidden_ptr.dtype.element_ty, UPCAST_DOT).to(dz_in.dtype)  # products in hidden's dtype
                    d_hidden = tl.dot(dz_in, w, input_precision=DOT_PRECISION)
                    tl.atomic_add(grad_hidden_ptr + rows[:, None] * H + hs[None, :], d_hidden,
                                  mask=live[:, None] & h_mask[None, :])
                if NEED_WEIGHT:
                    x = tl.load(hidden_ptr + rows[:, None] * stride_hn + hs[None, :] * stride_hh,
                                mask=live[:, None] & h_mask[None, :], other=0.0).to(dz_in.dtype)
                    d_weight = tl.dot(tl.trans(dz_in), x, input_precision=DOT_PRECISION)
                    tl.atomic_add(grad_weight_ptr + cols64[:, None] * H + hs[None, :], d_weight,
                                  mask=col_mask[:, None] & h_mask[None, :])
        if NEED_BIAS:
            tl.atomic_add(grad_bias_ptr + cols, tl.sum(dz, axis=0), mask=col_mask)


@torch.library.custom_op("guard::linear_logprobs_bwd_tiled", mutates_args=())
def linear_logprobs_bwd_tiled(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
    order: torch.Tensor, count: torch.Tensor, lse: torch.Tensor, entropy: torch.Tensor,
    grad_logp: torch.Tensor, grad_entropy: torch.Tensor, inv_temperature: float, ignore_index: int, with_entropy: bool,
    need_hidden: bool, need_weight: bool, need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_hidden, grad_weight, grad_bias) in the inputs' dtypes; each is empty unless needed (and
    grad_bias unless there is a bias). `labels` must be contiguous (the forward made it so); the kernel
    finds the labelled rows through order and count (ignore_index is part of the shared signature)."""
    n_rows, hidden_size = hidden.shape
    vocab = weight.shape[0]
    need_bias = need_bias and bias is not None
    f32 = dict(device=hidden.device, dtype=torch.float32)
    grad_hidden = torch.zeros(hidden.shape if need_hidden else 0, **f32)
    grad_weight = torch.zeros(weight.shape if need_weight else 0, **f32)
    grad_bias = torch.zeros(vocab if need_bias else 0, **f32)
    if n_rows > 0 and (need_hidden or need_weight or need_bias):
        blocks = linear_logprobs_blocks(n_rows, vocab, hidden_size, hidden.dtype, hidden.device)
        grid = (triton.cdiv(n_rows, blocks.block_n), triton.cdiv(vocab, blocks.block_v))
        _linear_logprobs_tiled_bwd_kernel[grid](
            hidden, weight, bias if bias is not None else hidden, labels, order, count, lse,
            entropy if with_entropy else lse, grad_logp.contiguous(), grad_entropy.contiguous() if with_entropy else lse,
            grad_hidden if need_hidden else lse, grad_weight if need_weight else lse, grad_bias if need_bias else lse,
            n_rows, vocab, hidden_size, hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
            inv_temperature,
            HAS_BIAS=bias is not None, WITH_ENTROPY=with_entropy,
            NEED_HIDDEN=need_hidden, NEED_WEIGHT=need_weight, NEED_BIAS=need_bias,
            BLOCK_N=blocks.block_n, BLOCK_V=blocks.block_v, BLOCK_H=blocks.block_h,
            **dot_flags(hidden.dtype), num_warps=blocks.num_warps, num_stages=blocks.num_stages,
        )  # fmt: skip
    return (grad_hidden.to(hidden.dtype), grad_weight.to(weight.dtype),
            grad_bias.to(bias.dtype) if need_bias else grad_bias)


@linear_logprobs_bwd_tiled.register_fake
def _(hidden, weight, bias, labels, order, count, lse, entropy, grad_logp, grad_entropy, inv_temperature,
      ignore_index, with_entropy, need_hidden, need_weight, need_bias):  # fmt: skip
    need_bias = need_bias and bias is not None
    return (hidden.new_empty(hidden.shape if need_hidden else 0), weight.new_empty(weight.shape if need_weight else 0),
            weight.new_empty(weight.shape[0] if need_bias else 0, dtype=bias.dtype if need_bias else torch.float32))
