"""guard.rollout: generation settings, the right-padded Rollout layout (assemble, cut_at_stop, response_index,
select, concat), sampling with a tiny causal LM (reproducible, cut at the stop token, prompts kept, the
model's own distribution under temperature / top-p), and reward scoring with the policy's tokenizer and
with a different one (re-tokenized text). Tiny local models and tokenizers only.

    python -m pytest tests/test_rollout.py -q
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as HFBackend
from tokenizers import models as tk_models
from tokenizers import normalizers, pre_tokenizers, processors

from guard import models
from guard.rollout import (
    GenerationSettings, RewardScorer, Rollout, assemble, concat_rollouts, cut_at_stop, generate, left_padded,
)

PAD = 7  # a pad id for the layout tests (anything not used as a token there)
PROMPT_TEXTS = ["the people say", "keep children away .", "help", "many options vary widely ?"]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tokenizers_():
    return models.load_tokenizer(models.TINY_TOKENIZER)


@pytest.fixture(scope="module")
def hf_tok(tokenizers_):
    return tokenizers_[0]


@pytest.fixture(scope="module")
def policy(hf_tok):
    return models.load_causal_lm("tiny", vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id, seed=0)


@pytest.fixture(scope="module")
def peaked_policy(hf_tok):
    """A tiny LM whose next-token distribution is far from uniform (scaled output layer)."""
    model = models.load_causal_lm("tiny", vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id, seed=1)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model.eval()


@pytest.fixture(scope="module")
def reward_model(hf_tok):
    return models.load_reward_model("tiny", vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id, seed=0)


def prompt_ids_of(hf_tok, texts=PROMPT_TEXTS) -> list[np.ndarray]:
    out = [np.asarray(hf_tok(t).input_ids, dtype=np.int64) for t in texts]
    assert all(hf_tok.unk_token_id not in p for p in out)  # the texts are in the vocabulary
    return out


def with_logit_bias(model: torch.nn.Module, bias: dict[int, float]) -> torch.nn.Module:
    """A copy of a causal LM whose output layer adds `bias` to the given tokens' logits at every step."""
    model = copy.deepcopy(model)
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        for token, value in bias.items():
            head.bias[token] = value
    model.lm_head = head
    return model


# ------------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize("kwargs, message", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": -3}, "max_new_tokens"),
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": float("nan")}, "top_p"),
    ({"stop_token_ids": ()}, "stop_token_ids"),
])
def test_generation_settings_reject_bad_values(kwargs, message):
    base = {"max_new_tokens": 4, "temperature": 1.0, "top_p": 1.0, "stop_token_ids": (1,)}
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**{**base, **kwargs})


def test_generation_settings_accept_edges():
    s = GenerationSettings(max_new_tokens=1, temperature=1e-3, top_p=1.0, stop_token_ids=(1, 4))
    assert (s.max_new_tokens, s.top_p, s.stop_token_ids) == (1, 1.0, (1, 4))


# ------------------------------------------------------------------------------------------- cut_at_stop


def test_cut_at_stop_includes_the_first_stop_token():
    generated = torch.tensor([[5, 6, 1, 8, 1],   # stop at 2 -> length 3
                              [5, 6, 8, 9, 10],  # no stop -> full length, not ended
                              [1, 5, 6, 7, 8],   # stop at position 0 -> length 1
                              [5, 6, 7, 8, 1]])  # stop as the last token -> length 5, ended
    lengths, ended = cut_at_stop(generated, [1])
    assert lengths.tolist() == [3, 5, 1, 5]
    assert ended.tolist() == [True, False, True, True]
    assert lengths.dtype == torch.long and ended.dtype == torch.bool


def test_cut_at_stop_with_several_stop_ids():
    generated = torch.tensor([[5, 4, 6, 1],
                              [5, 6, 1, 4],
                              [5, 6, 7, 8],
                              [4, 1, 1, 1]])
    lengths, ended = cut_at_stop(generated, (1, 4))
    assert lengths.tolist() == [2, 3, 4, 1]
    assert ended.tolist() == [True, True, False, True]
    lengths, ended = cut_at_stop(generated, (4,))  # only 4 stops
    assert lengths.tolist() == [2, 4, 4, 1]
    assert ended.tolist() == [True, True, False, True]


