"""guard's attention for transformers models: SDPA that keeps packed sequences apart ("guard_sdpa").

    from guard import attention
    attention.register()                     # guard.models.attention_implementation() does it when it picks it
    model = AutoModelForCausalLM.from_config(config, attn_implementation="guard_sdpa")
    inputs = attention.packed_inputs(input_ids, position_ids, cu_seqlens, max_seqlen)   # one packed row [1, N]
    hidden = model.model(**inputs, use_cache=False).last_hidden_state

A packed row holds several sequences back to back, position_ids restarting at 0 for each. Attention must stay
inside each sequence. Three ways to get that from transformers, and why guard uses the one it does:

- flash-attn's varlen kernel (attn_implementation="flash_attention_2", CUDA with flash-attn installed): given
  cu_seq_lens_q/k and max_length_q/k (the FlashAttentionKwargs packed_inputs passes) it attends within each
  span and skips the rest. guard.models picks it whenever it is usable.
- transformers' own "sdpa" with no attention_mask: its masking utils see the restarts in position_ids
  (masking_utils.find_packed_sequence_indices, in transformers 5.x) and build a block-diagonal causal mask,
  [N, N]. Correct (tests/test_packing.py checks it against this module), but SDPA then computes all N² scores
  of the row and the mask holds N² booleans: a row of 16 sequences of 512 tokens costs 16x the attention of
  the sequences alone. Measured on the tiny model, one packed row of 8 HH-RLHF-like pairs (3673 tokens),
  forward + backward on one CPU thread: 527 ms this way, 93 ms with guard_sdpa, 277 ms padded (2026-12-04).
- this module: "guard_sdpa" runs causal SDPA once per sequence of the row (the spans of cu_seqlens), so the
  attention costs Σ L_i², never more than the padded batch's, and no mask is built. Without cu_seqlens it
  is transformers' SDPA itself (padded batches, generation with a cache), with transformers' own masks; a
  packed row given by position_ids alone is split at the restarts the same way, so it never attends across.

The per-sequence loop launches one SDPA per sequence and layer: the right trade on the CPU and for the few
long sequences of a training batch; on a GPU with flash-attn the varlen kernel does it in one launch.
"""

from __future__ import annotations

import itertools

import torch

#: The attn_implementation name guard registers with transformers.
NAME = "guard_sdpa"
#: attn_implementation values whose attention honours a packed row's cu_seqlens (packed_inputs).
PACKED_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3", NAME)


def _spans(cu_seqlens: torch.Tensor | None, position_ids: torch.Tensor | None, length: int) -> list[int] | None:
    """The boundaries [0, ..., length] of the sequences of a packed row: cu_seqlens when given, else where
    position_ids restart (one row only); None when the row is one sequence."""
    if cu_seqlens is not None:
        return [int(x) for x in cu_seqlens.tolist()]
    if position_ids is None or position_ids.shape[0] != 1 or length < 2:
        return None
    row = position_ids[0, -length:]
    starts = torch.nonzero(row[1:] != row[:-1] + 1).squeeze(1) + 1
    if starts.numel() == 0:
        return None
    return [0, *starts.tolist(), length]


def guard_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: query [1, heads, N, d], key/value [1, kv_heads, N, d] of a packed
    row attend causally within each sequence; anything else goes to transformers' SDPA unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packed = attention_mask is None and query.shape[0] == 1 and query.shape[2] == key.shape[2]
    spans = _spans(kwargs.get("cu_seq_lens_q"), kwargs.get("position_ids"), query.shape[2]) if packed else None
    if spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    parts = [sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                    None, dropout=dropout, scaling=scaling, is_causal=True)[0]
             for start, end in itertools.pairwise(spans) if end > start]
    return torch.cat(parts, dim=1), None  # [1, N, heads, d], as transformers' SDPA returns it


def guard_sdpa_mask(*args, attention_mask: torch.Tensor | None = None, **kwargs):
    """The mask interface of "guard_sdpa": no mask for a row without padding (causality and the packed spans
    are the attention's business), transformers' SDPA mask otherwise (padded batches, generation)."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> None:
    """Make "guard_sdpa" an attn_implementation transformers knows (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, guard_sdpa_forward)
    AttentionMaskInterface.register(NAME, guard_sdpa_mask)


def packed_inputs(input_ids: torch.Tensor, position_ids: torch.Tensor, cu_seqlens: torch.Tensor,
                  max_seqlen: int) -> dict:
    """The keyword arguments of a backbone forward over one packed row [1, N]: position_ids restarting per
    sequence (rotary positions as in a padded row), no attention_mask, and the spans as flash-attn's varlen
    kwargs, which both "flash_attention_2" and "guard_sdpa" read."""
    cu = cu_seqlens.to(device=input_ids.device, dtype=torch.int32)
    return {"input_ids": input_ids, "position_ids": position_ids, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
            "max_length_q": int(max_seqlen), "max_length_k": int(max_seqlen)}
