"""Packed batches in the training recipes give what padded batches give: one step of the reward model (rewards,
BT loss, every parameter's gradient), of the preference recipe (log-probs, implicit rewards, loss, gradients;
LoRA against the adapter disabled and full fine-tuning against a frozen copy) and of PPO's passes over rollouts
(log-probs, entropies, values, features, gradients), for equal lengths, very unequal lengths and a single pair,
on the tiny model in float32 on the CPU. Then whole runs: --tokens-per-step plans and logs its steps, a run
killed after a checkpoint and resumed logs the uninterrupted run's metrics byte for byte in the padded layout and
under a token budget, two gloo processes share a token budget, and --packing where the model cannot pack ends in
one error line while the default falls back to padding and says why.

    TRITON_INTERPRET=1 python -m pytest tests/test_train_packing.py -q
"""

import numpy as np
import pytest
import torch

from guard import data as gdata, jsonfiles, models, ops
from guard.rollout import assemble
from guard.train import batches, options, ppo, pref, rm
from guard.train.__main__ import main as train_main

from pref_data import FAST as PREF_FAST
from recipe_runs import kill_after_checkpoint, run_recipe, run_torchrun

CPU = torch.device("cpu")
#: (prompt, chosen response, rejected response) lengths of each pair
LENGTH_MIXES = {
    "equal": [(8, 8, 8)] * 4,
    "very unequal": [(2, 1, 60), (50, 3, 1), (5, 10, 12), (1, 1, 1)],
    "one pair": [(6, 4, 9)],
}


@pytest.fixture(scope="module")
def hf_tok():
    return models.load_tokenizer(models.TINY_TOKENIZER)[0]


def encoded_pairs(spec, vocab: int, seed: int = 0) -> gdata.EncodedPairs:
    """Pairs of exactly the given lengths with random token ids (never the pad id), each pair's two sequences
    sharing their prompt."""
    gen = np.random.default_rng(seed)
    chosen, rejected = [], []
    for prompt, c, r in spec:
        head = gen.integers(4, vocab, prompt)
        chosen.append(np.concatenate([head, gen.integers(4, vocab, c)]))
        rejected.append(np.concatenate([head, gen.integers(4, vocab, r)]))

    def texts(rows):
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in rows])]).astype(np.int64)
        return gdata.EncodedTexts(np.concatenate(rows).astype(np.int32), offsets, np.arange(len(rows)), {})

    prompts = np.asarray([p for p, _, _ in spec], dtype=np.int64)
    return gdata.EncodedPairs(texts(chosen), texts(rejected), prompts, prompts.copy(), np.arange(len(spec)), {})


def layouts(pairs: gdata.EncodedPairs, pad_id: int) -> dict[str, dict]:
    rows = np.arange(len(pairs))
    return {name: batches.Layout(name == "packed", pad_id, CPU).pairs(pairs, rows) for name in ("padded", "packed")}


#: The runs of each comparison, (layout, dtype): packed float32, padded float32, padded float64 (the truth).
RUNS = (("packed", torch.float32), ("padded", torch.float32), ("padded", torch.float64))


def gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_as_close_as_padded(packed: dict, padded: dict, truth: dict, factor: float = 3.0):
    """Packed float32 results are as close to the float64 truth (the padded layout in float64) as the padded
    float32 results are, per output and per parameter gradient: max |packed - truth| <= factor x the padded
    error, or x the padded path's worst relative error (over all outputs) times the values' magnitude, for a
    value where the padded path happened to land closer than its round-off (a scalar loss). That is "the same
    within float32 tolerance" for sums of many terms with cancellation, where a fixed tolerance is either
    loose or fails on round-off; attending across two sequences would be off by orders of magnitude more."""
    assert set(packed) == set(padded) == set(truth) and truth
    error = lambda got, want: (got.double() - want).abs().max().item()  # noqa: E731
    magnitude = {key: max(want.abs().max().item(), 1e-30) for key, want in truth.items()}
    worst = max(error(padded[key], want) / magnitude[key] for key, want in truth.items())
    for key, want in truth.items():
        err_packed, err_padded = error(packed[key], want), error(padded[key], want)
        assert err_packed <= factor * max(err_padded, worst * magnitude[key]), (key, err_packed, err_padded, worst)


