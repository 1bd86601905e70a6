"""guard._rust (the Rust extension) through its Python face: exact dedup against a dict-based
first-occurrence reference, and errors that name the row and the reason."""

import numpy as np
import pytest

import guard.data
from guard import _rust

ALPHABET = ["a", "b", "é", "😀", "漢", "e\u0301", " ", "\n", "\0"]


def reference_dedup(prompts, responses):
    first = {}
    for i, key in enumerate(zip(prompts, responses)):
        first.setdefault(key, i)
    return sorted(first.values())


@pytest.mark.parametrize("rows", [0, 1, 9, 5000, 20011])
def test_dedup_matches_first_occurrence(rows):
    rng = np.random.default_rng(rows)
    # Short strings over a small alphabet: plenty of exact repeats, including ones that differ only
    # in where the prompt ends and the response begins.
    def text():
        return "".join(rng.choice(ALPHABET, size=rng.integers(0, 4)))

    prompts = [text() for _ in range(rows)]
    responses = [text() for _ in range(rows)]
    keep = guard.data.dedup(prompts, responses)
    assert isinstance(keep, np.ndarray) and keep.dtype == np.int64 and keep.ndim == 1
    assert keep.tolist() == reference_dedup(prompts, responses)


def test_dedup_accepts_any_sequence_and_long_text():
    long = "x" * 1_000_003
    keep = _rust.dedup((p for p in [long, long, long + "y"]), ("r", "r", "r"))
    assert keep.tolist() == [0, 2]


def test_dedup_errors_name_row_and_reason():
    with pytest.raises(TypeError, match=r"row 1: prompt is not a string \(got int\)"):
        guard.data.dedup(["a", 3], ["x", "y"])
    with pytest.raises(TypeError, match=r"row 0: response is not a string \(got NoneType\)"):
        guard.data.dedup(["a"], [None])
    with pytest.raises(ValueError, match="row 2: response is not valid UTF-8"):
        guard.data.dedup(["a", "b", "c"], ["x", "y", "bad \ud800 surrogate"])
    with pytest.raises(ValueError, match="2 prompts and 1 responses"):
        guard.data.dedup(["a", "b"], ["x"])
    with pytest.raises(TypeError, match="prompts must be a sequence of str, got int"):
        guard.data.dedup(5, ["x"])


def test_version_matches_package():
    import guard

    assert _rust.__version__ == guard.__version__
