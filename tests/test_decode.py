"""guard.data.Tokenizer.decode / decode_batch against the Python `tokenizers` package on the same file.

The tokenizers are the byte-level BPE, WordPiece and Unigram ones of tokenizer_fixtures.py (each with its
decoder) plus guard's bundled word-level tokenizer.json (no decoder: tokens joined by spaces). Encodings
of real texts and random id sequences (special tokens, partial UTF-8 bytes and all) must decode to the
same text with special tokens skipped and kept; every input form (lists, numpy arrays of any integer
dtype, 2-D arrays, EncodedTexts) gives the same answer; bad ids raise errors naming the row and position.

    python -m pytest tests/test_decode.py -q
"""

import numpy as np
import pytest
from tokenizer_fixtures import KINDS, SENTENCES, TRICKY, from_threads
from tokenizers import Tokenizer as HFTokenizer

import guard.data as gd
from guard import _rust, assets


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    paths = {"bundled": assets.TOKENIZER}
    for kind, train in KINDS.items():
        paths[kind] = root / f"{kind}.json"
        train(paths[kind])
    return paths


@pytest.fixture(scope="module", params=["bundled", *KINDS])
def pair(request, files):
    """(guard tokenizer, Python tokenizers tokenizer) on one file."""
    path = files[request.param]
    return gd.Tokenizer.from_file(path), HFTokenizer.from_file(str(path))


def encodings(hf):
    """Ids of real texts (with the post-processor's special tokens), short enough to compare quickly."""
    texts = SENTENCES + [t for t in TRICKY if len(t) < 1000]
    return [hf.encode(t).ids for t in texts]