@pytest.mark.parametrize("mix", LENGTH_MIXES)
def test_reward_model_step_packed_equals_padded(hf_tok, mix):
    pairs = encoded_pairs(LENGTH_MIXES[mix], len(hf_tok))
    batch = layouts(pairs, hf_tok.pad_token_id)
    categories = torch.arange(len(pairs)) % 2
    results = []
    for name, dtype in RUNS:
        model = models.load_reward_model("tiny", vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id, seed=1,
                                         dtype=dtype)
        r_c, r_r = rm.score(model, batch[name], autocast=False)
        out = ops.bt_loss(r_c, r_r, categories=categories, num_categories=2, center_coef=0.01)
        (out.loss + 0.1 * out.moments.sum()).backward()
        results.append({"rewards": torch.cat([r_c, r_r]).detach(), "loss": out.loss.detach(), **gradients(model)})
    assert_as_close_as_padded(*results)
    assert results[0]["rewards"].std() > 0  # the rewards tell the sequences apart


def test_packed_rewards_read_the_last_token_that_is_not_padding(hf_tok):
    """A sequence ending in the pad id is scored where *ForSequenceClassification scores it: its last other token."""
    pairs = encoded_pairs([(3, 4, 2), (2, 5, 6)], len(hf_tok), seed=4)
    pairs.chosen.ids[pairs.chosen.offsets[1] - 1] = hf_tok.pad_token_id  # pair 0's chosen ends in the pad id
    model = models.load_reward_model("tiny", vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id, seed=2)
    batch = layouts(pairs, hf_tok.pad_token_id)
    with torch.no_grad():
        padded, packed = (torch.cat(rm.score(model, batch[k], False)) for k in ("padded", "packed"))
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mix", LENGTH_MIXES)
@pytest.mark.parametrize("setting", ["lora", "full"])
def test_preference_step_packed_equals_padded(hf_tok, mix, setting):
    """LoRA: the reference is the adapter disabled; full fine-tuning: a frozen copy. The loss with categories."""
    import copy

    pairs = encoded_pairs(LENGTH_MIXES[mix], len(hf_tok), seed=1)
    batch = layouts(pairs, hf_tok.pad_token_id)
    cfg = options.PrefConfig(loss="sigmoid", beta=0.5)
    categories = torch.arange(len(pairs)) % 2
    results = []
    for name, dtype in RUNS:
        lora = models.LoraSettings(r=4, alpha=8, dropout=0.0) if setting == "lora" else None
        model = models.load_causal_lm("tiny", vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id, lora=lora,
                                      seed=3, dtype=dtype)
        reference = copy.deepcopy(model).requires_grad_(False) if lora is None else None
        with torch.no_grad():  # move the policy off its reference, so the log-ratios are not all zero
            for p in model.parameters():
                if p.requires_grad:
                    noise = torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()))
                    p.add_(noise.to(dtype) * 0.05)
        out = pref.preference_step(model, reference, batch[name], cfg, False, categories, 2)
        (out.loss + out.moments.sum()).backward()
        results.append({"logps": out.logps.detach(), "rewards": out.rewards.detach(), "loss": out.loss.detach(),
                        **gradients(model)})
    assert_as_close_as_padded(*results)
    assert results[0]["rewards"].abs().max() > 1e-3


def rollout_of(hf_tok, lengths, seed=11):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(4, len(hf_tok), (p,), generator=g).numpy() for p, _ in lengths]
    responses = torch.randint(4, len(hf_tok), (len(lengths), max(r for _, r in lengths)), generator=g)
    ended = torch.tensor([k % 2 == 0 for k in range(len(lengths))])
    return assemble(prompts, responses, torch.tensor([r for _, r in lengths]), ended, hf_tok.pad_token_id)


@pytest.mark.parametrize("lengths", [[(6, 6)] * 3, [(2, 40), (30, 1), (5, 9)], [(4, 7)]],
                         ids=["equal", "very unequal", "one rollout"])
def test_ppo_passes_over_packed_rollouts_equal_the_padded_ones(hf_tok, lengths):
    rollout = rollout_of(hf_tok, lengths)
    results = []
    for name, dtype in RUNS:
        model = models.load_causal_lm("tiny", vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id, seed=5,
                                      lora=models.LoraSettings(r=4, alpha=8, dropout=0.0), dtype=dtype)
        head = ppo.value_head_for(model, CPU)
        with torch.no_grad():
            head.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
            for p in model.parameters():
                if p.requires_grad:  # a nonzero adapter: the policy differs from its reference
                    p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())).to(dtype) * 0.05)
        head = head.to(dtype)
        # token_pass hands the head float32 states (its design); the float64 truth's head computes in float64
        value_head = head if dtype == torch.float32 else (lambda states, head=head: head(states.double()))
        packed = name == "packed"
        stats = ppo.token_pass(model, value_head, rollout, 0.8, False, features=True, packed=packed)
        ref = ppo.reference_logp(model, None, rollout, 0.8, False, packed=packed)
        weights = torch.linspace(-1, 1, stats.logp.numel(), dtype=dtype).view_as(stats.logp)
        ((stats.logp + stats.entropy + stats.values) * weights).sum().backward()
        results.append({"logp": stats.logp.detach(), "entropy": stats.entropy.detach(), "values": stats.values.detach(),
                        "features": stats.features, "ref": ref, "value_head": head.weight.grad.clone(),
                        **gradients(model)})
    assert_as_close_as_padded(*results)
    assert (results[0]["logp"] - results[0]["ref"]).abs().max() > 1e-4