# ------------------------------------------------------------------------------------ assemble / Rollout


def layout_example():
    prompts = [np.array([11, 12, 13]), np.array([21]), np.array([31, 32])]
    responses = torch.tensor([[41, 1, 99, 99],
                              [51, 52, 53, 54],
                              [1, 99, 99, 99]])
    lengths = torch.tensor([2, 4, 1])
    ended = torch.tensor([True, False, True])
    return prompts, responses, lengths, ended


def test_assemble_right_padded_layout_is_exact():
    prompts, responses, lengths, ended = layout_example()
    r = assemble(prompts, responses, lengths, ended, PAD, prompts=["a", "b", "c"])
    assert r.input_ids.tolist() == [[11, 12, 13, 41, 1],
                                    [21, 51, 52, 53, 54],
                                    [31, 32, 1, PAD, PAD]]
    assert r.attention_mask.tolist() == [[1, 1, 1, 1, 1],
                                         [1, 1, 1, 1, 1],
                                         [1, 1, 1, 0, 0]]
    assert r.prompt_lengths.tolist() == [3, 1, 2]
    assert r.response_lengths.tolist() == [2, 4, 1]
    assert r.ended.tolist() == [True, False, True]
    assert r.prompts == ["a", "b", "c"] and len(r) == 3
    assert r.input_ids.dtype == r.attention_mask.dtype == torch.long
    assert r.responses() == [[41, 1], [51, 52, 53, 54], [1]]


def test_response_index_points_at_response_tokens_and_clamps():
    prompts, responses, lengths, ended = layout_example()
    r = assemble(prompts, responses, lengths, ended, PAD)
    positions, mask = r.response_index()
    assert positions.tolist() == [[3, 4, 4, 4],
                                  [1, 2, 3, 4],
                                  [2, 2, 2, 2]]
    assert mask.tolist() == [[True, True, False, False],
                             [True, True, True, True],
                             [True, False, False, False]]
    # Every position lies in its row's tokens; the masked ones gather the responses.
    assert bool((r.attention_mask.gather(1, positions) == 1).all())
    gathered = r.input_ids.gather(1, positions)
    assert [gathered[b][mask[b]].tolist() for b in range(len(r))] == r.responses()
    # The mask is a ragged prefix: row b has response_lengths[b] leading trues.
    assert mask.sum(1).tolist() == r.response_lengths.tolist()


def test_responses_round_trip_through_assemble():
    rng = np.random.default_rng(0)
    prompts = [rng.integers(10, 100, size=n) for n in (5, 1, 3, 8)]
    lengths = torch.tensor([3, 6, 1, 2])
    responses = torch.as_tensor(rng.integers(10, 100, size=(4, 6)))
    r = assemble(prompts, responses, lengths, torch.zeros(4, dtype=torch.bool), PAD)
    assert r.responses() == [responses[b, :n].tolist() for b, n in enumerate(lengths.tolist())]
    for b, p in enumerate(prompts):
        assert r.input_ids[b, :len(p)].tolist() == p.tolist()
        total = len(p) + int(lengths[b])
        assert r.attention_mask[b].tolist() == [1] * total + [0] * (r.input_ids.shape[1] - total)
        assert r.input_ids[b, total:].tolist() == [PAD] * (r.input_ids.shape[1] - total)