def random_ids(vocab_size, rows, seed):
    """Random sequences over the whole vocabulary, lengths 0..40 (0 included)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab_size, size=rng.integers(0, 41)).tolist() for _ in range(rows)]


@pytest.mark.parametrize("skip", [True, False])
def test_decode_matches_python(pair, skip):
    tok, hf = pair
    sequences = encodings(hf) + random_ids(tok.vocab_size, 200, seed=1)
    for ids in sequences:
        assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), ids
    # The default skips special tokens, as the package's does.
    ids = sequences[0]
    assert tok.decode(ids) == hf.decode(ids)
    specials = [hf.token_to_id(t) for t in ("<s>", "</s>", "[CLS]", "[SEP]", "<bos>", "<eos>") if hf.token_to_id(t)]
    assert tok.decode(specials) == hf.decode(specials)


@pytest.mark.parametrize("skip", [True, False])
def test_decode_batch_matches_python(pair, skip):
    tok, hf = pair
    sequences = encodings(hf) + random_ids(tok.vocab_size, 300, seed=2)
    expected = hf.decode_batch(sequences, skip_special_tokens=skip)
    assert tok.decode_batch(sequences, skip_special_tokens=skip) == expected
    as_arrays = [np.asarray(s, dtype=np.int32) for s in sequences]
    assert tok.decode_batch(as_arrays, skip_special_tokens=skip) == expected
    assert tok.decode_batch(tuple(map(tuple, sequences)), skip_special_tokens=skip) == expected


def test_every_input_form_decodes_alike(files):
    tok = gd.Tokenizer.from_file(files["bpe"])
    hf = HFTokenizer.from_file(str(files["bpe"]))
    ids = hf.encode(SENTENCES[1]).ids
    expected = hf.decode(ids)
    for dtype in (np.int64, np.int32, np.int16, np.uint16, np.uint32, np.uint64):
        assert tok.decode(np.asarray(ids, dtype=dtype)) == expected, dtype
    assert tok.decode(np.asarray(ids)[::-1][::-1]) == expected  # a strided view
    assert tok.decode(tuple(ids)) == expected
    assert tok.decode([np.int64(i) for i in ids]) == expected  # numpy scalars in a list
    assert tok.decode(tok.encode(SENTENCES[1])) == expected  # encode's int32 array
    # 2-D arrays: one row per sequence (a padded batch decodes its pad tokens away when they are special).
    pad = hf.token_to_id("<pad>")
    rows = [hf.encode(t).ids for t in SENTENCES[:4]]
    width = max(map(len, rows))
    padded = np.array([r + [pad] * (width - len(r)) for r in rows])
    assert tok.decode_batch(padded) == hf.decode_batch(padded.tolist())
    assert tok.decode_batch(padded) == hf.decode_batch(rows)
    # EncodedTexts, e.g. the chosen side of encoded pairs.
    enc = gd.encode_texts(tok, SENTENCES)
    assert tok.decode_batch(enc) == hf.decode_batch([hf.encode(t).ids for t in SENTENCES])
    pairs = gd.encode_pairs(tok, SENTENCES[:3], SENTENCES[3:6], SENTENCES[6:9])
    assert tok.decode_batch(pairs.chosen, skip_special_tokens=False) == [
        hf.decode(pairs.chosen[i].tolist(), skip_special_tokens=False) for i in range(3)
    ]
    # The binding on its own takes lists too.
    assert tok._native.decode(ids, True) == expected
    assert tok._native.decode_batch([ids, []], True) == [expected, ""]


def test_empty_input(files):
    tok = gd.Tokenizer.from_file(files["wordpiece"])
    hf = HFTokenizer.from_file(str(files["wordpiece"]))
    assert tok.decode([]) == hf.decode([]) == ""
    assert tok.decode(np.array([])) == ""  # an empty float array has no ids to be wrong
    assert tok.decode(np.zeros(0, dtype=np.int32), skip_special_tokens=False) == ""
    assert tok.decode_batch([]) == hf.decode_batch([]) == []
    assert tok.decode_batch([[], []]) == hf.decode_batch([[], []]) == ["", ""]
    assert tok.decode_batch(np.zeros((0, 5), dtype=np.int64)) == []
    assert tok.decode_batch(gd.encode_texts(tok, [])) == []
    only_special = [hf.token_to_id("[CLS]"), hf.token_to_id("[SEP]")]
    assert tok.decode(only_special) == hf.decode(only_special) == ""


def test_ids_out_of_range_name_the_position_and_vocabulary(files):
    tok = gd.Tokenizer.from_file(files["bpe"])
    n = tok.vocab_size
    with pytest.raises(ValueError, match=rf"^position 2: id {n} is out of range for the vocabulary of size {n}$"):
        tok.decode([5, 6, n, 7])
    with pytest.raises(ValueError, match=rf"^position 0: id -100 is out of range for the vocabulary of size {n}$"):
        tok.decode(np.array([-100, 5]))  # the labels' ignore_index, decoded by mistake
    with pytest.raises(ValueError, match=rf"position 1: id {2**70} is out of range for the vocabulary of size {n}"):
        tok.decode([1, 2**70])
    with pytest.raises(ValueError, match=r"does not fit in int64"):
        tok.decode(np.array([1, 2**64 - 1], dtype=np.uint64))
    with pytest.raises(ValueError, match=rf"^row 2, position 1: id {n + 5} is out of range for the vocabulary of size {n}$"):
        tok.decode_batch([[1, 2], [3], [4, n + 5], [-1]])  # the first bad row is named
    with pytest.raises(ValueError, match=r"^row 1, position 0: id -1 is out of range"):
        tok.decode_batch(np.array([[1, 2], [-1, 3]]))
    # The last id is fine, the next one is not.
    assert tok.decode([n - 1], skip_special_tokens=False) == HFTokenizer.from_file(str(files["bpe"])).decode(
        [n - 1], skip_special_tokens=False
    )


def test_bad_arguments(files):
    tok = gd.Tokenizer.from_file(files["unigram"])
    with pytest.raises(TypeError, match=r"^position 1: ids must be ints, got float$"):
        tok.decode([3, 4.0])
    with pytest.raises(TypeError, match=r"ids must be integers, got dtype float64"):
        tok.decode(np.array([3.0, 4.0]))
    with pytest.raises(TypeError, match=r"ids must be integers, got dtype bool"):
        tok.decode(np.array([True, False]))
    with pytest.raises(TypeError, match=r"ids must be a sequence of ints, got str"):
        tok.decode("hello")
    with pytest.raises(TypeError, match=r"ids must be a sequence of ints, got int"):
        tok.decode(5)
    with pytest.raises(TypeError, match=r"position 0: ids must be ints, got list \(decode_batch takes many sequences\)"):
        tok.decode([[3, 4], [5]])
    with pytest.raises(ValueError, match=r"ids must be one sequence \(1-D\), got shape \(2, 2\)"):
        tok.decode(np.array([[3, 4], [5, 6]]))
    with pytest.raises(ValueError, match=r"got an array of shape \(2, 2, 2\)"):
        tok.decode_batch(np.zeros((2, 2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"got an array of shape \(3,\)"):
        tok.decode_batch(np.array([3, 4, 5]))
    with pytest.raises(TypeError, match=r"^row 1, position 0: ids must be ints, got str$"):
        tok.decode_batch([[3], ["4"]])
    with pytest.raises(TypeError, match=r"row 1, ids must be integers, got dtype float32"):
        tok.decode_batch([np.array([3]), np.array([4.0], dtype=np.float32)])
    with pytest.raises(TypeError, match=r"sequences must be a sequence of id sequences, got int"):
        tok.decode_batch(7)
    with pytest.raises(TypeError, match=r"sequences must be a sequence of id sequences, got str"):
        tok.decode_batch("abc")


def test_threads_share_a_tokenizer(files):
    tok = gd.Tokenizer.from_file(files["bpe"])
    hf = HFTokenizer.from_file(str(files["bpe"]))
    sequences = random_ids(tok.vocab_size, 3000, seed=3)  # three rayon chunks
    expected = hf.decode_batch(sequences)
    results = from_threads(lambda: tok.decode_batch(sequences))
    assert all(r == expected for r in results)
    assert isinstance(tok._native, _rust.Tokenizer)
