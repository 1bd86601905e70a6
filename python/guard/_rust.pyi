"""Type stub for guard._rust, the Rust data layer (rust/py.rs). Use it through guard.data."""

import os
from collections.abc import Sequence
from typing import Literal, TypedDict

import numpy as np
import numpy.typing as npt

__version__: str

def dedup(prompts: Sequence[str], responses: Sequence[str]) -> npt.NDArray[np.int64]:
    """Row indices (ascending) of the first occurrence of each exact (prompt, response) pair.

    Hashes xxh3-128 over ``prompt \\0 response`` with the GIL released, confirming equal hashes byte
    for byte. Raises TypeError naming the row for a non-string item, ValueError naming the row for
    text that is not valid UTF-8, and ValueError when the lengths differ.
    """

class Tokenizer:
    """A Hugging Face tokenizer.json loaded by the Rust ``tokenizers`` crate (rust/tokenize/).

    Ids equal the Python ``tokenizers`` package's ``encode(text, add_special_tokens).ids`` and texts its
    ``decode``; the file's own truncation and padding settings are switched off on load.
    """

    @staticmethod
    def from_file(path: str | os.PathLike[str]) -> Tokenizer:
        """Load a tokenizer.json (FileNotFoundError if missing, ValueError if it does not parse)."""
    @staticmethod
    def from_str(json: str) -> Tokenizer:
        """Load from the JSON text of a tokenizer.json."""
    def vocab_size(self, with_added_tokens: bool = True) -> int: ...
    def token_to_id(self, token: str) -> int | None: ...
    def id_to_token(self, id: int) -> str | None: ...
    @property
    def num_special_tokens(self) -> int:
        """Special tokens the post-processor adds around one sequence."""
    def encode(self, text: str, add_special_tokens: bool = True) -> npt.NDArray[np.int32]:
        """The ids of one text (GIL released)."""
    def decode(self, ids: npt.NDArray[np.int64] | Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of one sequence of ids, as the ``tokenizers`` package's ``decode`` (GIL released).

        ``ids``: a 1-D int64 array (read directly) or any sequence of Python / numpy ints. An id with no
        token raises ValueError ``position {p}: id {id} is out of range for the vocabulary of size {n}``
        (the package skips such ids silently); a non-integer raises TypeError naming the position; a
        failing decoder raises RuntimeError.
        """
    def decode_batch(
        self, sequences: Sequence[npt.NDArray[np.int64] | Sequence[int]], skip_special_tokens: bool = True
    ) -> list[str]:
        """The text of each sequence, in order, as the package's ``decode_batch``: ids read with the GIL
        held, decoded in parallel (rayon over chunks of 1024 rows) with it released. Errors as in
        ``decode``, prefixed with ``row {r}, `` (the first bad row)."""

class _EncodedTextsDict(TypedDict):
    ids: npt.NDArray[np.int32]
    offsets: npt.NDArray[np.int64]
    kept: npt.NDArray[np.int64]
    dropped: dict[str, list[int]]

class _EncodedPairsDict(TypedDict):
    chosen_ids: npt.NDArray[np.int32]
    chosen_offsets: npt.NDArray[np.int64]
    rejected_ids: npt.NDArray[np.int32]
    rejected_offsets: npt.NDArray[np.int64]
    chosen_prompt_lengths: npt.NDArray[np.int64]
    rejected_prompt_lengths: npt.NDArray[np.int64]
    kept: npt.NDArray[np.int64]
    dropped: dict[str, list[int]]

def encode_texts(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    max_length: int | None = None,
    add_special_tokens: bool = True,
    errors: Literal["raise", "skip"] = "raise",
) -> _EncodedTextsDict:
    """Encode many texts in parallel (rayon over chunks of 1024 rows, GIL released).

    Row i of the result is ``ids[offsets[i]:offsets[i + 1]]`` and input row ``kept[i]``. With
    ``max_length``, a text's own tokens are cut from the end so that they and the special tokens fit.
    Bad rows ("not a string", "invalid UTF-8", "empty text"): with errors="raise", TypeError (not a
    string) or ValueError naming the first bad row, ``row {i}: text: {reason} ({detail})``; with
    errors="skip", left out and listed in ``dropped`` by reason. A tokenizer that fails raises
    RuntimeError.
    """

def encode_pairs(
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    *,
    max_length: int | None = 1024,
    max_prompt_length: int | None = None,
    add_special_tokens: bool = True,
    eos_token_id: int | None = None,
    errors: Literal["raise", "skip"] = "raise",
) -> _EncodedPairsDict:
    """Encode preference pairs as TRL's DPO does: prompt ids = encode(prompt, add_special_tokens),
    response ids = encode(response, False), sequence = prompt + response (+ eos_token_id).

    Truncation: max_prompt_length keeps the LAST prompt tokens; a sequence over max_length loses
    tokens from the end of its response; a row where no response token fits is bad ("prompt longer
    than the budget"). Other bad rows: "not a string", "invalid UTF-8", "empty response". Errors as
    in encode_texts, with the field (prompt, chosen, rejected) named.
    """

def pack(lengths: npt.NDArray[np.int64], max_tokens: int) -> list[npt.NDArray[np.int64]]:
    """Best-fit-decreasing packing (GIL released). lengths int64 [n] or [n, 2] (pairs: the cost is
    chosen + rejected). Batches of item indices: ascending inside, ordered by first index. ValueError
    naming the item (or pair) that is longer than max_tokens, or a negative length."""

def packed_positions(
    lengths: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """position_ids (0..len-1 per sequence, concatenated) and cu_seqlens ([k + 1], from 0)."""
