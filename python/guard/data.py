"""guard's data layer, the Python face of the Rust extension `guard._rust`: tokenize, dedup, pack.

    import guard.data as gd
    tok = gd.Tokenizer.from_file("tokenizer.json")             # a Hugging Face tokenizer.json
    text = tok.decode(tok.encode("Hello"))                     # and back: tok.decode_batch(many)
    keep = gd.dedup(prompts, chosen)                          # first occurrence of each exact pair
    pairs = gd.encode_pairs(tok, prompts, chosen, rejected, max_length=1024, errors="skip")
    batches = gd.pack(pairs.lengths, max_tokens=16384)         # best-fit-decreasing, pairs kept whole
    batch = gd.padded_batch(pairs, batches[0], pad_id=0)      # input_ids [2b, L], labels, masks
    row = gd.packed_batch(pairs, batches[0])                  # one row + position_ids, cu_seqlens
    grouped = gd.group_by_length(pairs.lengths, 16384)        # or: length-grouped batches to pad

The heavy work runs in Rust with the GIL released (rust/: tokenize/, dedup.rs, pack.rs); this file
adapts arguments and builds batches with numpy.

Pairs are tokenized the way TRL's DPO trainer does it: ``prompt ids = encode(prompt,
add_special_tokens)``, ``response ids = encode(response, add_special_tokens=False)``, a sequence is
prompt ids + response ids (+ ``eos_token_id``). Truncation, in order: ``max_prompt_length`` keeps the
LAST prompt tokens; a sequence over ``max_length`` loses tokens from the end of its response (the EOS
first); a row where not one response token fits is dropped as "prompt longer than the budget".

Nothing is dropped silently. Bad rows have one of these stable reasons (:data:`REASONS`):
"not a string", "invalid UTF-8", "empty text" (texts: empty or only special tokens), "empty response"
(empty or no tokens), "prompt longer than the budget". With ``errors="raise"`` (the default) the first
bad row raises (TypeError for "not a string", ValueError otherwise) with a message
``row {i}: {field}: {reason} ({detail})``; with ``errors="skip"`` bad rows are left out, ``kept`` holds
the input indices of the rows kept and ``dropped`` maps each reason that occurred to its rows, so
``len(kept) + sum(map(len, dropped.values())) == n``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from guard import _rust

__all__ = [
    "REASONS",
    "Tokenizer",
    "EncodedTexts",
    "EncodedPairs",
    "encode_texts",
    "encode_pairs",
    "dedup",
    "pack",
    "group_by_length",
    "packed_positions",
    "padding_efficiency",
    "padded_batch",
    "packed_batch",
]

#: Why a row can be dropped: the keys of ``dropped`` and the reason in error messages.
REASONS = ("not a string", "invalid UTF-8", "empty text", "empty response", "prompt longer than the budget")

IGNORE_INDEX = -100


class Tokenizer:
    """A Hugging Face ``tokenizer.json`` loaded by the Rust ``tokenizers`` crate.

    ``encode(text, add_special_tokens)`` gives the ids of the Python ``tokenizers`` package's
    ``Tokenizer.from_file(path).encode(text, add_special_tokens).ids``, and ``decode`` /
    ``decode_batch`` the text of that package's ``decode`` / ``decode_batch``. The file's own truncation
    and padding settings are ignored: guard truncates by its stated policy and pads when it builds batches.
    """

    def __init__(self, native: _rust.Tokenizer):
        self._native = native

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a tokenizer.json file (FileNotFoundError if there is none, ValueError if it does not parse)."""
        return cls(_rust.Tokenizer.from_file(os.fspath(path)))

    @classmethod
    def from_str(cls, json: str) -> Tokenizer:
        """Load a tokenizer from the JSON text of a tokenizer.json."""
        return cls(_rust.Tokenizer.from_str(json))

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (``len(tokenizer)`` in transformers)."""
        return self._native.vocab_size(True)

    @property
    def num_special_tokens(self) -> int:
        """Special tokens the post-processor adds around one sequence (e.g. 2 for BOS ... EOS)."""
        return self._native.num_special_tokens

    def token_to_id(self, token: str) -> int | None:
        return self._native.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        return self._native.id_to_token(id)

    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        """The ids of one text, int32."""
        return self._native.encode(text, add_special_tokens)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """The text of one sequence of ids: the Python ``tokenizers`` package's
        ``Tokenizer.decode(ids, skip_special_tokens)`` on the same file.

        ``ids``: a list of ints or a 1-D integer array (numpy, or anything ``np.asarray`` takes, such as a
        CPU tensor). With ``skip_special_tokens`` the special tokens (BOS, EOS, padding, ...) are left
        out. Unlike the package, which skips an unknown id without a word, an id with no token (negative
        such as -100, or past the vocabulary) raises a ValueError naming its position and the
        vocabulary size; a non-integer raises a TypeError.
        """
        return self._native.decode(_ids_for_rust(ids, ""), bool(skip_special_tokens))

    def decode_batch(self, sequences, skip_special_tokens: bool = True) -> list[str]:
        """The text of each sequence, in order: the ``tokenizers`` package's ``decode_batch``.

        ``sequences``: lists of ints or 1-D integer arrays (lengths may differ), a 2-D integer array
        (one row per sequence), or an :class:`EncodedTexts` (e.g. ``pairs.chosen``). Decoded in parallel in
        Rust with the GIL released. Errors as :meth:`decode`, naming the row as well.
        """
        if isinstance(sequences, EncodedTexts):
            if len(sequences) == 0:
                return []
            rows = np.split(sequences.ids.astype(np.int64), sequences.offsets[1:-1])
        elif hasattr(sequences, "__array__") and np.asarray(sequences).dtype != object:
            array = _int_array(sequences, "sequences")
            if array.ndim != 2:
                raise ValueError(
                    f"decode_batch takes sequences of ids, got an array of shape {array.shape} "
                    "(2-D: one row per sequence; use decode for one sequence)"
                )
            rows = list(array)
        elif isinstance(sequences, (str, bytes)) or not isinstance(sequences, Iterable):
            raise TypeError(f"sequences must be a sequence of id sequences, got {type(sequences).__name__}")
        else:
            rows = [_ids_for_rust(row, f"row {i}, ") for i, row in enumerate(sequences)]
        return self._native.decode_batch(rows, bool(skip_special_tokens))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, num_special_tokens={self.num_special_tokens})"


def _native(tok) -> _rust.Tokenizer:
    if isinstance(tok, Tokenizer):
        return tok._native
    if isinstance(tok, _rust.Tokenizer):
        return tok
    raise TypeError(f"tok must be a guard.data.Tokenizer, got {type(tok).__name__}")


def _int_array(ids, where: str) -> np.ndarray:
    """``ids`` as an int64 array; TypeError unless its dtype is an integer one (an empty array may be any)."""
    array = np.asarray(ids)
    if array.size == 0:
        return np.zeros(array.shape, dtype=np.int64)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{where} must be integers, got dtype {array.dtype}")
    if array.dtype == np.uint64 and array.max() > np.iinfo(np.int64).max:
        # Past int64 no id can exist; say so here rather than let the cast wrap it to a negative id.
        position = np.unravel_index(int(np.argmax(array > np.iinfo(np.int64).max)), array.shape)
        raise ValueError(f"{where}: id {array[position]} at {tuple(map(int, position))} does not fit in int64")
    return array.astype(np.int64, copy=False)


def _ids_for_rust(ids, row_prefix: str):
    """One sequence for the binding: an array-like becomes a 1-D int64 array (read without a copy in Rust);
    a list or tuple goes as it is (Rust takes each item as a Python int and names the position of a bad one)."""
    if not hasattr(ids, "__array__"):
        return ids
    array = _int_array(ids, f"{row_prefix}ids")
    if array.ndim != 1:
        raise ValueError(
            f"{row_prefix}ids must be one sequence (1-D), got shape {array.shape}; decode_batch takes many"
        )
    return array


def _limit(name: str, value, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def _errors(errors: str) -> str:
    if errors not in ("raise", "skip"):
        raise ValueError(f'errors must be "raise" or "skip", got {errors!r}')
    return errors


@dataclass(frozen=True, eq=False)
class EncodedTexts:
    """Token ids of many rows, back to back.

    ``ids`` (int32) holds every row; row ``i`` is ``ids[offsets[i]:offsets[i + 1]]`` (``enc[i]``), and
    ``offsets`` (int64) has ``len(enc) + 1`` entries. Row ``i`` is input row ``kept[i]`` (int64);
    ``dropped`` maps a reason to the input rows left out for it.
    """

    ids: np.ndarray
    offsets: np.ndarray
    kept: np.ndarray
    dropped: dict[str, list[int]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for {n} rows")
        i %= n
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per row, int64 [n]."""
        return np.diff(self.offsets)


