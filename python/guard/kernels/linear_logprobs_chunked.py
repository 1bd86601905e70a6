"""The chunked backward of the fused linear log-softmax (impl="chunked"): no atomics, deterministic, memory
bounded by one vocabulary chunk.

For each chunk of C vocabulary columns (C sized so dz fits tuning.DZ_BUDGET_BYTES; 16k columns at
N = 16384 rows in bf16):
  1. a Triton kernel recomputes the logit tiles of the rows with a label (through the device-side
     permutation of the forward: blocks of ignored rows only write zeros) and writes
     dz = (g_logp·(onehot − p) − g_ent·p·(log p + H)) / T  in hidden's dtype (bf16 on the GPU for bf16
     inputs) into a [N, C] buffer, each row at its own position;
     With a bias to train, each program also stores its column sums of the fp32 dz ([row blocks, C]);
  2. cuBLAS: grad_weight[chunk] = dzᵀ·hidden (skipped when the weight needs no gradient; a chunk's rows of
     grad_weight are complete after one GEMM, rounded once), grad_bias[chunk] = the sum of those column
     sums, and grad_hidden += dz·weight[chunk] (accumulated in fp32 across chunks for 16-bit inputs).
The GEMMs run over all N rows (their size must be known on the host, and the number of rows with a label
is only known on the device); the ignored rows' dz is zero and their hidden states are zeroed for the
weight GEMM (one masked copy of hidden per backward: ignored rows may hold anything, even the NaN some
attention kernels leave at fully padded positions), so they add nothing. An fp32 head with bf16
hidden states is cast to bf16 one chunk at a time (a [C, H] copy, never the whole head).

FLOPs: 2·N'·H·V (recompute, N' = rows with a label) + 2·N·H·V per GEMM. Extra memory: dz [N, C], an fp32
[N, H] accumulator (16-bit inputs with more than one chunk), the masked hidden [N, H], the GEMM outputs of
one chunk.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from guard.kernels.linear_tiles import _compacted_rows, _dz_tile, _grouped_tile, _round_to
from guard.kernels.tuning import chunked_backward_blocks, dot_flags


@triton.jit
def _linear_logprobs_dz_kernel(
    hidden_ptr, weight_ptr, bias_ptr, labels_ptr, order_ptr, count_ptr, lse_ptr, entropy_ptr,
    grad_logp_ptr, grad_ent_ptr, dz_ptr, bias_part_ptr,
    N, H, stride_hn, stride_hh, stride_wv, stride_wh, stride_dz, stride_part, inv_temperature, v_start, v_len,
    HAS_BIAS: tl.constexpr, WITH_ENTROPY: tl.constexpr, NEED_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, GROUP_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    slot_block, col_block = _grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_N), tl.cdiv(v_len, BLOCK_V), GROUP_N)
    rows, in_range, live, any_live = _compacted_rows(order_ptr, count_ptr, slot_block, N, BLOCK_N)
    local = col_block * BLOCK_V + tl.arange(0, BLOCK_V)  # column within the chunk
    col_mask = local < v_len
    cols = v_start + local
    dz = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    if any_live:  # a block of ignored rows skips the recompute and writes zeros
        dz = _dz_tile(hidden_ptr, weight_ptr, bias_ptr, labels_ptr, lse_ptr, entropy_ptr, grad_logp_ptr, grad_ent_ptr,
                      rows, cols, live, col_mask, H, stride_hn, stride_hh, stride_wv, stride_wh, inv_temperature,
                      HAS_BIAS, WITH_ENTROPY, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION, UPCAST_DOT)
    tl.store(dz_ptr + rows[:, None] * stride_dz + local[None, :], _round_to(dz, dz_ptr.dtype.element_ty, UPCAST_DOT),
             mask=in_range[:, None] & col_mask[None, :])
    if NEED_BIAS:  # the block's column sums of the fp32 dz, before any rounding; the host adds the blocks
        tl.store(bias_part_ptr + slot_block * stride_part + local, tl.sum(dz, axis=0), mask=col_mask)


@torch.library.custom_op("guard::linear_logprobs_bwd_chunked", mutates_args=())
def linear_logprobs_bwd_chunked(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
    order: torch.Tensor, count: torch.Tensor, lse: torch.Tensor, entropy: torch.Tensor,
    grad_logp: torch.Tensor, grad_entropy: torch.Tensor, inv_temperature: float, ignore_index: int, with_entropy: bool,
    need_hidden: bool, need_weight: bool, need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_hidden, grad_weight, grad_bias) in the inputs' dtypes; each is empty unless needed (and
    grad_bias unless there is a bias). `labels` must be contiguous (the forward made it so)."""
    n_rows, hidden_size = hidden.shape
    vocab = weight.shape[0]
    dtype = hidden.dtype
    need_bias = need_bias and bias is not None
    grad_weight = torch.empty(weight.shape if need_weight else 0, dtype=weight.dtype, device=weight.device)
    grad_bias = torch.empty(vocab if need_bias else 0, dtype=torch.float32, device=weight.device)
    if n_rows == 0:
        grad_weight.zero_()
        grad_bias.zero_()
        grad_hidden = hidden.new_zeros(hidden.shape if need_hidden else 0)
        return grad_hidden, grad_weight, grad_bias.to(bias.dtype) if need_bias else grad_bias
    blocks = chunked_backward_blocks(n_rows, vocab, hidden_size, dtype, hidden.device)
    dz_buffer = torch.empty(n_rows, blocks.chunk_v, dtype=dtype, device=hidden.device)
    row_blocks = triton.cdiv(n_rows, blocks.block_n)
    bias_parts = torch.empty(row_blocks if need_bias else 0, blocks.chunk_v, dtype=torch.float32, device=hidden.device)
    if need_weight:  # the GEMM reads every row: zero the ignored ones, which may hold anything (even NaN)
        hidden_rows = hidden.masked_fill((labels == ignore_index)[:, None], 0)
    chunks = triton.cdiv(vocab, blocks.chunk_v)
    accumulator = None
    for v0 in range(0, vocab, blocks.chunk_v):
        v_len = min(blocks.chunk_v, vocab - v0)
        dz = dz_buffer[:, :v_len]
        grid = (row_blocks * triton.cdiv(v_len, blocks.block_v),)
        _linear_logprobs_dz_kernel[grid](
            hidden, weight, bias if bias is not None else hidden, labels, order, count, lse,
            entropy if with_entropy else lse, grad_logp.contiguous(), grad_entropy.contiguous() if with_entropy else lse,
            dz, bias_parts if need_bias else lse,
            n_rows, hidden_size, hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
            dz.stride(0), blocks.chunk_v, inv_temperature, v0, v_len,
            HAS_BIAS=bias is not None, WITH_ENTROPY=with_entropy, NEED_BIAS=need_bias,
            BLOCK_N=blocks.block_n, BLOCK_V=blocks.block_v, BLOCK_H=blocks.block_h, GROUP_N=blocks.group_n,
            **dot_flags(dtype), num_warps=blocks.num_warps, num_stages=blocks.num_stages,
        )  # fmt: skip
        if need_weight:
            if weight.dtype == dtype:
                torch.mm(dz.T, hidden_rows, out=grad_weight[v0 : v0 + v_len])
            else:
                grad_weight[v0 : v0 + v_len] = torch.mm(dz.T, hidden_rows)
        if need_bias:
            torch.sum(bias_parts[:, :v_len], dim=0, out=grad_bias[v0 : v0 + v_len])
        if need_hidden:
            w_chunk = weight[v0 : v0 + v_len].to(dtype)  # a no-op unless the head has another dtype
            if accumulator is None:  # 16-bit partial products are summed in fp32 across chunks
                accumulator = torch.mm(dz, w_chunk)
                if chunks > 1 and dtype != torch.float32:
                    accumulator = accumulator.float()
            elif dtype == torch.float32:
                accumulator.addmm_(dz, w_chunk)
            else:
                accumulator += torch.mm(dz, w_chunk)
    grad_hidden = accumulator.to(dtype) if need_hidden else hidden.new_empty(0)
    return grad_hidden, grad_weight, grad_bias.to(bias.dtype) if need_bias else grad_bias


@linear_logprobs_bwd_chunked.register_fake
def _(hidden, weight, bias, labels, order, count, lse, entropy, grad_logp, grad_entropy, inv_temperature,
      ignore_index, with_entropy, need_hidden, need_weight, need_bias):  # fmt: skip
    need_bias = need_bias and bias is not None
    return (hidden.new_empty(hidden.shape if need_hidden else 0), weight.new_empty(weight.shape if need_weight else 0),
            weight.new_empty(weight.shape[0] if need_bias else 0, dtype=bias.dtype if need_bias else torch.float32))
