"""The PPO recipe (`python -m guard.train ppo`): on a tiny policy and a tiny reward model trained by the rm recipe
(it learned to like responses with the word "safe"), PPO raises the mean score within 30 updates while the KL
to the reference stays bounded, and a larger β keeps it smaller; the curiosity bonus is nonzero and the RND
predictor's loss falls (and --curiosity 0 turns both off); the adaptive KL controller follows its rule; the
experience is wired right (returns = score − penalty − β·ΣKL against a float64 recomputation from full logits);
the passes over rollouts never run the *ForCausalLM forward or the LM head module; a run SIGKILLed after a
checkpoint and resumed logs the uninterrupted run's metrics; torchrun with two gloo processes runs; what a run
writes; bad input ends in one clear error line. Tiny models and local data only."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from guard import distributed, jsonfiles, models
from guard.jsonfiles import write_jsonl
from guard.rollout import GenerationSettings, RewardScorer, assemble, generate
from guard.train import ppo
from guard.train.__main__ import main as train_main

from recipe_runs import kill_after_checkpoint, run_recipe, run_torchrun

TOKENIZER = str(models.TINY_TOKENIZER)
WORDS = ("maybe", "to", "say", "it", "depends", "whatever", "too", "much", "hard", "nobody", "cares", "the", "you")
FAST = ["--model", "tiny", "--tokenizer", TOKENIZER, "--batch-size", "32", "--minibatch-size", "8",
        "--max-new-tokens", "12", "--eval-fraction", "0.25", "--save-every", "0", "--eval-batch-size", "32"]
FULL = ["--no-lora", "--lr", "5e-4"]  # a random tiny model's frozen LM head cannot peak: train every weight
#: Metric keys that are timings (they differ between runs); every other key is compared exactly on resume.
TIMINGS = ("time/", "tokens_per_s/")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(prompts.jsonl, reward-model directory): 64 prompts in two categories, and a tiny reward model the rm
    recipe trained to prefer responses with three "safe" among random words."""
    root = tmp_path_factory.mktemp("ppo")
    rng = random.Random(0)
    pairs = []
    for k in range(256):
        words = [rng.choice(WORDS) for _ in range(8)]
        for j in rng.sample(range(8), 3):
            words[j] = "safe"
        pairs.append({"prompt": f"how do i {rng.choice(['cook', 'clean', 'fix'])} this ?", "chosen": " ".join(words),
                      "rejected": " ".join(rng.choice(WORDS) for _ in range(8)), "category": ("a", "b")[k % 2]})
    write_jsonl(root / "pairs.jsonl", pairs)
    assert train_main(["rm", "--data", str(root / "pairs.jsonl"), "--model", "tiny", "--tokenizer", TOKENIZER,
                       "--max-length", "32", "--batch-size", "32", "--epochs", "3", "--lr", "2e-3", "--lambda-adv", "0",
                       "--save-every", "0", "--output-dir", str(root / "rm")]) == 0
    verbs, objects = ["cook", "clean", "fix", "grow", "bake", "store", "use", "play"], ["rice", "bread", "stove",
                                                                                        "guitar", "tomatoes", "outlet",
                                                                                        "garage", "heater"]
    prompts = [{"prompt": f"how do i {v} the {o} ?", "category": ("helpful", "harmless")[k % 2]}
               for k, (v, o) in enumerate((v, o) for v in verbs for o in objects)]
    return write_jsonl(root / "prompts.jsonl", prompts), root / "rm" / "model"


def ppo_args(setup, out: Path, *extra: str) -> list[str]:
    prompts, rm_dir = setup
    return ["--data", str(prompts), "--reward-model", str(rm_dir), "--output-dir", str(out), *FAST, *extra]


def train(setup, out: Path, *extra: str) -> list[dict]:
    assert train_main(["ppo", *ppo_args(setup, out, *extra)]) == 0
    return jsonfiles.read_jsonl(out / "metrics.jsonl")


def series(rows: list[dict], key: str) -> np.ndarray:
    return np.asarray([r[key] for r in rows], dtype=np.float64)


@pytest.fixture(scope="module")
def learning_run(setup, tmp_path_factory):
    """30 updates, full fine-tuning, β = 0.05 fixed, curiosity on (the default η 0.05)."""
    out = tmp_path_factory.mktemp("learn") / "run"
    return out, train(setup, out, *FULL, "--max-steps", "30", "--no-adaptive-kl")