def test_select_trims_padding_and_keeps_prompt_texts_in_order():
    prompts, responses, lengths, ended = layout_example()
    r = assemble(prompts, responses, lengths, ended, PAD, prompts=["a", "b", "c"])
    for rows in ([2, 0], np.array([2, 0]), torch.tensor([2, 0])):
        s = r.select(rows)
        assert s.input_ids.tolist() == [[31, 32, 1, PAD, PAD], [11, 12, 13, 41, 1]]  # widest of rows: 5
        assert s.prompts == ["c", "a"]
        assert s.prompt_lengths.tolist() == [2, 3] and s.response_lengths.tolist() == [1, 2]
        assert s.ended.tolist() == [True, True]
    s = r.select([2])
    assert s.input_ids.tolist() == [[31, 32, 1]] and s.attention_mask.tolist() == [[1, 1, 1]]
    assert s.prompts == ["c"] and s.responses() == [[1]]
    s = r.select([1, 1])
    assert s.responses() == [[51, 52, 53, 54]] * 2 and s.prompts == ["b", "b"]
    assert assemble(prompts, responses, lengths, ended, PAD).select([0]).prompts is None
    for mask in ([True, False, True], np.array([True, False, True]), torch.tensor([True, False, True])):
        assert r.select(mask).prompts == ["a", "c"]  # a boolean mask picks rows, it is not read as 1/0 indices


def test_concat_rollouts_pads_to_the_widest_and_keeps_rows():
    prompts, responses, lengths, ended = layout_example()
    a = assemble(prompts, responses, lengths, ended, PAD, prompts=["a", "b", "c"]).select([2])  # width 3
    b = assemble(prompts, responses, lengths, ended, PAD, prompts=["a", "b", "c"]).select([0, 1])  # width 5
    c = concat_rollouts([a, b], PAD)
    assert c.input_ids.tolist() == [[31, 32, 1, PAD, PAD],
                                    [11, 12, 13, 41, 1],
                                    [21, 51, 52, 53, 54]]
    assert c.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1] * 5, [1] * 5]
    assert c.prompt_lengths.tolist() == [2, 3, 1] and c.response_lengths.tolist() == [1, 2, 4]
    assert c.ended.tolist() == [True, True, False] and c.prompts == ["c", "a", "b"]
    assert c.responses() == a.responses() + b.responses()
    # Texts only when every part has them.
    assert concat_rollouts([a, Rollout(b.input_ids, b.attention_mask, b.prompt_lengths, b.response_lengths,
                                       b.ended)], PAD).prompts is None


