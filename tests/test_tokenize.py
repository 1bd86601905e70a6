"""guard.data tokenization against the Python `tokenizers` package on the same tokenizer.json.

Three tokenizers are trained on a small multilingual corpus (no hub; tokenizer_fixtures.py): byte-level BPE with a
BOS/EOS template post-processor, WordPiece with the BERT normalizer, pre-tokenizer and post-processor,
and Unigram with NFKC + Metaspace and an EOS template. Every text of a tricky set (emoji and ZWJ
sequences, CJK, combining marks, whitespace runs, control characters, 100k-character lines) and random
unicode from hypothesis must give the same ids; pairs must equal the concatenated Python encodings;
truncation and every bad row follow the documented policy."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizer_fixtures import KINDS, SENTENCES, TRICKY, from_threads
from tokenizers import Tokenizer as HFTokenizer

import guard.data as gd
from guard import _rust


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    paths = {}
    for kind, train in KINDS.items():
        paths[kind] = root / f"{kind}.json"
        train(paths[kind])
    return paths


@pytest.fixture(scope="module", params=list(KINDS))
def pair(request, files):
    """(guard tokenizer, Python tokenizers tokenizer, path) on one trained file."""
    path = files[request.param]
    return gd.Tokenizer.from_file(path), HFTokenizer.from_file(str(path)), path


def py_ids(hf, text, add_special_tokens=True):
    return hf.encode(text, add_special_tokens=add_special_tokens).ids


def test_tokenizer_api(pair):
    tok, hf, path = pair
    assert tok.vocab_size == hf.get_vocab_size(with_added_tokens=True)
    for token in list(hf.get_vocab())[:50] + ["definitely-not-a-token"]:
        assert tok.token_to_id(token) == hf.token_to_id(token)
    assert tok.num_special_tokens == hf.post_processor.num_special_tokens_to_add(False)
    ids = tok.encode("Héllo wörld")
    assert isinstance(ids, np.ndarray) and ids.dtype == np.int32
    assert gd.Tokenizer.from_str(path.read_text()).encode("Héllo wörld").tolist() == ids.tolist()
    assert "vocab_size" in repr(tok)


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        gd.Tokenizer.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot load tokenizer"):
        gd.Tokenizer.from_file(tmp_path / "bad.json")
    with pytest.raises(TypeError, match="guard.data.Tokenizer"):
        gd.encode_texts("tokenizer.json", ["x"])


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_single_texts_match_python(pair, add_special_tokens):
    tok, hf, _ = pair
    for text in TRICKY + ["", "a"]:
        assert tok.encode(text, add_special_tokens).tolist() == py_ids(hf, text, add_special_tokens), repr(text[:40])


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_texts_matches_python(pair, add_special_tokens):
    tok, hf, _ = pair
    short = [t for t in TRICKY if len(t) < 1000]
    texts = TRICKY + short * 40  # > 1024 rows: several rayon chunks, order must survive
    expected = {t: py_ids(hf, t, add_special_tokens) for t in TRICKY}
    empty = [i for i, t in enumerate(texts) if not py_ids(hf, t, add_special_tokens=False)]
    enc = gd.encode_texts(tok, texts, add_special_tokens=add_special_tokens, errors="skip")
    assert enc.dropped == ({"empty text": empty} if empty else {})
    assert enc.kept.tolist() == [i for i in range(len(texts)) if i not in set(empty)]
    assert enc.ids.dtype == np.int32 and enc.offsets.dtype == np.int64 and enc.kept.dtype == np.int64
    assert len(enc) == len(enc.kept) and enc.offsets[0] == 0 and enc.offsets[-1] == len(enc.ids)
    assert enc.lengths.tolist() == np.diff(enc.offsets).tolist()
    for row, i in enumerate(enc.kept):
        assert enc[row].tolist() == expected[texts[i]], repr(texts[i][:40])
    assert enc[-1].tolist() == enc[len(enc) - 1].tolist()
    with pytest.raises(IndexError):
        enc[len(enc)]


@pytest.fixture(scope="module")
def loaded(files):
    return [(gd.Tokenizer.from_file(path), HFTokenizer.from_file(str(path))) for path in files.values()]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=120), min_size=1, max_size=8))
def test_random_unicode_matches_python(loaded, texts):
    for tok, hf in loaded:
        for text in texts:
            for special in (True, False):
                assert tok.encode(text, special).tolist() == py_ids(hf, text, special), repr(text)
        enc = gd.encode_texts(tok, texts, errors="skip")
        for row, i in enumerate(enc.kept):
            assert enc[row].tolist() == py_ids(hf, texts[i])
        assert len(enc.kept) + sum(map(len, enc.dropped.values())) == len(texts)


@pytest.mark.parametrize("max_length", [3, 5, 17, 64])
def test_text_truncation_matches_python(pair, max_length):
    tok, _, path = pair
    hf = HFTokenizer.from_file(str(path))
    hf.enable_truncation(max_length)
    texts = [t for t in TRICKY if py_ids(hf, t, add_special_tokens=False)]
    enc = gd.encode_texts(tok, texts, max_length=max_length)
    for row, text in enumerate(texts):
        assert enc[row].tolist() == hf.encode(text).ids
        assert len(enc[row]) <= max_length
    special = tok.num_special_tokens
    assert special >= 1
    with pytest.raises(ValueError, match=f"leaves no room for text: the tokenizer adds {special} special tokens"):
        gd.encode_texts(tok, ["a"], max_length=special)
    assert gd.encode_texts(tok, ["a b c"], max_length=1, add_special_tokens=False).lengths.tolist() == [1]


def test_file_truncation_and_padding_are_ignored(pair, tmp_path):
    tok, hf, path = pair
    spec = json.loads(path.read_text())
    spec["truncation"] = {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0}
    spec["padding"] = {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": None,
                       "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"}
    (tmp_path / "t.json").write_text(json.dumps(spec))
    text = SENTENCES[0] * 3
    assert gd.Tokenizer.from_file(tmp_path / "t.json").encode(text).tolist() == py_ids(hf, text)


def reference_pair(hf, prompt, response, *, max_length, max_prompt_length=None, add_special_tokens=True, eos=None):
    """The documented policy over Python encodings: returns (ids, prompt_length) or the reason."""
    p = py_ids(hf, prompt, add_special_tokens)
    r = py_ids(hf, response, add_special_tokens=False)
    if not r:
        return "empty response"
    if max_prompt_length is not None and len(p) > max_prompt_length:
        p = p[len(p) - max_prompt_length:]
    r = r + ([eos] if eos is not None else [])
    if max_length is not None:
        if len(p) >= max_length:
            return "prompt longer than the budget"
        r = r[: max_length - len(p)]
    return p + r, len(p)


@pytest.mark.parametrize(
    "options",
    [
        dict(max_length=None),
        dict(max_length=None, add_special_tokens=False, eos="eos"),
        dict(max_length=40, max_prompt_length=16, eos="eos"),
        dict(max_length=12, max_prompt_length=6),
        dict(max_length=9),
    ],
)
def test_pairs_match_python_concatenation(pair, options):
    tok, hf, _ = pair
    options = dict(options)
    if options.get("eos") == "eos":
        options["eos"] = tok.token_to_id("</s>") or tok.token_to_id("[SEP]")
    rng = np.random.default_rng(1)
    n = 2500  # several chunks
    pool = [t for t in TRICKY if len(t) < 1000] + SENTENCES
    prompts = [pool[i] for i in rng.integers(0, len(pool), n)]
    chosen = [pool[i] for i in rng.integers(0, len(pool), n)]
    rejected = [pool[i] for i in rng.integers(0, len(pool), n)]
    out = gd.encode_pairs(
        tok, prompts, chosen, rejected, max_length=options["max_length"],
        max_prompt_length=options.get("max_prompt_length"), add_special_tokens=options.get("add_special_tokens", True),
        eos_token_id=options.get("eos"), errors="skip",
    )
    expected_dropped = {}
    kept = []
    for i in range(n):
        refs = [reference_pair(hf, prompts[i], resp, **options) for resp in (chosen[i], rejected[i])]
        reasons = [r for r in refs if isinstance(r, str)]
        if reasons:
            # Empty responses are found before the budget is checked.
            reason = "empty response" if "empty response" in reasons else reasons[0]
            expected_dropped.setdefault(reason, []).append(i)
            continue
        kept.append(i)
        row = len(kept) - 1
        (c_ids, c_len), (r_ids, r_len) = refs
        assert out.chosen[row].tolist() == c_ids
        assert out.rejected[row].tolist() == r_ids
        assert out.chosen_prompt_lengths[row] == c_len and out.rejected_prompt_lengths[row] == r_len
    assert out.kept.tolist() == kept
    assert out.dropped == expected_dropped
    assert len(out) == len(kept) and out.lengths.shape == (len(kept), 2)
    if options["max_length"] is not None:
        assert out.lengths.max(initial=0) <= options["max_length"]


def test_pair_truncation_rules(files):
    tok = gd.Tokenizer.from_file(files["bpe"])
    hf = HFTokenizer.from_file(str(files["bpe"]))
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    prompt, response = SENTENCES[0], SENTENCES[10]
    p, r = py_ids(hf, prompt), py_ids(hf, response, add_special_tokens=False)
    assert p[0] == bos and p[-1] == eos and len(r) > 5
    # max_prompt_length keeps the END of the prompt (the BOS goes, the EOS of the template stays).
    out = gd.encode_pairs(tok, [prompt], [response], [response], max_length=None, max_prompt_length=4)
    assert out.chosen[0].tolist() == p[-4:] + r and out.chosen_prompt_lengths.tolist() == [4]
    # A sequence over max_length is cut from the end of its response; the appended EOS goes first.
    out = gd.encode_pairs(tok, [prompt], [response], [response], max_length=len(p) + len(r), eos_token_id=eos)
    assert out.chosen[0].tolist() == p + r
    out = gd.encode_pairs(tok, [prompt], [response], [response], max_length=len(p) + 2, eos_token_id=eos)
    assert out.rejected[0].tolist() == p + r[:2]
    # One response token must fit after the prompt.
    out = gd.encode_pairs(tok, [prompt], [response], [response], max_length=len(p) + 1)
    assert out.chosen[0].tolist() == p + r[:1]
    with pytest.raises(ValueError, match=rf"row 0: prompt: prompt longer than the budget \({len(p)} prompt tokens, max_length {len(p)}\)"):
        gd.encode_pairs(tok, [prompt], [response], [response], max_length=len(p))
    # The default max_length is 1024.
    long = "word " * 3000
    with pytest.raises(ValueError, match="max_length 1024"):
        gd.encode_pairs(tok, [long], ["a"], ["b"])
    out = gd.encode_pairs(tok, ["q"], [long], [long])
    assert len(out.chosen[0]) == 1024


BAD_CASES = [
    # (field, value, exception, reason)
    ("prompt", None, TypeError, "not a string"),
    ("chosen", 3, TypeError, "not a string"),
    ("rejected", b"bytes", TypeError, "not a string"),
    ("prompt", "bad \ud800 surrogate", ValueError, "invalid UTF-8"),
    ("rejected", "\udfff", ValueError, "invalid UTF-8"),
    ("chosen", "", ValueError, "empty response"),
    ("rejected", "", ValueError, "empty response"),
    ("prompt", "word " * 200, ValueError, "prompt longer than the budget"),
]


@pytest.mark.parametrize("field, value, exc, reason", BAD_CASES)
def test_bad_pairs_raise_with_row_field_and_reason(files, field, value, exc, reason):
    tok = gd.Tokenizer.from_file(files["bpe"])
    rows = {"prompt": ["ok prompt"] * 5, "chosen": ["yes"] * 5, "rejected": ["no"] * 5}
    rows[field][3] = value
    rows[field][4] = value  # only the first bad row is named
    with pytest.raises(exc, match=rf"^row 3: {field}: {reason}"):
        gd.encode_pairs(tok, rows["prompt"], rows["chosen"], rows["rejected"], max_length=64)
    out = gd.encode_pairs(tok, rows["prompt"], rows["chosen"], rows["rejected"], max_length=64, errors="skip")
    assert out.kept.tolist() == [0, 1, 2]
    assert out.dropped == {reason: [3, 4]}
    assert len(out.chosen) == len(out.rejected) == 3


def test_zero_token_response_is_empty(files):
    # The BERT normalizer and pre-tokenizer leave nothing of a whitespace-only string.
    tok = gd.Tokenizer.from_file(files["wordpiece"])
    assert tok.encode(" \t ", add_special_tokens=False).tolist() == []
    with pytest.raises(ValueError, match=r"row 1: rejected: empty response \(no tokens\)"):
        gd.encode_pairs(tok, ["a", "b"], ["x", "y"], ["z", " \t "])
    with pytest.raises(ValueError, match=r"row 0: text: empty text \(no tokens besides special tokens\)"):
        gd.encode_texts(tok, [" \t "])


def test_mixed_bad_rows_add_up(files):
    tok = gd.Tokenizer.from_file(files["bpe"])
    prompts = ["p", None, "p", "word " * 100, "p", "p", "p\ud800", "p"]
    chosen = ["c", "c", "", "c", "c", 7, "c", "c"]
    rejected = ["r", "r", "r", "r", "", "r", "r", "r"]
    out = gd.encode_pairs(tok, prompts, chosen, rejected, max_length=32, errors="skip")
    assert out.kept.tolist() == [0, 7]
    assert out.dropped == {
        "not a string": [1, 5],
        "invalid UTF-8": [6],
        "empty response": [2, 4],
        "prompt longer than the budget": [3],
    }
    assert set(out.dropped) <= set(gd.REASONS)
    assert len(out.kept) + sum(map(len, out.dropped.values())) == len(prompts)
    with pytest.raises(TypeError, match=r"^row 1: prompt: not a string \(got NoneType\)"):
        gd.encode_pairs(tok, prompts, chosen, rejected, max_length=32)

    texts = ["a", "", 5, "\ud800", "b"]
    enc = gd.encode_texts(tok, texts, errors="skip")
    assert enc.kept.tolist() == [0, 4]
    assert enc.dropped == {"not a string": [2], "invalid UTF-8": [3], "empty text": [1]}
    with pytest.raises(ValueError, match=r"^row 1: text: empty text"):
        gd.encode_texts(tok, texts)


def test_argument_errors(files):
    tok = gd.Tokenizer.from_file(files["bpe"])
    with pytest.raises(ValueError, match='errors must be "raise" or "skip"'):
        gd.encode_texts(tok, ["a"], errors="ignore")
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        gd.encode_pairs(tok, ["a"], ["b"], ["c"], max_length=0)
    with pytest.raises(ValueError, match="max_prompt_length must be a positive int"):
        gd.encode_pairs(tok, ["a"], ["b"], ["c"], max_prompt_length=-1)
    with pytest.raises(ValueError, match="eos_token_id 999999 is not in the vocabulary"):
        gd.encode_pairs(tok, ["a"], ["b"], ["c"], eos_token_id=999_999)
    with pytest.raises(ValueError, match="same length, got 2, 1 and 1"):
        gd.encode_pairs(tok, ["a", "b"], ["b"], ["c"])
    with pytest.raises(TypeError, match="texts must be a sequence of str, got int"):
        gd.encode_texts(tok, 5)


def test_broken_tokenizer_raises_even_when_skipping(files, tmp_path):
    # WordPiece whose unknown token is missing from the vocabulary cannot encode an unknown word.
    spec = json.loads(files["wordpiece"].read_text())
    spec["model"]["unk_token"] = "[NOT-IN-VOCAB]"
    (tmp_path / "broken.json").write_text(json.dumps(spec))
    tok = gd.Tokenizer.from_file(tmp_path / "broken.json")
    with pytest.raises(RuntimeError, match=r"row 1: text: the tokenizer failed"):
        gd.encode_texts(tok, ["the", "\u2603\u2603"], errors="skip")


def test_empty_inputs(files):
    tok = gd.Tokenizer.from_file(files["bpe"])
    enc = gd.encode_texts(tok, [])
    assert len(enc) == 0 and enc.offsets.tolist() == [0] and enc.ids.size == 0
    pairs = gd.encode_pairs(tok, [], [], [])
    assert len(pairs) == 0 and pairs.lengths.shape == (0, 2)


def test_threads_share_a_tokenizer(files):
    tok = gd.Tokenizer.from_file(files["unigram"])
    hf = HFTokenizer.from_file(str(files["unigram"]))
    texts = [t for t in TRICKY if len(t) < 1000 and py_ids(hf, t, add_special_tokens=False)] * 60
    expected = [py_ids(hf, t) for t in texts]

    def work():
        enc = gd.encode_texts(tok, texts)
        return [enc[i].tolist() for i in range(len(enc))]

    assert all(r == expected for r in from_threads(work))
    assert isinstance(tok._native, _rust.Tokenizer)