def test_ppo_raises_the_mean_score_while_the_kl_stays_bounded(learning_run):
    out, rows = learning_run
    score, kl = series(rows, "score"), series(rows, "kl")
    assert kl[0] == 0.0  # the first rollouts come from the reference itself
    assert score[-5:].mean() > score[:5].mean() + 2.0  # from about −1.9 (random words) to about +1.9
    # Bounded: per response of <= 12 tokens, far below what a policy that only says "safe" would have
    # (12·log(1/p_ref("safe")) ≈ 60 nats), and no longer growing at the end.
    assert kl.max() < 25.0
    assert kl[-5:].mean() < 2.0 * kl[-15:-10].mean() + 1.0
    summary = jsonfiles.read_json(out / "summary.json")
    assert summary["score_policy"] > summary["score_reference"] + 2.0  # on held-out prompts, same seeds


def test_a_larger_kl_coefficient_keeps_the_policy_closer(setup, tmp_path, learning_run):
    _, loose = learning_run
    tight = train(setup, tmp_path / "tight", *FULL, "--max-steps", "30", "--no-adaptive-kl", "--kl-coef", "0.5")
    assert series(tight, "kl")[-10:].mean() < 0.5 * series(loose, "kl")[-10:].mean()
    assert all(r["kl_coef"] == 0.5 for r in tight)


def test_curiosity_bonus_is_nonzero_and_the_rnd_predictor_learns(learning_run):
    _, rows = learning_run
    intrinsic, rnd_loss = series(rows, "intrinsic"), series(rows, "rnd_loss")
    assert (intrinsic > 0.01).all() and (intrinsic < 0.1).all()  # η = 0.05 over a running RMS of novelty
    assert intrinsic[0] == pytest.approx(0.05, rel=0.05)  # the first batch is its own scale: RMS exactly η
    assert rnd_loss[-5:].mean() < 0.85 * rnd_loss[:3].mean()
    for r in rows:  # the sequence reward is the score, minus the no-stop penalty, plus the bonus
        assert r["reward"] == pytest.approx(r["score"] - 1.0 * r["no_stop_frac"] + r["intrinsic"], abs=1e-5)


def test_curiosity_zero_turns_the_bonus_off(setup, tmp_path):
    rows = train(setup, tmp_path / "off", "--max-steps", "3", "--curiosity", "0", "--missing-eos-penalty", "0.5")
    for r in rows:
        assert r["intrinsic"] == 0.0 and r["rnd_loss"] is None
        assert r["reward"] == pytest.approx(r["score"] - 0.5 * r["no_stop_frac"], abs=1e-5)


def test_the_adaptive_kl_controller_follows_its_rule(setup, tmp_path):
    # A target far below the KL reached and a horizon of one batch: β grows 20% per update once KL > 2·target.
    rows = train(setup, tmp_path / "adaptive", *FULL, "--max-steps", "8", "--kl-target", "0.05", "--kl-horizon",
                 "32", "--kl-coef", "0.1")
    coef, kl = series(rows, "kl_coef"), series(rows, "kl")
    assert coef[0] == 0.1
    for t in range(len(rows) - 1):
        error = min(max(kl[t] / 0.05 - 1.0, -0.2), 0.2)
        assert coef[t + 1] == pytest.approx(coef[t] * (1.0 + error * 32 / 32), rel=1e-12)
    assert coef[-1] > coef[0] * 1.2 ** 3
    assert jsonfiles.read_json(tmp_path / "adaptive" / "summary.json")["kl_coef"] == pytest.approx(
        coef[-1] * (1.0 + min(max(kl[-1] / 0.05 - 1.0, -0.2), 0.2)), rel=1e-12)


# ----------------------------------------------------------------------------------------------------
# The passes over rollouts


@pytest.fixture(scope="module")
def tiny(setup):
    hf_tok, _ = models.load_tokenizer(TOKENIZER)
    lora = models.LoraSettings(r=8, alpha=16, dropout=0.0)
    model = models.load_causal_lm("tiny", vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id, lora=lora, seed=3)
    with torch.no_grad():  # a nonzero adapter, so the policy differs from the reference
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return hf_tok, model


def handmade_rollout(hf_tok, lengths=((5, 3), (2, 7), (4, 1))):
    """Right-padded prompt + response rows of given (prompt, response) lengths with random tokens."""
    g = torch.Generator().manual_seed(11)
    prompts = [torch.randint(4, len(hf_tok), (p,), generator=g).numpy() for p, _ in lengths]
    width = max(r for _, r in lengths)
    responses = torch.randint(4, len(hf_tok), (len(lengths), width), generator=g)
    return assemble(prompts, responses, torch.tensor([r for _, r in lengths]), torch.tensor([False, True, False]),
                    hf_tok.pad_token_id)


