"""Tile-level pieces the three linear log-prob kernels share (the forward in linear_logprobs, the tiled
backward in linear_logprobs_tiled, the dz kernel in linear_logprobs_chunked): which rows a program takes,
one logit tile built from hidden rows and weight columns, and the backward's dz tile.

Rows are read through a permutation `order` that puts the rows whose label is not ignore_index first, and
their number `count` lives on the device (no host sync): a program whose rows all lie at or beyond
`count` does no matrix work, so prompt and padding tokens cost nothing in these kernels.

Products are taken in hidden's dtype: a weight tile of another dtype is cast in registers (an fp32 LM
head with bf16 hidden states gives bf16 products, as `weight.to(hidden.dtype)` would, without copying
the head), and accumulated in fp32. Any strides work, so a transposed view of the head is read in place.
"""

import triton
import triton.language as tl

from guard.kernels.softmax_tiles import _logprob_entropy_grad


@triton.jit
def _compacted_rows(order_ptr, count_ptr, slot_block, N, BLOCK_N: tl.constexpr):
    """For the slot block `slot_block` of the permutation: (rows [BLOCK_N] int64 original row indices,
    in_range [BLOCK_N] (slot < N), live [BLOCK_N] (slot < count: a row with a label), any_live)."""
    slots = slot_block * BLOCK_N + tl.arange(0, BLOCK_N)
    count = tl.load(count_ptr)
    in_range = slots < N
    live = in_range & (slots < count)
    rows = tl.load(order_ptr + slots, mask=in_range, other=0).to(tl.int64)
    return rows, in_range, live, slot_block * BLOCK_N < count


@triton.jit
def _logit_tile(
    hidden_ptr, weight_ptr, bias_ptr, rows, cols, row_mask, col_mask, H,
    stride_hn, stride_hh, stride_wv, stride_wh, inv_temperature,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """z = (hidden[rows] @ weight[cols].T + bias[cols]) / T as an fp32 [BLOCK_N, BLOCK_V] tile; rows are
    int64 row indices, masked rows and columns read zeros."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    cols64 = cols.to(tl.int64)
    for h0 in range(0, H, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        h_mask = hs < H
        x = tl.load(hidden_ptr + rows[:, None] * stride_hn + hs[None, :] * stride_hh,
                    mask=row_mask[:, None] & h_mask[None, :], other=0.0)
        w = tl.load(weight_ptr + cols64[:, None] * stride_wv + hs[None, :] * stride_wh,
                    mask=col_mask[:, None] & h_mask[None, :], other=0.0)
        w = _round_to(w, x.dtype, UPCAST_DOT)  # a head in another dtype is cast tile by tile, never copied whole
        if UPCAST_DOT:
            x, w = x.to(tl.float32), w.to(tl.float32)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return acc * inv_temperature


@triton.jit
def _dz_tile(
    hidden_ptr, weight_ptr, bias_ptr, labels_ptr, lse_ptr, entropy_ptr, grad_logp_ptr, grad_ent_ptr,
    rows, cols, live, col_mask, H, stride_hn, stride_hh, stride_wv, stride_wh, inv_temperature,
    HAS_BIAS: tl.constexpr, WITH_ENTROPY: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """The gradient with respect to the logits of Σ g_logp·log p(label) + g_ent·H for one tile, in fp32:
    the logits recomputed, then (g_logp·(onehot − p) − g_ent·p·(log p + H)) / T, 0 outside live rows and
    col_mask. Both backward designs start from it."""
    z = _logit_tile(hidden_ptr, weight_ptr, bias_ptr, rows, cols, live, col_mask, H,
                    stride_hn, stride_hh, stride_wv, stride_wh, inv_temperature,
                    HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION, UPCAST_DOT)
    labels = tl.load(labels_ptr + rows, mask=live, other=-1)
    lse = tl.load(lse_ptr + rows, mask=live, other=0.0)
    g_logp = tl.load(grad_logp_ptr + rows, mask=live, other=0.0)
    g_ent = g_logp  # placeholders when there is no entropy
    ent = g_logp
    if WITH_ENTROPY:
        g_ent = tl.load(grad_ent_ptr + rows, mask=live, other=0.0)
        ent = tl.load(entropy_ptr + rows, mask=live, other=0.0)
    dz = _logprob_entropy_grad(z, lse, cols, labels, g_logp, g_ent, ent, WITH_ENTROPY)
    return tl.where(live[:, None] & col_mask[None, :], dz * inv_temperature, 0.0)


@triton.jit
def _round_to(x, dtype: tl.constexpr, INTERPRETED: tl.constexpr):
    """x in `dtype`, rounded to nearest even as the GPU's conversion does. Triton's CPU interpreter truncates
    to bfloat16 instead, so there (INTERPRETED: the UPCAST_DOT flag) the rounding is done on the fp32 bits
    first and the truncation is then exact."""
    if INTERPRETED and dtype == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _grouped_tile(pid, n_row_blocks, n_col_blocks, GROUP_N: tl.constexpr):
    """(row block, column block) of program `pid` of a 1-D grid, in groups of GROUP_N row blocks walked
    column by column, so the programs in flight at once share weight tiles and hidden rows in L2 (the
    ordering of Triton's matmul tutorial)."""
    per_group = GROUP_N * n_col_blocks
    first_row_block = (pid // per_group) * GROUP_N
    rows_in_group = tl.minimum(n_row_blocks - first_row_block, GROUP_N)
    within = pid % per_group
    return first_row_block + within % rows_in_group, within // rows_in_group