def test_left_padded_layout_is_exact():
    ids, mask = left_padded([np.array([5, 6, 7]), np.array([8]), [9, 10]], PAD, "cpu")
    assert ids.tolist() == [[5, 6, 7], [PAD, PAD, 8], [PAD, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert ids.dtype == mask.dtype == torch.long


# ------------------------------------------------------------------------------------------------ generate


def test_generate_is_reproducible_for_a_seed(policy, hf_tok):
    prompts = prompt_ids_of(hf_tok)
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, top_p=0.95, stop_token_ids=(hf_tok.eos_token_id,))
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        runs.append(generate(policy, prompts, settings, pad_id=hf_tok.pad_token_id))
    assert torch.equal(runs[0].input_ids, runs[1].input_ids)
    assert torch.equal(runs[0].response_lengths, runs[1].response_lengths)
    assert runs[0].input_ids.shape != runs[2].input_ids.shape or not torch.equal(runs[0].input_ids, runs[2].input_ids)


def test_generate_cuts_at_the_stop_token_and_keeps_the_prompts(policy, hf_tok):
    stop, max_new = 40, 10
    model = with_logit_bias(policy, {stop: 3.0})  # about 10% per step: some rows end, some run out
    texts = [PROMPT_TEXTS[b % len(PROMPT_TEXTS)] for b in range(48)]
    prompts = prompt_ids_of(hf_tok, texts)
    settings = GenerationSettings(max_new_tokens=max_new, temperature=1.0, top_p=1.0, stop_token_ids=(stop,))
    torch.manual_seed(0)
    r = generate(model, prompts, settings, pad_id=hf_tok.pad_token_id, prompts=texts)
    assert r.prompts == texts and len(r) == len(prompts)
    assert r.prompt_lengths.tolist() == [len(p) for p in prompts]
    width = r.input_ids.shape[1]
    for b, (p, response) in enumerate(zip(prompts, r.responses())):
        assert r.input_ids[b, :len(p)].tolist() == p.tolist()
        if r.ended[b]:
            assert response[-1] == stop and stop not in response[:-1]
        else:
            assert len(response) == max_new and stop not in response
        total = len(p) + len(response)
        assert r.attention_mask[b].tolist() == [1] * total + [0] * (width - total)
        assert r.input_ids[b, total:].tolist() == [hf_tok.pad_token_id] * (width - total)
    assert 0 < int(r.ended.sum()) < len(r)  # both kinds occurred
    assert width == int((r.prompt_lengths + r.response_lengths).max())


def test_generate_ends_where_the_model_emits_a_stop_token(policy, hf_tok):
    prompts = prompt_ids_of(hf_tok)
    model = with_logit_bias(policy, {40: 60.0})  # token 40 with certainty
    settings = GenerationSettings(max_new_tokens=12, temperature=1.0, top_p=1.0, stop_token_ids=(40,))
    r = generate(model, prompts, settings, pad_id=hf_tok.pad_token_id)
    assert r.responses() == [[40]] * len(prompts) and r.ended.all()
    assert r.response_lengths.tolist() == [1] * len(prompts)

    # Two stop ids, both certain-ish: each response is one of them, every row ended.
    model = with_logit_bias(policy, {40: 60.0, 50: 60.0})
    settings = GenerationSettings(max_new_tokens=12, temperature=1.0, top_p=1.0, stop_token_ids=(50, 40))
    torch.manual_seed(0)
    r = generate(model, prompt_ids_of(hf_tok, PROMPT_TEXTS * 8), settings, pad_id=hf_tok.pad_token_id)
    assert {tuple(x) for x in r.responses()} == {(40,), (50,)} and r.ended.all()

    # The certain token is not a stop token: every response runs to max_new_tokens, none ended.
    settings = GenerationSettings(max_new_tokens=5, temperature=1.0, top_p=1.0, stop_token_ids=(hf_tok.eos_token_id,))
    r = generate(with_logit_bias(policy, {40: 60.0}), prompts, settings, pad_id=hf_tok.pad_token_id)
    assert r.responses() == [[40] * 5] * len(prompts) and not r.ended.any()


def test_generate_restores_the_training_mode(policy, hf_tok):
    model = copy.deepcopy(policy)
    settings = GenerationSettings(max_new_tokens=2, temperature=1.0, top_p=1.0, stop_token_ids=(1,))
    prompts = prompt_ids_of(hf_tok)[:2]
    seen = []
    original = model.generate

    def spy(**kwargs):
        seen.append(model.training)
        return original(**kwargs)

    model.generate = spy
    model.train()
    generate(model, prompts, settings, pad_id=hf_tok.pad_token_id)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    generate(model, prompts, settings, pad_id=hf_tok.pad_token_id)
    assert not model.training
    assert seen == [False, False]  # sampling ran in eval mode

    def boom(**kwargs):
        raise RuntimeError("boom")

    model.generate = boom
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        generate(model, prompts, settings, pad_id=hf_tok.pad_token_id)
    assert model.training


def test_generate_rejects_empty_prompts(policy, hf_tok):
    settings = GenerationSettings(max_new_tokens=2, temperature=1.0, top_p=1.0, stop_token_ids=(1,))
    with pytest.raises(ValueError):
        generate(policy, [], settings, pad_id=hf_tok.pad_token_id)
    with pytest.raises(ValueError):
        generate(policy, [np.array([0, 10]), np.zeros(0, dtype=np.int64)], settings, pad_id=hf_tok.pad_token_id)


def next_token_probs(model, prompt: np.ndarray, temperature: float, top_p: float, pad_id: int | None = None
                     ) -> np.ndarray:
    """The sampling distribution of the next token: softmax(logits / T) without the pad token (generate never
    samples it), restricted to the top-p nucleus the way transformers' TopPLogitsWarper builds it (a token is
    kept when the probability of the tokens more likely than it is below top_p), renormalized."""
    with torch.no_grad():
        logits = model(input_ids=torch.as_tensor(prompt)[None]).logits[0, -1].double()
    if pad_id is not None:
        logits[pad_id] = -math.inf
    probs = torch.softmax(logits / temperature, -1).numpy()
    if top_p < 1:
        order = np.argsort(-probs, kind="stable")
        before = np.cumsum(probs[order]) - probs[order]  # mass of the more likely tokens
        assert np.abs(before - top_p).min() > 1e-4, "a token sits at the nucleus boundary: pick another top_p"
        keep = np.zeros_like(probs, dtype=bool)
        keep[order[before < top_p]] = True
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum()
    return probs


def chi_square_rejects(counts: np.ndarray, probs: np.ndarray, z: float = 4.0) -> bool:
    """Pearson's test of counts against probs (bins expecting < 5 pooled), at the upper z-sigma quantile
    of chi-square (Wilson-Hilferty); any count where probs is 0 rejects."""
    if counts[probs == 0].sum() > 0:
        return True
    n = counts.sum()
    expected = probs * n
    small = (expected < 5) & (probs > 0)
    obs = np.concatenate([counts[~small & (probs > 0)], [counts[small].sum()]])
    exp = np.concatenate([expected[~small & (probs > 0)], [expected[small].sum()]])
    if exp[-1] < 5:  # too little mass to pool into a bin of its own: fold it into the largest bin
        big = int(np.argmax(exp[:-1]))
        obs[big] += obs[-1]
        exp[big] += exp[-1]
        obs, exp = obs[:-1], exp[:-1]
    stat = float(((obs - exp) ** 2 / exp).sum())
    k = len(obs) - 1
    threshold = k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3
    return stat > threshold


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.5, 1.0), (1.0, 0.6), (0.8, 0.85)])
def test_generate_samples_the_models_distribution(peaked_policy, hf_tok, temperature, top_p):
    """max_new_tokens=1 over many copies of two prompts of different lengths (so one of them is left-padded
    in the batch): the first tokens follow the model's tempered, nucleus-restricted next-token distribution
    of the unpadded prompt, and never fall outside the nucleus."""
    n = 2000
    prompts = prompt_ids_of(hf_tok, ["many options vary widely ?", "help"])
    settings = GenerationSettings(max_new_tokens=1, temperature=temperature, top_p=top_p,
                                  stop_token_ids=(hf_tok.eos_token_id,))
    torch.manual_seed(0)
    r = generate(peaked_policy, [prompts[0]] * n + [prompts[1]] * n, settings, pad_id=hf_tok.pad_token_id)
    assert r.response_lengths.tolist() == [1] * (2 * n)
    first = torch.tensor([x[0] for x in r.responses()]).numpy()
    vocab = len(hf_tok)
    for k, prompt in enumerate(prompts):
        counts = np.bincount(first[k * n:(k + 1) * n], minlength=vocab).astype(np.float64)
        probs = next_token_probs(peaked_policy, prompt, temperature, top_p, hf_tok.pad_token_id)
        assert counts[probs == 0].sum() == 0, "sampled outside the nucleus (or the pad token)"
        assert (probs > 0).sum() > 1
        assert not chi_square_rejects(counts, probs)
        # The test has power: a different temperature (or no nucleus) is rejected.
        assert chi_square_rejects(counts, next_token_probs(peaked_policy, prompt, temperature * 2, 1.0,
                                                           hf_tok.pad_token_id))
        assert np.abs(counts / n - probs).max() < 0.05


