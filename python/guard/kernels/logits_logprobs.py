"""Log-softmax at the label (and optionally the entropy) from logits a caller already has: read once, write once.

Forward streams each row's logits in BLOCK_V tiles through an online logsumexp (running max m, s = Σ e^{z−m},
t = Σ e^{z−m}·(z − m) for the entropy) and picks the label's logit: one read of [N, V], outputs [N]. A label
outside [0, V) that is not ignore_index gives NaN for its row (guard.ops checks labels with check=True).
Backward streams the logits again and writes grad_logits = (g_logp·(onehot − p) − g_ent·p·(log p + H)) / T
in the logits' dtype: one read and one write of [N, V]. One launch each way (plus a zero-size guard).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from guard.kernels.softmax_tiles import _finish_row, _logprob_entropy_grad, _online_logsumexp_fold
from guard.kernels.tuning import logits_logprobs_blocks


@triton.jit
def _logits_logprobs_fwd_kernel(
    logits_ptr, labels_ptr, logp_ptr, entropy_ptr, lse_ptr,
    N, V, stride_n, inv_temperature, ignore_index,
    WITH_ENTROPY: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    labels = tl.load(labels_ptr + rows, mask=row_mask, other=ignore_index)
    run_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    run_ent = tl.zeros((BLOCK_N,), dtype=tl.float32)
    label_logit = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < V
        z = tl.load(logits_ptr + rows.to(tl.int64)[:, None] * stride_n + cols[None, :], mask=row_mask[:, None] & col_mask[None, :], other=0.0)
        run_max, run_sum, run_ent, label_logit = _online_logsumexp_fold(
            run_max, run_sum, run_ent, label_logit, z.to(tl.float32) * inv_temperature, cols, col_mask, labels, WITH_ENTROPY)
    logp, entropy, lse = _finish_row(run_max, run_sum, run_ent, label_logit, labels,
                                     row_mask & (labels != ignore_index), V)
    tl.store(lse_ptr + rows, lse, mask=row_mask)
    tl.store(logp_ptr + rows, logp, mask=row_mask)
    if WITH_ENTROPY:
        tl.store(entropy_ptr + rows, entropy, mask=row_mask)


@triton.jit
def _logits_logprobs_bwd_kernel(
    logits_ptr, labels_ptr, lse_ptr, entropy_ptr, grad_logp_ptr, grad_ent_ptr, grad_logits_ptr,
    N, V, stride_n, inv_temperature, ignore_index,
    WITH_ENTROPY: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_range = rows < N
    labels = tl.load(labels_ptr + rows, mask=in_range, other=ignore_index)
    valid = in_range & (labels != ignore_index)
    lse = tl.load(lse_ptr + rows, mask=in_range, other=0.0)
    g_logp = tl.load(grad_logp_ptr + rows, mask=valid, other=0.0)
    g_ent = g_logp  # placeholders when there is no entropy
    ent = g_logp
    if WITH_ENTROPY:
        g_ent = tl.load(grad_ent_ptr + rows, mask=valid, other=0.0)
        ent = tl.load(entropy_ptr + rows, mask=valid, other=0.0)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        mask = in_range[:, None] & (cols < V)[None, :]
        offs = rows.to(tl.int64)[:, None] * stride_n + cols[None, :]
        z = tl.load(logits_ptr + offs, mask=mask, other=0.0).to(tl.float32) * inv_temperature
        dz = _logprob_entropy_grad(z, lse, cols, labels, g_logp, g_ent, ent, WITH_ENTROPY)
        dz = tl.where(valid[:, None], dz * inv_temperature, 0.0)
        tl.store(grad_logits_ptr + offs, dz.to(grad_logits_ptr.dtype.element_ty), mask=mask)


@torch.library.custom_op("guard::logits_logprobs_fwd", mutates_args=())
def logits_logprobs_fwd(
    logits: torch.Tensor, labels: torch.Tensor, inv_temperature: float, ignore_index: int, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward kernel: (logp [N], entropy [N] or empty, lse [N]), fp32; ignored rows give 0."""
    logits, labels = logits.contiguous(), labels.contiguous()
    n_rows, vocab = logits.shape
    f32 = dict(device=logits.device, dtype=torch.float32)
    logp, lse = torch.empty(n_rows, **f32), torch.empty(n_rows, **f32)
    entropy = torch.empty(n_rows if with_entropy else 0, **f32)
    if n_rows > 0:
        blocks = logits_logprobs_blocks(n_rows, vocab, logits.device)
        _logits_logprobs_fwd_kernel[(triton.cdiv(n_rows, blocks.block_n),)](
            logits, labels, logp, entropy if with_entropy else logp, lse,
            n_rows, vocab, logits.stride(0), inv_temperature, ignore_index,
            WITH_ENTROPY=with_entropy, BLOCK_N=blocks.block_n, BLOCK_V=blocks.block_v, num_warps=blocks.num_warps,
        )
    return logp, entropy, lse


