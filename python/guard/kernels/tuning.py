"""Block sizes, warps and pipeline stages for every guard kernel, chosen per shape and device in one place.

The CPU interpreter (TRITON_INTERPRET=1) gets small blocks so tests stay fast and still cross tile
boundaries; CUDA gets tiles sized for Hopper's tensor cores. Every block is a power of two and at least
16, the smallest `tl.dot` operand the compiler accepts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton

#: Tests force the forward's vocabulary splits (None: chosen per shape). With a forced count the vocabulary
#: tiles shrink to the 16-column minimum so even a 64-word vocabulary can be cut into several splits.
FORCED_SPLITS: int | None = None
#: Tests force the chunked backward's vocabulary chunk (None: sized from DZ_BUDGET_BYTES).
FORCED_CHUNK_V: int | None = None
#: The chunked backward's dz buffer [rows, chunk] stays within this many bytes on CUDA.
DZ_BUDGET_BYTES = 512 << 20


@dataclass(frozen=True)
class LinearLogprobsBlocks:
    """Tiling of the fused linear log-softmax forward (and the tiled backward): rows x vocab tiles,
    reduced over hidden in chunks."""

    block_n: int  # rows of hidden per program
    block_v: int  # vocabulary columns per tile
    block_h: int  # hidden chunk per tl.dot
    splits: int  # forward: vocabulary ranges reduced in parallel, then merged
    v_per_split: int  # columns per split, a multiple of block_v
    num_warps: int
    num_stages: int


def linear_logprobs_blocks(n_rows: int, vocab: int, hidden: int, dtype: torch.dtype, device: torch.device) -> LinearLogprobsBlocks:
    """`dtype` is the dtype of the products (hidden's)."""
    if device.type != "cuda":  # the interpreter: small tiles, two vocabulary splits to exercise the merge
        block_n, block_v, block_h, warps, stages, target_programs = 16, 64, 32, 4, 1, 2
    elif dtype == torch.float32:  # ieee fp32 dots: smaller tiles; 8 warps keep the tiled backward out of spills
        block_n, block_v, block_h, warps, stages, target_programs = 64, 64, 32, 8, 2, 4 * _sm_count(device)
    else:
        block_n, block_v, block_h, warps, stages, target_programs = 128, 128, 64, 8, 3, 2 * _sm_count(device)
    block_n = max(16, min(block_n, triton.next_power_of_2(max(n_rows, 1))))
    block_h = max(16, min(block_h, triton.next_power_of_2(hidden)))
    row_blocks = triton.cdiv(max(n_rows, 1), block_n)
    if FORCED_SPLITS is not None:
        block_v = 16
        wanted = FORCED_SPLITS
    else:
        wanted = triton.cdiv(target_programs, row_blocks)
    v_tiles = triton.cdiv(vocab, block_v)
    splits = max(1, min(v_tiles, wanted))
    v_per_split = triton.cdiv(v_tiles, splits) * block_v
    splits = triton.cdiv(vocab, v_per_split)  # no empty split
    return LinearLogprobsBlocks(block_n, block_v, block_h, splits, v_per_split, warps, stages)


@dataclass(frozen=True)
class ChunkedBackwardBlocks:
    """Tiling of the chunked backward: the dz kernel's tiles and the vocabulary chunk each pair of GEMMs takes."""

    block_n: int  # rows per dz tile
    block_v: int  # vocabulary columns per dz tile
    block_h: int  # hidden chunk per tl.dot of the logit recompute
    group_n: int  # row blocks per program group (programs of a group share weight tiles in L2)
    chunk_v: int  # vocabulary columns per chunk: dz is [rows, chunk_v]
    num_warps: int
    num_stages: int


def chunked_backward_blocks(n_rows: int, vocab: int, hidden: int, dtype: torch.dtype, device: torch.device) -> ChunkedBackwardBlocks:
    """`dtype` is the dtype of dz and of the GEMMs' operands (hidden's)."""
    if device.type != "cuda":  # the interpreter: several chunks of a few tiles each, even at V = 64
        block_n, block_v, block_h, group_n, warps, stages, chunk_v = 16, 32, 16, 2, 4, 1, 64
    elif dtype == torch.float32:
        block_n, block_v, block_h, group_n, warps, stages, chunk_v = 64, 64, 32, 8, 4, 2, None
    else:
        block_n, block_v, block_h, group_n, warps, stages, chunk_v = 128, 128, 64, 8, 8, 3, None
    block_n = max(16, min(block_n, triton.next_power_of_2(max(n_rows, 1))))
    block_h = max(16, min(block_h, triton.next_power_of_2(hidden)))
    if FORCED_CHUNK_V is not None:
        chunk_v = FORCED_CHUNK_V
    elif chunk_v is None:  # as many columns as the budget allows, whole tiles, at least one tile
        per_column = max(n_rows, 1) * dtype.itemsize
        chunk_v = max(block_v, DZ_BUDGET_BYTES // per_column // block_v * block_v)
    chunk_v = min(chunk_v, vocab) if vocab > 0 else 1
    block_v = max(16, min(block_v, triton.next_power_of_2(chunk_v)))
    return ChunkedBackwardBlocks(block_n, block_v, block_h, group_n, chunk_v, warps, stages)


def merge_block(device: torch.device) -> int:
    """Rows per program of the forward's split merge (an elementwise pass over [splits, N])."""
    return 1024 if device.type == "cuda" else 64


@dataclass(frozen=True)
class RowBlocks:
    """Tiling of kernels that stream rows of a [N, V] logits tensor."""

    block_n: int
    block_v: int
    num_warps: int


def logits_logprobs_blocks(n_rows: int, vocab: int, device: torch.device) -> RowBlocks:
    if device.type != "cuda":
        return RowBlocks(block_n=4, block_v=64, num_warps=4)
    return RowBlocks(block_n=1, block_v=min(4096, triton.next_power_of_2(vocab)), num_warps=8)


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


#: Most categories the single-program heads handle: BLOCK_B ≥ 16 rows × BLOCK_C ≤ 256 stays ≤ 4096 elements.
MAX_HEAD_CATEGORIES = 256


def head_blocks(batch: int, num_categories: int | None) -> tuple[int, int]:
    """(BLOCK_B, BLOCK_C) of the single-program heads (preference_head, bt_head), the same on every device.

    BLOCK_C ≥ C; BLOCK_B keeps a [BLOCK_B, BLOCK_C] one-hot tile at 4096 elements or fewer (it lives in
    registers), and at most 1024 rows without categories (num_categories None).
    """
    if num_categories is not None and num_categories > MAX_HEAD_CATEGORIES:
        raise ValueError(
            f"the fused heads take at most {MAX_HEAD_CATEGORIES} categories (a one-hot tile in registers), got {num_categories}"
        )
    block_c = max(2, triton.next_power_of_2(num_categories or 1))
    block_b = max(16, min(triton.next_power_of_2(batch), 4096 // block_c, 1024))
    return block_b, block_c


def dot_flags(dtype: torch.dtype) -> dict:
    """The constexprs DOT_PRECISION and UPCAST_DOT of the linear log-prob kernels for products in `dtype`.

    fp32 products are true fp32 (no tf32 rounding, as cuBLAS does by default) so they can match a float64
    reference. Triton's CPU interpreter mis-multiplies 16-bit dot operands, so there they are widened to
    fp32 first: the products of 16-bit values are exact in fp32, which is what the tensor cores compute."""
    upcast = os.environ.get("TRITON_INTERPRET") == "1" and dtype != torch.float32
    return dict(DOT_PRECISION="ieee" if dtype == torch.float32 or upcast else "tf32", UPCAST_DOT=upcast)
