"""Fused linear log-softmax at the label: log p(label | hidden) with p = softmax((hidden @ weight.T + bias) / T),
and optionally the entropy of p, without ever holding a [rows x vocab] tensor.

Forward: each program takes BLOCK_N rows and one range of the vocabulary, builds logit tiles
[BLOCK_N, BLOCK_V] with tl.dot over hidden chunks (fp32 accumulation) and folds them into an online
logsumexp (running max m, sum s = Σ exp(z − m), and for the entropy t = Σ exp(z − m)·z) while picking
out the label's logit. The vocabulary ranges ("splits") of a row block run in parallel; their partial
(m, s, t) are merged by a few elementwise torch ops into lse, log p = z_label − lse and
entropy = lse − t/s.

Backward: each program recomputes one logit tile, forms dz = g_logp·(onehot − p) − g_ent·p·(log p + H),
scales by 1/T and adds its share of grad_hidden = dz @ weight, grad_weight = dz.T @ hidden and
grad_bias = Σ dz with fp32 atomics (the accumulators are fp32; the caller casts them back).

Addresses are computed in int64, so N·H and V·H may exceed 2^31.

Launches: forward 1 kernel + 7 small ops on [splits, N]; backward 1 kernel + 3 zero-fills + casts.
The launchers are registered as torch.library custom ops so torch.compile treats them as opaque calls.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from guard.kernels.softmax_tiles import _logprob_entropy_grad, _online_logsumexp_fold
from guard.kernels.tuning import linear_logprobs_blocks


@triton.jit
def _logit_tile(
    hidden_ptr, weight_ptr, bias_ptr, rows, cols, row_mask, col_mask, H, stride_h, stride_w, inv_temperature,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    """z = (hidden[rows] @ weight[cols].T + bias[cols]) / T as an fp32 [BLOCK_N, BLOCK_V] tile."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        h_mask = hs < H
        x = tl.load(hidden_ptr + rows.to(tl.int64)[:, None] * stride_h + hs[None, :], mask=row_mask[:, None] & h_mask[None, :], other=0.0)
        w = tl.load(weight_ptr + cols.to(tl.int64)[:, None] * stride_w + hs[None, :], mask=col_mask[:, None] & h_mask[None, :], other=0.0)
        if UPCAST_DOT:
            x, w = x.to(tl.float32), w.to(tl.float32)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return acc * inv_temperature