@dataclass(frozen=True, eq=False)
class EncodedPairs:
    """Preference pairs as two :class:`EncodedTexts` of ``prompt + response`` sequences.

    Row ``i`` of ``chosen`` and of ``rejected`` is input row ``kept[i]``; the first
    ``chosen_prompt_lengths[i]`` (``rejected_prompt_lengths[i]``) ids of its sequence are the prompt.
    """

    chosen: EncodedTexts
    rejected: EncodedTexts
    chosen_prompt_lengths: np.ndarray
    rejected_prompt_lengths: np.ndarray
    kept: np.ndarray
    dropped: dict[str, list[int]]

    def __len__(self) -> int:
        return len(self.kept)

    @property
    def lengths(self) -> np.ndarray:
        """int64 [n, 2]: chosen and rejected sequence lengths, what :func:`pack` takes for pairs."""
        return np.stack([self.chosen.lengths, self.rejected.lengths], axis=1)


def encode_texts(
    tok: Tokenizer,
    texts: Sequence[str],
    *,
    max_length: int | None = None,
    add_special_tokens: bool = True,
    errors: str = "raise",
) -> EncodedTexts:
    """Tokenize many texts in parallel (Rust, GIL released).

    Ids equal the Python ``tokenizers`` package's ``encode(text, add_special_tokens).ids``. With
    ``max_length``, a longer text is truncated the way that package's ``enable_truncation(max_length)``
    does it: its own tokens are cut from the end and the special tokens stay, so every row has at most
    ``max_length`` ids. Bad rows: "not a string", "invalid UTF-8", "empty text" (the empty string, or a
    text with no tokens besides special tokens); see the module docstring for ``errors``.
    """
    out = _rust.encode_texts(
        _native(tok),
        texts,
        max_length=_limit("max_length", max_length),
        add_special_tokens=bool(add_special_tokens),
        errors=_errors(errors),
    )
    return EncodedTexts(out["ids"], out["offsets"], out["kept"], out["dropped"])


