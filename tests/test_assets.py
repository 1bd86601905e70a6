"""The bundled assets of the default job (python/guard/assets/): they regenerate byte for byte, the sample
loads with zero drops and has the designed category shift, both tokenizer implementations agree on it,
and the tiny preset builds a reward model that takes its sequences.

    TRITON_INTERPRET=1 python -m pytest tests/test_assets.py -q
"""

import json

import numpy as np
import pytest
import torch

from guard import assets
from guard.assets import make_assets
from guard.data import Tokenizer, encode_pairs, padded_batch

FILES = ("sample_pairs.jsonl", "tokenizer.json", "tiny-llama.json")


@pytest.fixture(scope="module")
def rows():
    with open(assets.SAMPLE_PAIRS, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def texts(rows):
    """A few hundred sample texts: prompts, responses and whole prompt + response strings."""
    picked = rows[::20]
    return ([r["prompt"] for r in picked] + [r["chosen"] for r in picked] + [r["rejected"] for r in picked]
            + [r["prompt"] + " " + r["chosen"] for r in picked])


def test_regenerating_gives_identical_bytes(tmp_path):
    written = make_assets.write_assets(tmp_path)
    assert sorted(p.name for p in written) == sorted(FILES)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (assets.ASSETS_DIR / name).read_bytes(), name


def test_sample_loads_with_zero_drops(tmp_path):
    from guard.adapters import load_preferences

    prefs = load_preferences(str(assets.SAMPLE_PAIRS), cache_dir=str(tmp_path / "hf-cache"))
    assert prefs.schema == "generic"
    assert len(prefs) == make_assets.NUM_PAIRS and prefs.n_input == make_assets.NUM_PAIRS
    assert prefs.dropped == {}
    counts = {c: prefs.categories.count(c) for c in make_assets.CATEGORIES}
    assert set(prefs.categories) == set(make_assets.CATEGORIES)
    assert min(counts.values()) > 0.4 * len(prefs)


def test_rows_are_the_generator_s_and_short(rows):
    generated = make_assets.generate_pairs()
    assert [{k: g[k] for k in ("prompt", "chosen", "rejected", "category")} for g in generated] == rows
    assert max(len(r["prompt"].split()) for r in rows) <= 20
    assert max(len(r[k].split()) for r in rows for k in ("chosen", "rejected")) <= 25
    assert all(r["chosen"] != r["rejected"] for r in rows)


def test_design_category_shift_and_visible_topic(rows):
    generated = make_assets.generate_pairs()
    score = {c: np.array([[g["chosen_score"], g["rejected_score"]] for g in generated if g["category"] == c])
             for c in make_assets.CATEGORIES}
    # Harmless responses score EXTRA_SLOTS higher on average, with the same spread ...
    shift = score["harmless"].mean() - score["helpful"].mean()
    assert abs(shift - make_assets.EXTRA_SLOTS) < 0.15
    assert abs(score["harmless"].std() - score["helpful"].std()) < 0.1
    # ... the annotator follows the hidden score most of the time, but not always (Bradley-Terry noise) ...
    diff = np.concatenate([s[:, 0] - s[:, 1] for s in score.values()])
    agreement = np.mean(np.where(diff > 0, 1.0, np.where(diff == 0, 0.5, 0.0)))
    assert 0.78 < agreement < 0.88
    # ... and the prompt's topic tells the category.
    for r in rows:
        assert sum(task in r["prompt"] for task in make_assets.TASKS[r["category"]]) == 1
        other = next(c for c in make_assets.CATEGORIES if c != r["category"])
        assert not any(task in r["prompt"] for task in make_assets.TASKS[other])


def test_tokenizers_agree(texts):
    from tokenizers import Tokenizer as PyTokenizer
    from transformers import PreTrainedTokenizerFast

    ours = Tokenizer.from_file(assets.TOKENIZER)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(assets.TOKENIZER))
    py = PyTokenizer.from_file(str(assets.TOKENIZER))
    assert ours.vocab_size == len(hf) == py.get_vocab_size()
    assert 100 < ours.vocab_size < 500
    for i, tok in enumerate(make_assets.SPECIAL_TOKENS):
        assert ours.token_to_id(tok) == hf.convert_tokens_to_ids(tok) == i
    unk = ours.token_to_id("<unk>")
    bos = ours.token_to_id("<bos>")
    for text in texts:
        ids = ours.encode(text).tolist()
        assert ids == hf(text)["input_ids"] == py.encode(text).ids, text
        assert ids[0] == bos and bos not in ids[1:] and unk not in ids
        assert ours.encode(text, add_special_tokens=False).tolist() == ids[1:]
    # Lowercased, split on whitespace and punctuation; unknown words map to <unk>.
    assert ours.encode("Stay SAFE here.").tolist() == ours.encode("stay safe here .").tolist()
    assert ours.encode("zyzzyva", add_special_tokens=False).tolist() == [unk]


def test_tiny_preset_builds_a_reward_model_for_the_sample(rows):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    preset = json.loads(assets.TINY_LLAMA.read_text())
    assert preset == make_assets.TINY_LLAMA and "vocab_size" not in preset
    tok = Tokenizer.from_file(assets.TOKENIZER)
    pad, eos = tok.token_to_id("<pad>"), tok.token_to_id("<eos>")
    enc = encode_pairs(tok, [r["prompt"] for r in rows], [r["chosen"] for r in rows],
                       [r["rejected"] for r in rows], max_length=None, eos_token_id=eos)
    assert enc.dropped == {} and int(enc.lengths.max()) <= 64 <= preset["max_position_embeddings"]
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(**preset, vocab_size=tok.vocab_size, pad_token_id=pad,
                                                       num_labels=1))
    batch = padded_batch(enc, np.arange(4), pad_id=pad)
    with torch.no_grad():
        rewards = model(input_ids=torch.from_numpy(batch["input_ids"]),
                        attention_mask=torch.from_numpy(batch["attention_mask"])).logits
    assert rewards.shape == (8, 1) and torch.isfinite(rewards).all()
    # Right padding: each row's reward is read at its last real token, so padding must not change it.
    with torch.no_grad():
        alone = model(input_ids=torch.from_numpy(batch["input_ids"][:1, : int(batch["attention_mask"][0].sum())]))
    torch.testing.assert_close(alone.logits[0], rewards[0], rtol=1e-4, atol=1e-5)