def full_logit_logp(model, rollout, temperature: float):
    """float64 [B, R] log-probs and entropies of the response tokens from the model's full logits, row by row."""
    logp = torch.zeros(len(rollout), int(rollout.response_lengths.max()), dtype=torch.float64)
    entropy = torch.zeros_like(logp)
    with torch.no_grad():
        for b in range(len(rollout)):
            p, n = int(rollout.prompt_lengths[b]), int(rollout.response_lengths[b])
            ids = rollout.input_ids[b:b + 1, :p + n]
            logits = model(input_ids=ids).logits[0].double() / temperature
            dist = torch.log_softmax(logits, -1)
            for t in range(n):
                logp[b, t] = dist[p + t - 1, ids[0, p + t]]
                entropy[b, t] = -(dist[p + t - 1].exp() * dist[p + t - 1]).sum()
    return logp, entropy


def test_token_pass_matches_full_logits_without_running_the_lm_head(tiny):
    hf_tok, model = tiny
    rollout = handmade_rollout(hf_tok)
    want_logp, want_entropy = full_logit_logp(model, rollout, temperature=0.7)
    head = ppo.value_head_for(model, "cpu")
    with torch.no_grad():
        head.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(5))
    base = model.get_base_model()
    forward, head_forward = base.forward, base.lm_head.forward
    try:
        def refuse(*args, **kwargs):
            raise AssertionError("the [tokens x vocab] path ran")

        base.forward = refuse
        base.lm_head.forward = refuse
        stats = ppo.token_pass(model, head, rollout, 0.7, False, features=True)
        ref = ppo.reference_logp(model, None, rollout, 0.7, False)
    finally:
        base.forward, base.lm_head.forward = forward, head_forward
    mask = stats.mask
    assert mask.tolist() == [[t < n for t in range(7)] for n in (3, 7, 1)]
    torch.testing.assert_close(stats.logp.double(), want_logp * mask, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.entropy.double(), want_entropy * mask, rtol=1e-5, atol=1e-5)
    with model.disable_adapter():
        want_ref, _ = full_logit_logp(model, rollout, temperature=0.7)
    torch.testing.assert_close(ref.double(), want_ref * mask, rtol=1e-5, atol=1e-5)
    assert (stats.logp - ref).abs().max() > 1e-3  # the adapter matters
    # values: the head on the hidden state before each response token; features: mean of the response's states
    hidden = model.get_base_model().model(input_ids=rollout.input_ids,
                                          attention_mask=rollout.attention_mask).last_hidden_state.detach()
    for b, (p, n) in enumerate(zip(rollout.prompt_lengths.tolist(), rollout.response_lengths.tolist())):
        torch.testing.assert_close(stats.values[b, :n], head(hidden[b, p - 1:p + n - 1]).squeeze(-1).detach())
        assert (stats.values[b, n:] == 0).all()
        torch.testing.assert_close(stats.features[b], hidden[b, p:p + n].mean(0))


def test_experience_returns_are_score_minus_penalty_minus_beta_kl(setup, tiny):
    """γ = λ = 1 and a zero value head: the return of a response's first token is its whole reward."""
    hf_tok, model = tiny
    _, rm_dir = setup
    cfg = ppo.PPOConfig(gamma=1.0, lam=1.0, kl_coef=0.3, missing_eos_penalty=0.7, eval_batch_size=2, temperature=0.9)
    scorer = RewardScorer.load(str(rm_dir), policy_tokenizer=hf_tok)
    prompts = [np.asarray(hf_tok(t)["input_ids"]) for t in ("how do i cook the rice ?", "fix it", "how ?")]
    torch.manual_seed(0)
    rollout = generate(model, prompts, GenerationSettings(8, 0.9, 1.0, (hf_tok.eos_token_id,)),
                       pad_id=hf_tok.pad_token_id)
    dist = distributed.init_distributed("cpu")
    exp, metrics = ppo.make_experience(cfg, model, None, ppo.value_head_for(model, "cpu"), scorer, None, rollout,
                                       ppo.kl_controller(cfg), dist, False)
    logp, _ = full_logit_logp(model, rollout, 0.9)
    with model.disable_adapter():
        ref, _ = full_logit_logp(model, rollout, 0.9)
    kl = ((logp - ref) * exp.mask).sum(1)
    score = scorer.score(rollout).double()
    want = score - 0.7 * (~rollout.ended).double() - 0.3 * kl
    torch.testing.assert_close(exp.returns[:, 0].double(), want, rtol=1e-4, atol=1e-4)
    assert metrics["score"] == pytest.approx(float(score.mean()), rel=1e-6)
    assert metrics["kl"] == pytest.approx(float(kl.mean()), rel=1e-4, abs=1e-5)
    valid = exp.advantages[exp.mask].double()  # whitened over the batch's tokens
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-5) and valid.std().item() == pytest.approx(1.0, rel=1e-3)


# ----------------------------------------------------------------------------------------------------
# Whole runs