def encode_pairs(
    tok: Tokenizer,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    *,
    max_length: int | None = 1024,
    max_prompt_length: int | None = None,
    add_special_tokens: bool = True,
    eos_token_id: int | None = None,
    errors: str = "raise",
) -> EncodedPairs:
    """Tokenize preference pairs into ``prompt + chosen`` and ``prompt + rejected`` sequences.

    As TRL's DPO trainer: prompt ids = ``encode(prompt, add_special_tokens)``, response ids =
    ``encode(response, add_special_tokens=False)``, sequence = prompt ids + response ids
    (+ ``eos_token_id`` when given); prompt length = number of prompt ids.

    Truncation policy: (1) with ``max_prompt_length``, a longer prompt keeps its LAST
    ``max_prompt_length`` tokens; (2) with ``max_length`` (None: no limit), a longer sequence is cut
    from the end of its response, the appended EOS going first; (3) if not even one response token
    fits, the row is bad: "prompt longer than the budget". Other bad rows: "not a string",
    "invalid UTF-8", "empty response" (an empty chosen or rejected string, or one with no tokens).
    """
    if eos_token_id is not None and (
        isinstance(eos_token_id, bool) or not isinstance(eos_token_id, (int, np.integer)) or eos_token_id < 0
    ):
        raise ValueError(f"eos_token_id must be a non-negative int or None, got {eos_token_id!r}")
    out = _rust.encode_pairs(
        _native(tok),
        prompts,
        chosen,
        rejected,
        max_length=_limit("max_length", max_length),
        max_prompt_length=_limit("max_prompt_length", max_prompt_length),
        add_special_tokens=bool(add_special_tokens),
        eos_token_id=None if eos_token_id is None else int(eos_token_id),
        errors=_errors(errors),
    )
    kept, dropped = out["kept"], out["dropped"]
    return EncodedPairs(
        chosen=EncodedTexts(out["chosen_ids"], out["chosen_offsets"], kept, dropped),
        rejected=EncodedTexts(out["rejected_ids"], out["rejected_offsets"], kept, dropped),
        chosen_prompt_lengths=out["chosen_prompt_lengths"],
        rejected_prompt_lengths=out["rejected_prompt_lengths"],
        kept=kept,
        dropped=dropped,
    )