@triton.jit
def _linear_logprobs_fwd_kernel(
    hidden_ptr, weight_ptr, bias_ptr, labels_ptr,
    part_max_ptr, part_sum_ptr, part_ent_ptr, part_label_ptr,
    N, V, H, stride_h, stride_w, inv_temperature, v_per_split,
    HAS_BIAS: tl.constexpr, WITH_ENTROPY: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    labels = tl.load(labels_ptr + rows, mask=row_mask, other=-1)

    run_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    run_ent = tl.zeros((BLOCK_N,), dtype=tl.float32)
    label_logit = tl.zeros((BLOCK_N,), dtype=tl.float32)
    v_start = split * v_per_split
    v_end = tl.minimum(v_start + v_per_split, V)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < v_end
        z = _logit_tile(hidden_ptr, weight_ptr, bias_ptr, rows, cols, row_mask, col_mask, H, stride_h, stride_w,
                        inv_temperature, HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION, UPCAST_DOT)
        run_max, run_sum, run_ent, label_logit = _online_logsumexp_fold(
            run_max, run_sum, run_ent, label_logit, z, cols, col_mask, labels, WITH_ENTROPY)

    offs = split * N + rows
    tl.store(part_max_ptr + offs, run_max, mask=row_mask)
    tl.store(part_sum_ptr + offs, run_sum, mask=row_mask)
    tl.store(part_label_ptr + offs, label_logit, mask=row_mask)
    if WITH_ENTROPY:
        tl.store(part_ent_ptr + offs, run_ent, mask=row_mask)


@triton.jit
def _linear_logprobs_bwd_kernel(
    hidden_ptr, weight_ptr, bias_ptr, labels_ptr, lse_ptr, entropy_ptr, grad_logp_ptr, grad_ent_ptr,
    grad_hidden_ptr, grad_weight_ptr, grad_bias_ptr,
    N, V, H, stride_h, stride_w, inv_temperature, ignore_index,
    HAS_BIAS: tl.constexpr, WITH_ENTROPY: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    labels = tl.load(labels_ptr + rows, mask=rows < N, other=ignore_index)
    row_mask = (rows < N) & (labels != ignore_index)  # ignored rows carry no gradient
    col_mask = cols < V

    z = _logit_tile(hidden_ptr, weight_ptr, bias_ptr, rows, cols, row_mask, col_mask, H, stride_h, stride_w,
                    inv_temperature, HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION, UPCAST_DOT)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    g_logp = tl.load(grad_logp_ptr + rows, mask=row_mask, other=0.0)
    g_ent = g_logp  # placeholders when there is no entropy
    ent = g_logp
    if WITH_ENTROPY:
        g_ent = tl.load(grad_ent_ptr + rows, mask=row_mask, other=0.0)
        ent = tl.load(entropy_ptr + rows, mask=row_mask, other=0.0)
    dz = _logprob_entropy_grad(z, lse, cols, labels, g_logp, g_ent, ent, WITH_ENTROPY)
    keep = row_mask[:, None] & col_mask[None, :]
    dz = tl.where(keep, dz * inv_temperature, 0.0)
    dz_in = dz.to(hidden_ptr.dtype.element_ty)  # the dots take the input dtype, as cuBLAS would
    if UPCAST_DOT:
        dz_in = dz_in.to(tl.float32)

    for h0 in range(0, H, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        h_mask = hs < H
        x = tl.load(hidden_ptr + rows.to(tl.int64)[:, None] * stride_h + hs[None, :], mask=row_mask[:, None] & h_mask[None, :], other=0.0)
        w = tl.load(weight_ptr + cols.to(tl.int64)[:, None] * stride_w + hs[None, :], mask=col_mask[:, None] & h_mask[None, :], other=0.0)
        if UPCAST_DOT:
            x, w = x.to(tl.float32), w.to(tl.float32)
        d_hidden = tl.dot(dz_in, w, input_precision=DOT_PRECISION)
        tl.atomic_add(grad_hidden_ptr + rows.to(tl.int64)[:, None] * H + hs[None, :], d_hidden, mask=row_mask[:, None] & h_mask[None, :])
        d_weight = tl.dot(tl.trans(dz_in), x, input_precision=DOT_PRECISION)
        tl.atomic_add(grad_weight_ptr + cols.to(tl.int64)[:, None] * H + hs[None, :], d_weight, mask=col_mask[:, None] & h_mask[None, :])
    if HAS_BIAS:
        tl.atomic_add(grad_bias_ptr + cols, tl.sum(dz, axis=0), mask=col_mask)


def _dot_flags(dtype: torch.dtype) -> dict:
    """fp32 inputs get true fp32 products (no tf32 rounding) so they can match a float64 reference.
    Triton's CPU interpreter mis-multiplies 16-bit dot operands, so there they are widened to fp32 first:
    the products of 16-bit values are exact in fp32, which is what the tensor cores compute on the GPU."""
    upcast = os.environ.get("TRITON_INTERPRET") == "1" and dtype != torch.float32
    return dict(DOT_PRECISION="ieee" if dtype == torch.float32 or upcast else "tf32", UPCAST_DOT=upcast)


def _check_inputs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden [N, H] and weight [V, H] must share H, got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if hidden.dtype != weight.dtype or hidden.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"hidden and weight must share one of float32/bfloat16/float16, got {hidden.dtype} and {weight.dtype}")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels must be [N] = [{hidden.shape[0]}], got {tuple(labels.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")


@torch.library.custom_op("guard::linear_logprobs_fwd", mutates_args=())
def linear_logprobs_fwd(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
    inv_temperature: float, ignore_index: int, with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward kernel: returns (logp [N], entropy [N] or empty, lse [N]), all fp32; ignored rows give 0."""
    _check_inputs(hidden, weight, bias, labels)
    hidden, weight = hidden.contiguous(), weight.contiguous()
    labels = labels.contiguous()
    n_rows, hidden_size = hidden.shape
    vocab = weight.shape[0]
    f32 = dict(device=hidden.device, dtype=torch.float32)
    if n_rows == 0:
        return hidden.new_zeros(0, dtype=torch.float32), hidden.new_zeros(0, dtype=torch.float32), hidden.new_zeros(0, dtype=torch.float32)
    blocks = linear_logprobs_blocks(n_rows, vocab, hidden_size, hidden.dtype, hidden.device)
    part_max = torch.empty(blocks.splits, n_rows, **f32)
    part_sum = torch.empty(blocks.splits, n_rows, **f32)
    part_label = torch.empty(blocks.splits, n_rows, **f32)
    part_ent = torch.empty(blocks.splits if with_entropy else 1, n_rows, **f32)
    grid = (triton.cdiv(n_rows, blocks.block_n), blocks.splits)
    _linear_logprobs_fwd_kernel[grid](
        hidden, weight, bias if bias is not None else hidden, labels,
        part_max, part_sum, part_ent, part_label,
        n_rows, vocab, hidden_size, hidden.stride(0), weight.stride(0), inv_temperature, blocks.v_per_split,
        HAS_BIAS=bias is not None, WITH_ENTROPY=with_entropy,
        BLOCK_N=blocks.block_n, BLOCK_V=blocks.block_v, BLOCK_H=blocks.block_h,
        **_dot_flags(hidden.dtype), num_warps=blocks.num_warps, num_stages=blocks.num_stages,
    )
    # Merge the vocabulary splits: lse = M + log Σ_k s_k e^{m_k − M}; entropy = lse − Σ_k t_k e^{m_k − M} / S.
    row_max = part_max.amax(dim=0)
    weights = torch.exp(part_max - row_max)
    total = (part_sum * weights).sum(dim=0)
    lse = row_max + torch.log(total)
    ignored = labels == ignore_index
    logp = torch.where(ignored, 0.0, part_label.sum(dim=0) - lse)
    if with_entropy:
        entropy = torch.where(ignored, 0.0, lse - (part_ent * weights).sum(dim=0) / total)
    else:
        entropy = hidden.new_zeros(0, dtype=torch.float32)
    return logp, entropy, lse


@linear_logprobs_fwd.register_fake
def _(hidden, weight, bias, labels, inv_temperature, ignore_index, with_entropy):
    n_rows = hidden.shape[0]
    return (hidden.new_empty(n_rows, dtype=torch.float32), hidden.new_empty(n_rows if with_entropy else 0, dtype=torch.float32),
            hidden.new_empty(n_rows, dtype=torch.float32))


@torch.library.custom_op("guard::linear_logprobs_bwd", mutates_args=())
def linear_logprobs_bwd(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
    lse: torch.Tensor, entropy: torch.Tensor, grad_logp: torch.Tensor, grad_entropy: torch.Tensor,
    inv_temperature: float, ignore_index: int, with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernel: returns (grad_hidden, grad_weight, grad_bias) in the input dtypes
    (grad_bias is empty when there is no bias)."""
    hidden, weight, labels = hidden.contiguous(), weight.contiguous(), labels.contiguous()
    n_rows, hidden_size = hidden.shape
    vocab = weight.shape[0]
    f32 = dict(device=hidden.device, dtype=torch.float32)
    grad_hidden = torch.zeros(n_rows, hidden_size, **f32)
    grad_weight = torch.zeros(vocab, hidden_size, **f32)
    grad_bias = torch.zeros(vocab if bias is not None else 0, **f32)
    if n_rows > 0:
        blocks = linear_logprobs_blocks(n_rows, vocab, hidden_size, hidden.dtype, hidden.device)
        grid = (triton.cdiv(n_rows, blocks.block_n), triton.cdiv(vocab, blocks.block_v))
        _linear_logprobs_bwd_kernel[grid](
            hidden, weight, bias if bias is not None else hidden, labels, lse,
            entropy if with_entropy else lse, grad_logp.contiguous(),
            grad_entropy.contiguous() if with_entropy else lse,
            grad_hidden, grad_weight, grad_bias if bias is not None else grad_hidden,
            n_rows, vocab, hidden_size, hidden.stride(0), weight.stride(0), inv_temperature, ignore_index,
            HAS_BIAS=bias is not None, WITH_ENTROPY=with_entropy,
            BLOCK_N=blocks.block_n, BLOCK_V=blocks.block_v, BLOCK_H=blocks.block_h,
            **_dot_flags(hidden.dtype), num_warps=blocks.num_warps, num_stages=blocks.num_stages,
        )
    grad_bias = grad_bias.to(bias.dtype) if bias is not None else grad_bias
    return grad_hidden.to(hidden.dtype), grad_weight.to(weight.dtype), grad_bias


@linear_logprobs_bwd.register_fake
def _(hidden, weight, bias, labels, lse, entropy, grad_logp, grad_entropy, inv_temperature, ignore_index, with_entropy):
    return (torch.empty_like(hidden), torch.empty_like(weight),
            weight.new_empty(weight.shape[0] if bias is not None else 0, dtype=bias.dtype if bias is not None else torch.float32))


class LinearLogprobsFunction(torch.autograd.Function):
    """(hidden [N, H], weight [V, H], bias [V] | None, labels [N]) -> (logp [N], entropy [N] | empty), fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, inv_temperature, ignore_index, with_entropy):
        logp, entropy, lse = linear_logprobs_fwd(hidden, weight, bias, labels, inv_temperature, ignore_index, with_entropy)
        ctx.save_for_backward(hidden, weight, bias, labels, lse, entropy)
        ctx.args = (inv_temperature, ignore_index, with_entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, labels, lse, entropy = ctx.saved_tensors
        inv_temperature, ignore_index, with_entropy = ctx.args
        grad_logp = torch.zeros_like(lse) if grad_logp is None else grad_logp.float()
        grad_entropy = torch.zeros_like(entropy) if grad_entropy is None else grad_entropy.float()
        grad_hidden, grad_weight, grad_bias = linear_logprobs_bwd(
            hidden, weight, bias, labels, lse, entropy, grad_logp, grad_entropy, inv_temperature, ignore_index, with_entropy
        )
        return grad_hidden, grad_weight, (grad_bias if bias is not None else None), None, None, None, None