def test_a_run_writes_its_files_and_report(learning_run):
    out, rows = learning_run
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "report.md", "samples.jsonl", "score_curves.png",
                 "kl_curves.png", "model/config.json"):
        assert (out / name).exists(), name
    for key in ("score", "intrinsic", "kl", "kl_coef", "entropy", "policy_loss", "value_loss", "policy_clipfrac",
                "value_clipfrac", "response_length", "tokens_per_s/generation", "tokens_per_s/training",
                "time/generation_s", "time/training_s", "rnd_loss", "approx_kl", "lr"):
        assert all(r[key] is not None and np.isfinite(r[key]) for r in rows), key
    assert [r["step"] for r in rows] == list(range(1, 31))
    samples = jsonfiles.read_jsonl(out / "samples.jsonl")
    summary = jsonfiles.read_json(out / "summary.json")
    assert len(samples) == summary["held_out_prompts"] == 16
    assert summary["score_policy"] == pytest.approx(np.mean([s["policy_score"] for s in samples]))
    assert set(summary["categories"]) == {"helpful", "harmless"}
    report = (out / "report.md").read_text()
    assert "score_curves.png" in report and "kl_curves.png" in report and "parity gap" in report
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "model").config.hidden_size == 64


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_uninterrupted_metrics(setup, tmp_path):
    """LoRA, curiosity on, adaptive KL with a short horizon (so β moves and must be restored), killed after the
    checkpoint of update 3 of 6."""
    args = ["--max-steps", "6", "--save-every", "3", "--kl-horizon", "64", "--kl-target", "0.1", "--lr", "5e-3"]
    full = tmp_path / "full"
    run_recipe("ppo", ppo_args(setup, full, *args))
    killed = tmp_path / "killed"
    before = kill_after_checkpoint("ppo", ppo_args(setup, killed, *args), killed, 3)
    run_recipe("ppo", ppo_args(setup, killed, *args, "--resume"))

    def compared(run_dir):
        return [{k: v for k, v in r.items() if not k.startswith(TIMINGS)}
                for r in jsonfiles.read_jsonl(run_dir / "metrics.jsonl")]

    assert compared(killed) == compared(full)
    assert jsonfiles.read_jsonl(killed / "metrics.jsonl")[:len(before)] == before  # kept as written
    assert len({r["kl_coef"] for r in compared(full)}) > 3
    assert jsonfiles.read_jsonl(killed / "samples.jsonl") == jsonfiles.read_jsonl(full / "samples.jsonl")


@pytest.mark.slow
def test_torchrun_with_two_gloo_processes(setup, tmp_path):
    """Rollouts split over two processes (generation kept in step with synced_gpus, FSDP2): the run completes,
    its first update has KL 0 and every held-out prompt is answered once."""
    out = tmp_path / "double"
    run_torchrun("ppo", ppo_args(setup, out, "--max-steps", "2", "--lr", "5e-3"))
    rows = jsonfiles.read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["kl"] == 0.0
    assert len(jsonfiles.read_jsonl(out / "samples.jsonl")) == 16


# ----------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("extra,message", [
    (["--reward-model", ""], "--reward-model is required"),
    (["--reward-model", "/no/such/rm"], "model not found: /no/such/rm"),
    (["--minibatch-size", "5"], "must be a multiple of --minibatch-size 5"),
    (["--stop-token", "notatoken"], "--stop-token 'notatoken' is not one token"),
    (["--gamma", "1.5"], "--gamma must be in [0, 1], got 1.5"),
    (["--batch-size", "64"], "--batch-size 64 is larger than the 48 training prompts"),
    (["--kl-coef", "-1"], "--kl-coef must be >= 0, got -1"),
])
def test_bad_options_end_in_one_error_line(setup, tmp_path, capsys, extra, message):
    assert train_main(["ppo", *ppo_args(setup, tmp_path / "bad"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_conversational_prompts_need_a_template_and_unknown_categories_are_named(setup, tmp_path, capsys):
    _, rm_dir = setup
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": "plain ?"}, {"prompt": [{"role": "user", "content": "hi"}]}])
    args = ["ppo", "--reward-model", str(rm_dir), "--output-dir", str(tmp_path / "x"), *FAST]
    assert train_main([*args, "--data", str(chat)]) == 2
    assert "chat.jsonl line 2: conversational data" in capsys.readouterr().err
    prompts, _ = setup
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"prompt": "fix it ?", "category": "other"}])
    assert train_main([*args, "--data", str(prompts), "--eval-data", str(odd)]) == 2
    assert "odd.jsonl line 1: unknown category 'other'" in capsys.readouterr().err


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        train_main(["ppo", "--help"])
    text = capsys.readouterr().out
    for field in ("--reward-model", "--kl-coef", "--adaptive-kl", "--kl-estimator", "--curiosity", "--ppo-epochs",
                  "--minibatch-size", "--missing-eos-penalty", "--top-p", "--cliprange-value", "--vf-coef"):
        assert field in text