def dedup(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """Indices of the rows to keep: the first occurrence of each exact (prompt, response) pair.

    Exact (xxh3-128 over ``prompt \\0 response``, confirmed byte for byte), stable (ascending order),
    returns an int64 numpy array. Errors name the offending row: TypeError for a non-string field,
    ValueError for text that is not valid UTF-8 or for ``prompts`` and ``responses`` of different lengths.
    """
    return _rust.dedup(prompts, responses)


def _lengths_array(lengths, pairs: bool) -> np.ndarray:
    arr = np.asarray(lengths)
    if arr.size == 0:
        return np.zeros((0, 2) if pairs else (0,), dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got dtype {arr.dtype}")
    if pairs and (arr.ndim != 2 or arr.shape[1] != 2):
        raise ValueError(
            f"pairs=True needs lengths of shape [n, 2] (chosen, rejected), got {arr.shape}; "
            "pass pairs=False for one length per item"
        )
    if not pairs and arr.ndim != 1:
        raise ValueError(f"pairs=False needs lengths of shape [n], got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def pack(lengths, max_tokens: int, *, pairs: bool = True) -> list[np.ndarray]:
    """Best-fit-decreasing packing of items into batches of at most ``max_tokens`` tokens.

    ``lengths``: int [n, 2] chosen and rejected lengths with ``pairs=True`` (a pair costs both and its
    two sequences stay in one batch), or int [n] with ``pairs=False``. Returns a list of int64 arrays of
    item indices: every index exactly once, ascending within a batch, batches ordered by their first
    index; deterministic (ties by index). O(n log n). An item longer than ``max_tokens`` raises a
    ValueError naming its index.
    """
    return _rust.pack(_lengths_array(lengths, bool(pairs)), _limit("max_tokens", max_tokens, allow_none=False))


def group_by_length(lengths, max_tokens: int, *, pairs: bool = True) -> list[np.ndarray]:
    """Length-grouped batches for the padded layout: items sorted by length (longest first, ties by
    index) and cut so that each batch's padded size, sequences x its longest sequence (2 sequences per
    pair), is at most ``max_tokens``.

    Little padding (similar lengths share a batch) at the cost of batches of uneven token counts; use
    :func:`pack` for packed rows. ``lengths`` and the output are as for :func:`pack`: int64 arrays of item
    indices, ascending within a batch, batches ordered by their first index. An item whose own padded
    size is over ``max_tokens`` raises a ValueError naming it.
    """
    arr = _lengths_array(lengths, bool(pairs))
    budget = _limit("max_tokens", max_tokens, allow_none=False)
    if np.any(arr < 0):
        i = int(np.flatnonzero(arr.reshape(len(arr), -1).min(axis=1) < 0)[0])
        raise ValueError(f"lengths[{i}] is negative")
    longest = arr.max(axis=1) if pairs else arr
    cost = longest * (2 if pairs else 1)
    over = np.flatnonzero(cost > budget)
    if over.size:
        i = int(over[0])
        raise ValueError(f"item {i} needs {cost[i]} padded tokens, more than max_tokens {budget}")
    order = np.lexsort((np.arange(len(arr)), -longest))
    batches, at = [], 0
    while at < len(order):
        take = budget // max(int(cost[order[at]]), 1)  # the first item of a batch is its longest
        batches.append(np.sort(order[at : at + take]).astype(np.int64))
        at += take
    batches.sort(key=lambda b: b[0])
    return batches


def packed_positions(lengths) -> tuple[np.ndarray, np.ndarray]:
    """For the sequence lengths of one packed row: ``position_ids`` (int64, 0..len-1 per sequence,
    concatenated) and ``cu_seqlens`` (int32 [k + 1], cumulative, from 0), as varlen attention takes them."""
    return _rust.packed_positions(_lengths_array(lengths, pairs=False))


def padding_efficiency(
    lengths, batches: Sequence[np.ndarray], max_tokens: int, *, pad_to_multiple_of: int | None = None
) -> dict[str, float]:
    """How much of what the batches become is real tokens, in each layout, and how full the token budget is.

    ``lengths`` as for :func:`pack` ([n] or [n, 2] for pairs), ``batches`` lists of item indices (from
    :func:`pack` or :func:`group_by_length`), ``max_tokens`` the budget they were made for. Every value is
    a share in [0, 1] (0.0 when the batches hold no token):

    - ``"packed"``: real tokens / slots of the rows :func:`packed_batch` builds. A packed row is its
      batch's sequences back to back, ``[1, N]`` with N their tokens and no padding, so this is 1.0.
    - ``"padded"``: real tokens / slots of the tensors :func:`padded_batch` builds: per batch, sequences
      (2 per pair) x its longest sequence, rounded up to ``pad_to_multiple_of`` as there. The rest is
      padding that attention and the LM head compute on for nothing; ``packed >= padded`` always.
    - ``"budget_fill"``: real tokens / (batches x ``max_tokens``): how full the budget of an average
      batch is, whatever the layout. Near 1 when :func:`pack` fills budgets from plenty of data; low when
      the data is small next to the budget (a few pairs in one 4096-token batch), which costs nothing in
      either layout but means steps see fewer tokens than ``max_tokens`` promises.
    """
    arr = _lengths_array(lengths, np.ndim(lengths) == 2)
    budget = _limit("max_tokens", max_tokens, allow_none=False)
    multiple = _limit("pad_to_multiple_of", pad_to_multiple_of)
    per_item = arr if arr.ndim == 2 else arr[:, None]
    tokens = padded = 0
    for batch in batches:
        rows = per_item[np.asarray(batch, dtype=np.int64)]
        tokens += int(rows.sum())
        width = int(rows.max(initial=0))
        if multiple:
            width = -(-width // multiple) * multiple
        padded += rows.size * width
    # A packed row has exactly `tokens` slots: no padding to count.
    return {
        "packed": 1.0 if tokens else 0.0,
        "padded": tokens / padded if padded else 0.0,
        "budget_fill": tokens / (len(batches) * budget) if batches else 0.0,
    }


def _gather(data, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The ids (int64, back to back) and lengths of the given rows in batch order, and for pairs the
    prompt length of each sequence (else None). Pairs give their chosen sequences, then their rejected."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if isinstance(data, EncodedPairs):
        parts = [data.chosen, data.rejected]
        prompt_lengths = np.concatenate([data.chosen_prompt_lengths[idx], data.rejected_prompt_lengths[idx]])
    elif isinstance(data, EncodedTexts):
        parts, prompt_lengths = [data], None
    else:
        raise TypeError(f"expected EncodedTexts or EncodedPairs, got {type(data).__name__}")
    if idx.size and (idx.min() < 0 or idx.max() >= len(parts[0])):
        raise IndexError(f"row indices must be in [0, {len(parts[0])}), got {idx.min()}..{idx.max()}")
    ids, lengths = [], []
    for enc in parts:
        starts = enc.offsets[idx]
        n = enc.offsets[idx + 1] - starts
        position_in_row, _ = packed_positions(n)  # 0..n-1 for each row, back to back
        ids.append(enc.ids[np.repeat(starts, n) + position_in_row].astype(np.int64))
        lengths.append(n)
    return np.concatenate(ids), np.concatenate(lengths), prompt_lengths


def padded_batch(
    data: EncodedTexts | EncodedPairs, indices, pad_id: int, *, pad_to_multiple_of: int | None = None
) -> dict[str, np.ndarray]:
    """Right-padded arrays for the given rows (e.g. one batch from :func:`pack`), ready for torch.from_numpy.

    Texts: ``input_ids`` int64 [b, L] (``pad_id`` after each row), ``attention_mask`` int64 [b, L],
    ``labels`` int64 [b, L] (the ids, -100 on padding). Pairs: 2b rows, the chosen sequences first and
    then the rejected ones (row i and row b + i are one pair); ``labels`` are -100 on prompt and padding
    and ``completion_mask`` is 1 on response tokens. Labels are not shifted: ``labels[s, t]`` is the
    token at ``t``; the trainer shifts. L is the longest row (rounded up to ``pad_to_multiple_of``).
    """
    ids, lengths, prompt_lengths = _gather(data, indices)
    width = int(lengths.max(initial=0))
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    cols = np.arange(width, dtype=np.int64)[None, :]
    attention = cols < lengths[:, None]
    input_ids = np.full((len(lengths), width), pad_id, dtype=np.int64)
    input_ids[attention] = ids  # row-major order of the mask = the rows back to back
    out = {"input_ids": input_ids, "attention_mask": attention.astype(np.int64)}
    target = attention
    if prompt_lengths is not None:
        target = attention & (cols >= prompt_lengths[:, None])
        out["completion_mask"] = target.astype(np.int64)
    out["labels"] = np.where(target, input_ids, IGNORE_INDEX)
    return out


def packed_batch(data: EncodedTexts | EncodedPairs, indices) -> dict[str, np.ndarray | int]:
    """The given rows as one packed row for varlen attention (flash-attn ``cu_seqlens``, or transformers'
    packed ``position_ids``).

    Returns ``input_ids`` int64 [1, N], ``position_ids`` int64 [1, N] (restarting at 0 per sequence),
    ``cu_seqlens`` int32 [k + 1], ``max_seqlen`` (int), ``labels`` int64 [1, N], and for pairs
    ``completion_mask`` int64 [1, N] (1 on response tokens). Sequences in order: for pairs all chosen,
    then all rejected (as in :func:`padded_batch`). ``labels`` are the ids with -100 on the prompt (pairs)
    and on the first token of every sequence, so shifting labels by one across the row never makes a
    sequence's last token predict the next sequence's first.
    """
    ids, lengths, prompt_lengths = _gather(data, indices)
    position_ids, cu_seqlens = packed_positions(lengths)
    target = position_ids > 0
    out = {
        "input_ids": ids[None, :],
        "position_ids": position_ids[None, :],
        "cu_seqlens": cu_seqlens,
        "max_seqlen": int(lengths.max(initial=0)),
    }
    if prompt_lengths is not None:
        completion = position_ids >= np.repeat(prompt_lengths, lengths)
        out["completion_mask"] = completion[None, :].astype(np.int64)
        target &= completion
    out["labels"] = np.where(target, ids, IGNORE_INDEX)[None, :]
    return out
