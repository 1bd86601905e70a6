"""guard._rust (the Rust extension) through its Python face: exact dedup against a dict-based
first-occurrence reference, errors that name the row and the reason, and the GIL released while the
heavy work runs."""

import threading
import time

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


def _spin_rate(count, work):
    """Increments per second that a spinning Python thread makes while `work` runs in this one."""
    before, start = count[0], time.perf_counter()
    work()
    return (count[0] - before) / (time.perf_counter() - start)


def test_heavy_calls_release_the_gil(tmp_path):
    # A second Python thread counts as fast as it can. While a call holds the GIL it barely moves
    # (checked on list.sort, which never releases it); while encode_texts works, it keeps counting.
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghij"), size=rng.integers(2, 9))) for _ in range(3000)]
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator([" ".join(rng.choice(words, 50)) for _ in range(500)],
                           trainers.BpeTrainer(vocab_size=500, show_progress=False))
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = guard.data.Tokenizer.from_file(tmp_path / "tokenizer.json")
    texts = [" ".join(rng.choice(words, 40_000)) for _ in range(16)]  # few, long rows: little GIL-held setup
    shuffled = rng.permutation(3_000_000).tolist()

    count, stop = [0], threading.Event()

    def spin():
        while not stop.is_set():
            count[0] += 1

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        idle = _spin_rate(count, lambda: time.sleep(0.3))
        held = _spin_rate(count, lambda: sorted(shuffled))
        encoding = _spin_rate(count, lambda: guard.data.encode_texts(tok, texts))
    finally:
        stop.set()
        spinner.join()
    assert held < 0.2 * idle, (idle, held)  # the measurement can see a held GIL
    assert encoding > 0.3 * idle, (idle, held, encoding)