# ----------------------------------------------------------------------------------------------------
# Whole runs


RM_FAST = ["--model", "tiny", "--tokenizer", str(models.TINY_TOKENIZER), "--max-length", "64", "--batch-size", "8",
           "--eval-batch-size", "16", "--lr", "1e-3", "--log-every", "1", "--adv-lr", "1e-2"]


@pytest.fixture
def small_data(tmp_path):
    rows = jsonfiles.read_jsonl(models.ASSETS / "sample_pairs.jsonl")[:120]
    return jsonfiles.write_jsonl(tmp_path / "pairs.jsonl", rows)


def test_a_token_budget_sets_the_steps(tmp_path, small_data):
    out = tmp_path / "run"
    assert train_main(["rm", "--data", str(small_data), "--output-dir", str(out), "--tokens-per-step", "1200",
                       "--epochs", "2", "--save-every", "0", *RM_FAST]) == 0
    metrics = jsonfiles.read_jsonl(out / "metrics.jsonl")
    cfg = options.RMConfig(data=str(small_data), tokenizer=str(models.TINY_TOKENIZER), max_length=64)
    hf, tok = models.load_tokenizer(cfg.tokenizer)
    data = rm.load_data(cfg, tok, hf.eos_token_id)
    bins = len(gdata.pack(data.train.encoded.lengths, 1200))
    assert [m["step"] for m in metrics] == list(range(1, 2 * bins + 1))
    assert metrics[bins - 1]["epoch"] == 1.0 and all(np.isfinite(m["loss"]) for m in metrics)


@pytest.mark.slow
@pytest.mark.parametrize("layout", [["--no-packing"], ["--tokens-per-step", "1500"]], ids=["padded", "token budget"])
def test_resume_after_a_kill_is_exact_in_either_layout(tmp_path, small_data, layout):
    """The packed layout's resume is test_train_rm's and test_train_pref_runs' (packing is the default)."""
    args = ["--data", str(small_data), "--max-steps", "8", "--save-every", "3", *RM_FAST, *layout]
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_recipe("rm", [*args, "--output-dir", str(full)])
    kill_after_checkpoint("rm", [*args, "--output-dir", str(killed)], killed, 3)
    run_recipe("rm", [*args, "--output-dir", str(killed), "--resume"])
    drop = ("tokens_per_s",)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(jsonfiles.read_jsonl(killed / "metrics.jsonl")) == strip(jsonfiles.read_jsonl(full / "metrics.jsonl"))
    assert (killed / "rewards.jsonl").read_bytes() == (full / "rewards.jsonl").read_bytes()


@pytest.mark.slow
def test_pref_token_budget_on_two_gloo_processes(tmp_path, synthetic):
    """Each process packs its own bin of --tokens-per-step / 2; the pairs differ per rank, the loss is the mean
    over the step's pairs (each rank's mean weighted by its share)."""
    out = tmp_path / "double"
    run_torchrun("pref", ["--data", str(synthetic), "--max-steps", "3", "--tokens-per-step", "900",
                          "--lambda-adv", "0.2", *PREF_FAST, "--output-dir", str(out)])
    metrics = jsonfiles.read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(np.isfinite(m["loss"]) and np.isfinite(m["pref_loss"]) for m in metrics)
    assert (out / "summary.json").is_file()


def test_packing_where_the_model_cannot_is_an_error_and_the_default_says_why(tmp_path, small_data, monkeypatch,
                                                                             capsys):
    monkeypatch.setattr(models, "packing_unsupported", lambda model, head=None: "its attention is from elsewhere")
    args = ["rm", "--data", str(small_data), "--max-steps", "1", "--save-every", "0", *RM_FAST]
    assert train_main([*args, "--output-dir", str(tmp_path / "a"), "--packing"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == ("error: --packing: its attention is from elsewhere; train on padded "
                                            "batches with --no-packing")
    assert train_main([*args, "--output-dir", str(tmp_path / "b")]) == 0
    assert "packing: off, its attention is from elsewhere" in capsys.readouterr().out


def test_a_token_budget_below_the_longest_pair_is_one_error_line(tmp_path, small_data, capsys):
    assert train_main(["rm", "--data", str(small_data), "--output-dir", str(tmp_path / "run"),
                       "--tokens-per-step", "20", *RM_FAST]) == 2
    assert "error: --tokens-per-step 20 is fewer than the " in capsys.readouterr().err
