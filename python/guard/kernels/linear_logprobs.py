"""Fused linear log-softmax at the label: log p(label | hidden) with p = softmax((hidden @ weight.T + bias) / T),
and optionally the entropy of p, without ever holding a [rows x vocab] tensor. The forward is shared by
the two backward designs, chosen per call with `impl`:

  "chunked" (linear_logprobs_chunked) per vocabulary chunk, a Triton kernel recomputes the logits and
            writes dz for the chunk, then cuBLAS forms grad_weight[chunk] = dzᵀ·hidden and
            grad_hidden += dz·weight[chunk]. No atomics, deterministic, memory bounded by the chunk.
  "tiled"   (linear_logprobs_tiled) one kernel over (row block × vocabulary tile) recomputes a logit tile
            and adds its share of every gradient with fp32 atomics.

Forward: the rows whose label is not ignore_index are put first by a device-side permutation (their number
stays on the device: no host sync), so blocks of prompt and padding rows do no work. Each program takes
BLOCK_N of those rows and one range of the vocabulary ("split"), builds logit tiles [BLOCK_N, BLOCK_V] with
tl.dot over hidden chunks (fp32 accumulation) and folds them into an online logsumexp: the running max m,
s = Σ e^{z−m}, t = Σ e^{z−m}(z − m) and the label's logit (softmax_tiles). A merge kernel combines the
splits of each row into lse, log p = z_label − lse and entropy = log s − t/s, written at the row's own
position (0 for ignored rows). Only lse [N] is kept for the backward (with the entropy, which is an output).
The kernels never read an ignored row, so it may hold anything (NaN at a fully padded position included).

Inputs: hidden [N, H] and weight [V, H] in fp32 / bf16 / fp16, each in its own dtype and with any strides
(products in hidden's dtype, see linear_tiles); bias [V] | None; labels [N] int. Addresses are int64, so
N·H and V·H may exceed 2^31. A label outside [0, V) that is not ignore_index gives NaN (log p, entropy and
gradients of that row): the ops check labels on request (`check=True`), which costs a host sync.

Launches: forward 1 sort + 1 sum (the permutation) + 1 matmul kernel + 1 merge kernel. The launchers are
torch.library custom ops, so torch.compile treats them as opaque calls.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from guard.kernels.linear_logprobs_chunked import linear_logprobs_bwd_chunked
from guard.kernels.linear_logprobs_tiled import linear_logprobs_bwd_tiled
from guard.kernels.linear_tiles import _compacted_rows, _logit_tile
from guard.kernels.softmax_tiles import _finish_row, _online_logsumexp_fold
from guard.kernels.tuning import dot_flags, linear_logprobs_blocks, merge_block

#: The backward designs, by the name `impl` takes.
IMPLS = ("chunked", "tiled")
_BACKWARDS = {"chunked": linear_logprobs_bwd_chunked, "tiled": linear_logprobs_bwd_tiled}
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _linear_logprobs_fwd_kernel(
    hidden_ptr, weight_ptr, bias_ptr, labels_ptr, order_ptr, count_ptr,
    part_max_ptr, part_sum_ptr, part_ent_ptr, part_label_ptr,
    N, V, H, stride_hn, stride_hh, stride_wv, stride_wh, inv_temperature, v_per_split,
    HAS_BIAS: tl.constexpr, WITH_ENTROPY: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    slot_block = tl.program_id(0)
    split = tl.program_id(1)
    rows, _in_range, live, any_live = _compacted_rows(order_ptr, count_ptr, slot_block, N, BLOCK_N)
    if any_live:  # a block of ignored rows does nothing; the merge never reads its partials
        labels = tl.load(labels_ptr + rows, mask=live, other=-1)
        run_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
        run_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
        run_ent = tl.zeros((BLOCK_N,), dtype=tl.float32)
        label_logit = tl.zeros((BLOCK_N,), dtype=tl.float32)
        v_start = split * v_per_split
        v_end = tl.minimum(v_start + v_per_split, V)
        for v0 in range(v_start, v_end, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            col_mask = cols < v_end
            z = _logit_tile(hidden_ptr, weight_ptr, bias_ptr, rows, cols, live, col_mask, H,
                            stride_hn, stride_hh, stride_wv, stride_wh, inv_temperature,
                            HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION, UPCAST_DOT)
            run_max, run_sum, run_ent, label_logit = _online_logsumexp_fold(
                run_max, run_sum, run_ent, label_logit, z, cols, col_mask, labels, WITH_ENTROPY)
        offs = split * N + slot_block * BLOCK_N + tl.arange(0, BLOCK_N)  # partials by slot, not by row
        tl.store(part_max_ptr + offs, run_max, mask=live)
        tl.store(part_sum_ptr + offs, run_sum, mask=live)
        tl.store(part_label_ptr + offs, label_logit, mask=live)
        if WITH_ENTROPY:
            tl.store(part_ent_ptr + offs, run_ent, mask=live)


@triton.jit
def _linear_logprobs_merge_kernel(
    labels_ptr, order_ptr, count_ptr, part_max_ptr, part_sum_ptr, part_ent_ptr, part_label_ptr,
    logp_ptr, entropy_ptr, lse_ptr, N, V, splits,
    WITH_ENTROPY: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Per slot: merge the splits' (m_k, s_k, t_k, label_k) with M = max_k m_k, w_k = e^{m_k − M}:
    s = Σ w_k s_k, t = Σ w_k (t_k + s_k (m_k − M)), label = Σ label_k; write the row's outputs at its own
    position (zeros for the ignored rows, which sit at slots ≥ count)."""
    slot_block = tl.program_id(0)
    rows, in_range, live, _any = _compacted_rows(order_ptr, count_ptr, slot_block, N, BLOCK)
    slots = slot_block * BLOCK + tl.arange(0, BLOCK)
    labels = tl.load(labels_ptr + rows, mask=live, other=0)
    row_max = tl.full((BLOCK,), float("-inf"), dtype=tl.float32)
    for k in range(0, splits):
        row_max = tl.maximum(row_max, tl.load(part_max_ptr + k * N + slots, mask=live, other=float("-inf")))
    row_max = tl.where(live, row_max, 0.0)
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    ent = tl.zeros((BLOCK,), dtype=tl.float32)
    label_logit = tl.zeros((BLOCK,), dtype=tl.float32)
    for k in range(0, splits):
        m_k = tl.load(part_max_ptr + k * N + slots, mask=live, other=0.0)
        s_k = tl.load(part_sum_ptr + k * N + slots, mask=live, other=0.0)
        w_k = tl.exp(m_k - row_max)
        total += w_k * s_k
        if WITH_ENTROPY:
            t_k = tl.load(part_ent_ptr + k * N + slots, mask=live, other=0.0)
            ent += w_k * (t_k + s_k * (m_k - row_max))
        label_logit += tl.load(part_label_ptr + k * N + slots, mask=live, other=0.0)
    logp, entropy, lse = _finish_row(row_max, total, ent, label_logit, labels, live, V)
    tl.store(logp_ptr + rows, logp, mask=in_range)
    tl.store(lse_ptr + rows, lse, mask=in_range)
    if WITH_ENTROPY:
        tl.store(entropy_ptr + rows, entropy, mask=in_range)