# ------------------------------------------------------------------------------------------ reward scoring


def scoring_rollout(hf_tok, stop_ids=(1,)) -> Rollout:
    """A hand-made rollout over PROMPT_TEXTS: ended / not ended, a bare stop token, a stop other than EOS,
    an <unk> inside the response."""
    v = hf_tok.get_vocab()
    eos = hf_tok.eos_token_id
    words = lambda text: [v[w] for w in text.split()]  # noqa: E731
    rows = [words("yes it depends") + [eos],
            words("many people differ somewhat"),
            [eos],
            words("read the label ."),  # ended when "." is a stop token, else it ran out (all 4 tokens)
            words("ask") + [hf_tok.unk_token_id] + words("here") + [eos]]
    texts = PROMPT_TEXTS + ["help"]
    prompts = prompt_ids_of(hf_tok, texts)
    width = max(map(len, rows))
    responses = torch.full((len(rows), width), 99, dtype=torch.long)
    for b, row in enumerate(rows):
        responses[b, :len(row)] = torch.tensor(row)
    lengths, ended = cut_at_stop(responses, stop_ids)
    assert lengths.tolist() == [len(x) for x in rows]
    return assemble(prompts, responses, lengths, ended, hf_tok.pad_token_id, prompts=texts)


def rm_forward(model, ids) -> float:
    with torch.no_grad():
        return float(model(input_ids=torch.as_tensor(np.asarray(ids, dtype=np.int64))[None]).logits[0, 0])


