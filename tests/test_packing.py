"""Packed rows below the recipes: guard's "guard_sdpa" attention keeps the sequences of a packed row apart (the
hidden states are the padded rows', and transformers' own packed-sequence detection for "sdpa" agrees), which
models can pack and why not, the two batch layouts, and the token-budget schedule (--tokens-per-step): every
pair at most once per epoch, bins within their budget, the same batches for the same (seed, epoch), each rank
its own bin. Tiny random models only.

    TRITON_INTERPRET=1 python -m pytest tests/test_packing.py -q
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from guard import attention, data as gdata, models
from guard.config import ConfigError
from guard.train import batches

LENGTHS = [5, 9, 1, 7, 3]  # a one-token sequence among them


@pytest.fixture(scope="module")
def tokenizers_():
    return models.load_tokenizer(models.TINY_TOKENIZER)


def tiny_causal_lm(hf, **kwargs):
    return models.load_causal_lm("tiny", vocab_size=len(hf), pad_token_id=hf.pad_token_id, **kwargs).eval()


def packed_and_padded(lengths, vocab, seed=0):
    """The same random sequences as one packed row (guard.attention.packed_inputs) and as right-padded rows."""
    gen = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(3, vocab, (n,), generator=gen) for n in lengths]
    position_ids, cu = gdata.packed_positions(np.asarray(lengths))
    packed = attention.packed_inputs(torch.cat(seqs)[None], torch.from_numpy(position_ids)[None],
                                     torch.from_numpy(cu), max(lengths))
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    return packed, {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def test_guard_sdpa_gives_each_packed_sequence_its_padded_hidden_states(tokenizers_):
    hf, _ = tokenizers_
    model = tiny_causal_lm(hf, lora=models.LoraSettings(r=4, dropout=0.0))
    assert model.config._attn_implementation == "guard_sdpa"
    backbone = model.get_base_model().model
    packed, padded = packed_and_padded(LENGTHS, len(hf))
    got = backbone(**packed, use_cache=False).last_hidden_state[0]
    want = backbone(**padded, use_cache=False).last_hidden_state[padded["attention_mask"].bool()]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    # The spans from position_ids alone (no cu_seqlens), and transformers' "sdpa" with its packed-sequence
    # detection (the block-diagonal mask guard.attention explains it does not use) give the same.
    by_positions = backbone(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                            use_cache=False).last_hidden_state[0]
    torch.testing.assert_close(by_positions, want, rtol=1e-5, atol=1e-5)
    model.get_base_model().set_attn_implementation("sdpa")
    detected = backbone(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                        use_cache=False).last_hidden_state[0]
    torch.testing.assert_close(detected, want, rtol=1e-5, atol=1e-5)

    # A control that shows the test can fail: attention across the whole row (one sequence of restarting
    # positions) changes every sequence after the first.
    across = backbone(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                      attention_mask=torch.ones_like(packed["input_ids"]), use_cache=False).last_hidden_state[0]
    first = LENGTHS[0]
    torch.testing.assert_close(across[:first], want[:first], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(across[first:], want[first:], atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_guard_sdpa_gradients_match_the_padded_rows(tokenizers_, dtype):
    """In float64 the two layouts give the same gradients to round-off; in float32 to float32's round-off
    of each tensor's scale (the layouts sum in different orders: 1 element in 2048 was 4e-6 apart on an AMD
    EPYC, where an absolute 1e-6 bar held on a Xeon)."""
    hf, _ = tokenizers_
    packed, padded = packed_and_padded([4, 11, 6], len(hf), seed=2)
    grads = []
    for inputs, pick in ((packed, lambda h: h[0]), (padded, lambda h: h[padded["attention_mask"].bool()])):
        model = tiny_causal_lm(hf).to(dtype)
        hidden = pick(model.model(**inputs, use_cache=False).last_hidden_state)
        (hidden * torch.linspace(-1, 1, hidden.numel(), dtype=dtype).view_as(hidden)).sum().backward()
        grads.append({k: p.grad for k, p in model.named_parameters() if p.grad is not None})  # not the LM head
    assert set(grads[0]) == set(grads[1]) and len(grads[0]) > 10
    rtol, scale_tol = (1e-10, 1e-12) if dtype == torch.float64 else (1e-4, 1e-5)
    for k in grads[0]:
        assert grads[1][k].abs().max() > 0, k  # every gradient of the backbone is live
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=rtol, atol=scale_tol * grads[1][k].abs().max().item(),
                                   msg=lambda m, k=k: f"{k}: {m}")


def test_a_saved_model_does_not_name_guards_attention(tokenizers_, tmp_path):
    hf, _ = tokenizers_
    models.save_pretrained(tiny_causal_lm(hf), tmp_path / "m")
    assert "guard_sdpa" not in (tmp_path / "m" / "config.json").read_text()  # it loads anywhere transformers runs


def test_which_models_can_pack_and_why_not(tokenizers_):
    hf, _ = tokenizers_
    rm = models.load_reward_model("tiny", vocab_size=len(hf), pad_token_id=hf.pad_token_id)
    assert models.packing_unsupported(rm, head="score") is None
    lm = tiny_causal_lm(hf, lora=models.LoraSettings(r=4))
    assert models.packing_unsupported(lm) is None
    assert "has no `score` head" in models.packing_unsupported(lm, head="score")
    lm.get_base_model().set_attn_implementation("eager")
    assert "'eager' attends across a packed row's sequences" in models.packing_unsupported(lm)
    rm._supports_attention_backend = False
    assert "does not run its attention through transformers' attention interface" in models.packing_unsupported(rm)


def test_decide_packing_follows_the_option_and_says_why_not(tokenizers_, capsys):
    hf, _ = tokenizers_
    main = SimpleNamespace(is_main=True)
    model = tiny_causal_lm(hf)
    assert batches.decide_packing(None, model, main) is True
    assert batches.decide_packing(True, model, main) is True
    assert batches.decide_packing(False, model, main) is False
    model.set_attn_implementation("eager")
    assert batches.decide_packing(None, model, main) is False
    assert "packing: off, its attention implementation 'eager'" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--packing: its attention implementation 'eager' .* --no-packing"):
        batches.decide_packing(True, model, main)


def test_the_two_layouts_hold_the_same_tokens(tokenizers_):
    hf, tok = tokenizers_
    pairs = gdata.encode_pairs(tok, ["a b c", "d", "e f"], ["x y", "z z z z", "w"], ["q", "r s", "t u v"],
                               max_length=None, eos_token_id=hf.eos_token_id)
    rows = np.array([2, 0])
    padded = batches.Layout(False, hf.pad_token_id, torch.device("cpu")).pairs(pairs, rows)
    packed = batches.Layout(True, hf.pad_token_id, torch.device("cpu")).pairs(pairs, rows)
    assert set(padded) == {"input_ids", "attention_mask", "labels"}
    assert set(packed) == {"input_ids", "position_ids", "labels", "cu_seqlens", "max_seqlen"}
    mask = padded["attention_mask"].bool()
    assert torch.equal(packed["input_ids"][0], padded["input_ids"][mask])
    assert packed["cu_seqlens"].tolist() == [0, *np.cumsum(mask.sum(1).tolist()).tolist()]
    assert packed["max_seqlen"] == mask.sum(1).max()
    # The labels each hidden state predicts: the same scored tokens in both, none across two sequences.
    shifted_padded = batches.shifted_labels(padded)
    shifted_packed = batches.shifted_labels(packed)
    assert shifted_packed.shape == packed["input_ids"].shape[1:]
    scored = shifted_padded[shifted_padded != -100]
    assert torch.equal(shifted_packed[shifted_packed != -100], scored) and len(scored) > 0
    assert (shifted_packed[packed["cu_seqlens"][1:] - 1] == -100).all()  # each sequence's last position


# ----------------------------------------------------------------------------------------------------
# --tokens-per-step


class Pairs:
    """A PairData stand-in: pairs of the given costs (chosen + rejected tokens)."""

    def __init__(self, costs):
        chosen = costs // 2
        self.encoded = SimpleNamespace(lengths=np.stack([chosen, costs - chosen], axis=1))

    def __len__(self):
        return len(self.encoded.lengths)


def token_cfg(tokens, **kw):
    return SimpleNamespace(tokens_per_step=tokens, seed=kw.get("seed", 0), max_steps=kw.get("max_steps"),
                           epochs=kw.get("epochs", 2), warmup_ratio=0.1, batch_size=8)


HH_LIKE = np.random.default_rng(0).integers(40, 1800, size=300)  # pair costs, prompt twice + two responses


@pytest.mark.parametrize("world", [1, 3])
def test_token_schedule_fills_budgets_with_whole_pairs_once_per_epoch(world):
    train = Pairs(HH_LIKE)
    schedule = batches.plan_steps(token_cfg(8192), train, SimpleNamespace(world_size=world))
    budget = 8192 // world
    assert schedule.budget == budget and schedule.total_steps == 2 * schedule.steps_per_epoch
    for epoch in range(2):
        seen = []
        for k in range(schedule.steps_per_epoch):
            step = epoch * schedule.steps_per_epoch + k
            parts = schedule.parts(step)
            assert len(parts) == world
            for rank, part in enumerate(parts):
                assert HH_LIKE[part].sum() <= budget
                ranked = schedule.local_rows(step, None, SimpleNamespace(rank=rank))
                assert np.array_equal(ranked, part)
                seen.extend(part.tolist())
        assert len(seen) == len(set(seen))  # a pair at most once per epoch
        fill = HH_LIKE[seen].sum() / (schedule.steps_per_epoch * world * budget)
        assert fill > 0.97, fill  # best fit leaves little of a budget empty
        assert len(seen) > 0.95 * len(HH_LIKE)  # only the bins of an unfinished step wait


def test_token_schedule_is_a_function_of_seed_and_epoch_and_resumes_exactly():
    train = Pairs(HH_LIKE)
    dist = SimpleNamespace(world_size=2, rank=0)
    one = batches.plan_steps(token_cfg(6000), train, dist)
    two = batches.plan_steps(token_cfg(6000), train, dist)
    full = [(s, rows.tolist(), lr) for s, rows, lr in one.steps(0, 0, 1e-3, "cosine")]
    resumed = [(s, rows.tolist(), lr) for s, rows, lr in two.steps(5, 0, 1e-3, "cosine")]
    assert resumed == full[5:]
    per_epoch = one.steps_per_epoch
    assert [r for _, r, _ in full[:per_epoch]] != [r for _, r, _ in full[per_epoch:]]  # epochs differ in order
    other = batches.plan_steps(token_cfg(6000, seed=1), train, dist)
    assert [r.tolist() for _, r, _ in other.steps(0, 1, 1e-3, "cosine")] != [r for _, r, _ in full]
    with pytest.raises(ValueError, match="planned for seed 0"):
        next(one.steps(0, 1, 1e-3, "cosine"))


def test_token_budget_errors_name_the_longest_pair_and_the_shortfall():
    train = Pairs(np.array([100, 700, 300]))
    with pytest.raises(ConfigError, match=r"--tokens-per-step 1000 gives each of the 2 processes 500 tokens, fewer "
                                          r"than the 700 tokens of the longest training pair .* at least 1400"):
        batches.plan_steps(token_cfg(1000), train, SimpleNamespace(world_size=2))
    with pytest.raises(ConfigError, match=r"the 3 training pairs \(1100 tokens\) do not fill one step's 4 bins"):
        batches.plan_steps(token_cfg(4000), train, SimpleNamespace(world_size=4))
    none = SimpleNamespace(tokens_per_step=None, batch_size=2, max_steps=None, epochs=1, warmup_ratio=0.0)
    assert batches.plan_steps(none, train, SimpleNamespace(world_size=1)).steps_per_epoch == 1  # --batch-size