def check_inputs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor) -> None:
    """Shape and dtype checks that need no device synchronisation (the launchers of both designs use them)."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden [N, H] and weight [V, H] must share H, got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    for name, t in (("hidden", hidden), ("weight", weight), ("bias", bias)):
        if t is not None and t.dtype not in _DTYPES:
            raise ValueError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")
    if labels.shape != hidden.shape[:1] or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor [N] = [{hidden.shape[0]}], got {labels.dtype} {tuple(labels.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")


def valid_rows_first(labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order [N] int64, count [1] int32): a stable permutation of the rows with the rows whose label is not
    ignore_index first, and their number, both on the device (no host sync)."""
    ignored = labels == ignore_index
    order = torch.sort(ignored.to(torch.uint8), stable=True).indices
    return order, (~ignored).sum(dtype=torch.int32).reshape(1)


@torch.library.custom_op("guard::linear_logprobs_fwd", mutates_args=())
def linear_logprobs_fwd(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
    inv_temperature: float, ignore_index: int, with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward: (logp [N], entropy [N] or empty, lse [N], order [N], count [1]); the floats are
    fp32 and ignored rows give 0. order and count are the permutation the backward reuses."""
    check_inputs(hidden, weight, bias, labels)
    labels, bias = labels.contiguous(), None if bias is None else bias.contiguous()  # [N], [V]: cheap
    n_rows, hidden_size = hidden.shape
    vocab = weight.shape[0]
    f32 = dict(device=hidden.device, dtype=torch.float32)
    order, count = valid_rows_first(labels, ignore_index)
    logp, lse = torch.empty(n_rows, **f32), torch.empty(n_rows, **f32)
    entropy = torch.empty(n_rows if with_entropy else 0, **f32)
    if n_rows == 0:
        return logp, entropy, lse, order, count
    blocks = linear_logprobs_blocks(n_rows, vocab, hidden_size, hidden.dtype, hidden.device)
    parts = [torch.empty(blocks.splits, n_rows, **f32) for _ in range(3)]
    part_ent = torch.empty(blocks.splits if with_entropy else 1, n_rows, **f32)
    part_max, part_sum, part_label = parts
    _linear_logprobs_fwd_kernel[(triton.cdiv(n_rows, blocks.block_n), blocks.splits)](
        hidden, weight, bias if bias is not None else hidden, labels, order, count,
        part_max, part_sum, part_ent, part_label,
        n_rows, vocab, hidden_size, hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        inv_temperature, blocks.v_per_split,
        HAS_BIAS=bias is not None, WITH_ENTROPY=with_entropy,
        BLOCK_N=blocks.block_n, BLOCK_V=blocks.block_v, BLOCK_H=blocks.block_h,
        **dot_flags(hidden.dtype), num_warps=blocks.num_warps, num_stages=blocks.num_stages,
    )  # fmt: skip
    block = merge_block(hidden.device)
    _linear_logprobs_merge_kernel[(triton.cdiv(n_rows, block),)](
        labels, order, count, part_max, part_sum, part_ent, part_label,
        logp, entropy if with_entropy else logp, lse, n_rows, vocab, blocks.splits,
        WITH_ENTROPY=with_entropy, BLOCK=block,
    )  # fmt: skip
    return logp, entropy, lse, order, count


@linear_logprobs_fwd.register_fake
def _(hidden, weight, bias, labels, inv_temperature, ignore_index, with_entropy):
    n_rows = hidden.shape[0]
    f32 = dict(dtype=torch.float32)
    return (hidden.new_empty(n_rows, **f32), hidden.new_empty(n_rows if with_entropy else 0, **f32),
            hidden.new_empty(n_rows, **f32), labels.new_empty(n_rows, dtype=torch.int64),
            labels.new_empty(1, dtype=torch.int32))


class LinearLogprobsFunction(torch.autograd.Function):
    """``apply(hidden [N, H], weight [V, H], bias [V] | None, labels [N], inv_temperature, ignore_index,
    with_entropy, impl) -> (logp [N], entropy [N] | empty)``, fp32; impl is "chunked" or "tiled" (the
    backward design). Gradients go only to the inputs that need them (needs_input_grad)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, inv_temperature, ignore_index, with_entropy, impl):
        if impl not in _BACKWARDS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        logp, entropy, lse, order, count = linear_logprobs_fwd(
            hidden, weight, bias, labels, inv_temperature, ignore_index, with_entropy)
        ctx.save_for_backward(hidden, weight, bias, labels, lse, entropy, order, count)
        ctx.args = (inv_temperature, ignore_index, with_entropy, impl)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        if not (need_hidden or need_weight or need_bias):
            return (None,) * 8
        hidden, weight, bias, labels, lse, entropy, order, count = ctx.saved_tensors
        inv_temperature, ignore_index, with_entropy, impl = ctx.args
        grad_logp = torch.zeros_like(lse) if grad_logp is None else grad_logp.float()
        grad_entropy = torch.zeros_like(entropy) if grad_entropy is None else grad_entropy.float()
        grad_hidden, grad_weight, grad_bias = _BACKWARDS[impl](
            hidden, weight, bias, labels, order, count, lse, entropy, grad_logp, grad_entropy,
            inv_temperature, ignore_index, with_entropy, need_hidden, need_weight, need_bias,
        )  # fmt: skip
        return (grad_hidden if need_hidden else None, grad_weight if need_weight else None,
                grad_bias if need_bias else None, None, None, None, None, None)