def test_scorer_with_the_same_tokenizer_scores_the_token_ids(tokenizers_, reward_model):
    hf_tok, tok = tokenizers_
    scorer = RewardScorer(reward_model, hf_tok, tok, policy_tokenizer=hf_tok)
    assert scorer.same_tokenizer and not scorer.model.training
    assert not any(p.requires_grad for p in scorer.model.parameters())
    rollout = scoring_rollout(hf_tok)
    ids, mask = scorer.encode(rollout)
    assert torch.equal(ids, rollout.input_ids) and torch.equal(mask, rollout.attention_mask)
    scores = scorer.score(rollout)
    assert scores.dtype == torch.float32 and scores.shape == (len(rollout),)
    lengths = (rollout.prompt_lengths + rollout.response_lengths).tolist()
    expected = [rm_forward(reward_model, rollout.input_ids[b, :n].tolist()) for b, n in enumerate(lengths)]
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-5, rtol=0)
    assert len(set(np.round(expected, 6))) == len(expected)  # the rows score differently

    # Padding changes nothing: wider padding, and junk (not the pad id) in the padded positions.
    wide = concat_rollouts([rollout, assemble([np.array([0] * 20)], torch.tensor([[1]]), torch.tensor([1]),
                                              torch.tensor([True]), hf_tok.pad_token_id, prompts=["x"])],
                           hf_tok.pad_token_id)
    assert wide.input_ids.shape[1] > rollout.input_ids.shape[1]
    wide.input_ids = wide.input_ids.masked_fill(wide.attention_mask == 0, 42)
    np.testing.assert_allclose(scorer.score(wide)[:len(rollout)].numpy(), expected, atol=1e-5, rtol=0)
    for b in range(len(rollout)):
        np.testing.assert_allclose(float(scorer.score(rollout.select([b]))[0]), expected[b], atol=1e-5, rtol=0)


ALT_SPECIALS = ("<pad>", "<unk>", "<eos>", "<bos>")