@logits_logprobs_fwd.register_fake
def _(logits, labels, inv_temperature, ignore_index, with_entropy):
    n_rows = logits.shape[0]
    return (logits.new_empty(n_rows, dtype=torch.float32), logits.new_empty(n_rows if with_entropy else 0, dtype=torch.float32),
            logits.new_empty(n_rows, dtype=torch.float32))


@torch.library.custom_op("guard::logits_logprobs_bwd", mutates_args=())
def logits_logprobs_bwd(
    logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, entropy: torch.Tensor, grad_logp: torch.Tensor,
    grad_entropy: torch.Tensor, inv_temperature: float, ignore_index: int, with_entropy: bool,
) -> torch.Tensor:
    """Launch the backward kernel: grad_logits [N, V] in the logits' dtype."""
    logits, labels = logits.contiguous(), labels.contiguous()
    n_rows, vocab = logits.shape
    grad_logits = torch.empty_like(logits)
    if n_rows > 0:
        blocks = logits_logprobs_blocks(n_rows, vocab, logits.device)
        _logits_logprobs_bwd_kernel[(triton.cdiv(n_rows, blocks.block_n),)](
            logits, labels, lse, entropy if with_entropy else lse, grad_logp.contiguous(),
            grad_entropy.contiguous() if with_entropy else lse, grad_logits,
            n_rows, vocab, logits.stride(0), inv_temperature, ignore_index,
            WITH_ENTROPY=with_entropy, BLOCK_N=blocks.block_n, BLOCK_V=blocks.block_v, num_warps=blocks.num_warps,
        )
    return grad_logits


@logits_logprobs_bwd.register_fake
def _(logits, labels, lse, entropy, grad_logp, grad_entropy, inv_temperature, ignore_index, with_entropy):
    return torch.empty_like(logits)


class LogitsLogprobsFunction(torch.autograd.Function):
    """(logits [N, V], labels [N]) -> (logp [N], entropy [N] | empty), fp32."""

    @staticmethod
    def forward(ctx, logits, labels, inv_temperature, ignore_index, with_entropy):
        logp, entropy, lse = logits_logprobs_fwd(logits, labels, inv_temperature, ignore_index, with_entropy)
        ctx.save_for_backward(logits, labels, lse, entropy)
        ctx.args = (inv_temperature, ignore_index, with_entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        logits, labels, lse, entropy = ctx.saved_tensors
        inv_temperature, ignore_index, with_entropy = ctx.args
        grad_logp = torch.zeros_like(lse) if grad_logp is None else grad_logp.float()
        grad_entropy = torch.zeros_like(entropy) if grad_entropy is None else grad_entropy.float()
        grad_logits = logits_logprobs_bwd(logits, labels, lse, entropy, grad_logp, grad_entropy, inv_temperature, ignore_index, with_entropy)
        return grad_logits, None, None, None, None