@pytest.fixture(scope="module")
def alt_reward_dir(tmp_path_factory, hf_tok):
    """A tiny reward model saved with a different word-level tokenizer: the policy's words in another id
    order (specials too), plus one extra word."""
    words = [w for w, _ in sorted(hf_tok.get_vocab().items(), key=lambda kv: kv[1])
             if w not in ("<bos>", "<eos>", "<pad>", "<unk>")]
    order = np.random.default_rng(0).permutation(len(words))
    vocab = {w: i for i, w in enumerate([*ALT_SPECIALS, *(words[i] for i in order), "zebra"])}
    backend = HFBackend(tk_models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(list(ALT_SPECIALS))
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])])
    root = tmp_path_factory.mktemp("alt_rm")
    backend.save(str(root / "tokenizer.json"))
    rm_hf, _ = models.load_tokenizer(root / "tokenizer.json")
    assert (rm_hf.bos_token, rm_hf.eos_token, rm_hf.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert rm_hf.get_vocab() != hf_tok.get_vocab()
    model = models.load_reward_model("tiny", vocab_size=len(rm_hf), pad_token_id=rm_hf.pad_token_id, seed=2)
    models.save_pretrained(model, root / "model", tokenizer=rm_hf)
    return root / "model"


def test_scorer_with_another_tokenizer_retokenizes_the_text(alt_reward_dir, hf_tok):
    from transformers import AutoModelForSequenceClassification

    scorer = RewardScorer.load(str(alt_reward_dir), policy_tokenizer=hf_tok)
    assert not scorer.same_tokenizer
    rm_tok = models.load_tokenizer(alt_reward_dir)[0]
    rm_model = AutoModelForSequenceClassification.from_pretrained(alt_reward_dir).eval()
    stop_ids = (hf_tok.eos_token_id, hf_tok.get_vocab()["."])
    rollout = scoring_rollout(hf_tok, stop_ids)
    ids, mask = scorer.encode(rollout)

    expected_rows = []
    for b, response in enumerate(rollout.responses()):
        ended = bool(rollout.ended[b])
        text = hf_tok.decode(response[:-1] if ended else response, skip_special_tokens=False)
        row = (rm_tok(rollout.prompts[b]).input_ids + rm_tok(text, add_special_tokens=False).input_ids
               + ([rm_tok.eos_token_id] if ended else []))
        expected_rows.append(row)
    # Spelled out for the first row: <bos> the people say | yes it depends | <eos>, in the RM's ids.
    v = rm_tok.get_vocab()
    assert expected_rows[0] == [v[w] for w in "<bos> the people say yes it depends <eos>".split()]
    assert expected_rows[2] == [v[w] for w in "<bos> help <eos>".split()]  # the bare stop: empty text
    assert expected_rows[3][-1] == v["<eos>"] and v["."] not in expected_rows[3]  # "." stopped it
    assert v["<unk>"] in expected_rows[4]
    assert expected_rows[1][-1] != v["<eos>"]  # did not end: no EOS
    for b, row in enumerate(expected_rows):
        n = len(row)
        assert ids[b, :n].tolist() == row
        assert mask[b].tolist() == [1] * n + [0] * (ids.shape[1] - n)
        assert ids[b, n:].tolist() == [rm_tok.pad_token_id] * (ids.shape[1] - n)
    assert ids.shape[1] == max(map(len, expected_rows))

    scores = scorer.score(rollout)
    expected = [rm_forward(rm_model, row) for row in expected_rows]
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-5, rtol=0)
    # Scoring the policy's ids as they are would give something else.
    assert not np.allclose(expected, [rm_forward(rm_model, r) for r in
                                      [rollout.input_ids[b, :n].tolist() for b, n in
                                       enumerate((rollout.prompt_lengths + rollout.response_lengths).tolist())]],
                           atol=1e-4)

    no_texts = Rollout(rollout.input_ids, rollout.attention_mask, rollout.prompt_lengths, rollout.response_lengths,
                       rollout.ended)
    with pytest.raises(ValueError, match="prompt"):
        scorer.score(no_texts)
    no_policy = RewardScorer.load(str(alt_reward_dir))
    assert not no_policy.same_tokenizer
    with pytest.raises(ValueError):
        no_policy.encode(rollout)


def test_scorer_loads_a_saved_reward_model(tmp_path, tokenizers_, reward_model):
    hf_tok, tok = tokenizers_
    models.save_pretrained(reward_model, tmp_path / "rm", tokenizer=hf_tok)
    scorer = RewardScorer.load(str(tmp_path / "rm"), policy_tokenizer=hf_tok)
    assert scorer.same_tokenizer and scorer.pad_id == hf_tok.pad_token_id and scorer.eos_id == hf_tok.eos_token_id
    assert not scorer.model.training and not any(p.requires_grad for p in scorer.model.parameters())
    rollout = scoring_rollout(hf_tok)
    expected = RewardScorer(reward_model, hf_tok, tok, policy_tokenizer=hf_tok).score(rollout)
    np.testing.assert_allclose(scorer.score(rollout).numpy(), expected.numpy(), atol=1e-5, rtol=0)
