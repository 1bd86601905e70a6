"""The preference-optimization recipe (`python -m guard.train pref`): each loss moves the implicit rewards the
way its paper says on a tiny policy and a learnable synthetic preference, the trainer never builds
[tokens x vocab] logits, a tied LM head gets its gradient, resume matches an uninterrupted run, precomputed
and cached reference log-probs, two SPO rounds (κ-weighted earlier log-ratios read from the cache; α keeps the
first round's alignment where plain sequential DPO loses it), presets, conversational data and chat
templates, what a run writes, and bad input ending in one clear error line. Tiny models and local data only.
Distributed and kill-and-resume runs: tests/test_train_pref_runs.py."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from guard import audit, jsonfiles, models
from guard.jsonfiles import write_jsonl
from guard.train import inputs, loop, options, pref, session
from guard.train.__main__ import main as train_main

from pref_data import FAST


def metrics(run_dir: Path) -> list[dict]:
    return jsonfiles.read_jsonl(run_dir / "metrics.jsonl")


def mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def train(tmp_path: Path, data: Path, loss: str, steps: int = 30, *extra: str) -> list[dict]:
    out = tmp_path / loss
    assert train_main(["pref", "--data", str(data), "--output-dir", str(out), "--loss", loss, "--max-steps",
                       str(steps), *FAST, *extra]) == 0
    return metrics(out)


def test_dpo_accuracy_rises_above_one_half_and_the_margin_grows(tmp_path, synthetic):
    rows = train(tmp_path, synthetic, "sigmoid")
    assert mean(rows[-5:], "rewards/accuracy") > 0.8
    assert mean(rows[-5:], "rewards/margins") > mean(rows[:5], "rewards/margins") + 0.1
    assert mean(rows[-5:], "pref_loss") < 0.6


def test_dpo_with_full_fine_tuning_against_a_frozen_copy(tmp_path, synthetic):
    rows = train(tmp_path, synthetic, "sigmoid", 20, "--no-lora", "--lr", "1e-3")
    assert rows[0]["rewards/margins"] == 0.0  # policy == reference at step 1
    assert mean(rows[-5:], "rewards/accuracy") > 0.8


def test_apo_zero_raises_the_chosen_log_ratio_and_lowers_the_rejected(tmp_path, synthetic):
    rows = train(tmp_path, synthetic, "apo_zero")
    last = rows[-5:]
    assert mean(last, "logratio/chosen") > 0 > mean(last, "logratio/rejected")


def test_apo_down_lowers_both_log_ratios_the_rejected_more(tmp_path, synthetic):
    rows = train(tmp_path, synthetic, "apo_down")
    last = rows[-5:]
    assert mean(last, "logratio/rejected") < mean(last, "logratio/chosen") < 0


@pytest.mark.parametrize("loss", ["ipo", "kto_pair"])
def test_ipo_and_kto_pair_grow_the_margin(tmp_path, synthetic, loss):
    rows = train(tmp_path, synthetic, loss)
    assert rows[0]["rewards/margins"] == 0.0  # LoRA starts as the identity: policy == reference
    assert mean(rows[-5:], "rewards/margins") > 0.1
    assert mean(rows[-5:], "rewards/accuracy") > 0.8


def test_the_trainer_never_builds_vocabulary_logits(tmp_path, synthetic, monkeypatch):
    """Neither the *ForCausalLM forward nor the LM head module ever runs: the loss reads the head's weight."""
    from transformers import LlamaForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("the [tokens x vocab] logits were built")

    monkeypatch.setattr(LlamaForCausalLM, "forward", refuse)
    load = models.load_causal_lm
    calls = []

    def load_with_hook(*args, **kwargs):
        model = load(*args, **kwargs)
        model.get_output_embeddings().register_forward_pre_hook(lambda *a: calls.append(1) or refuse())
        return model

    monkeypatch.setattr(models, "load_causal_lm", load_with_hook)
    for extra in ([], ["--no-lora"]):  # reference by disabled adapter, and by a frozen copy
        out = tmp_path / f"run{len(extra)}"
        assert train_main(["pref", "--data", str(synthetic), "--output-dir", str(out), "--max-steps", "2",
                           "--lambda-adv", "0.2", *FAST, *extra]) == 0
        assert (out / "rewards.jsonl").is_file()
    assert calls == []


def test_a_tied_lm_head_gets_its_gradient_through_the_shared_embedding():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    preset = json.loads(models.PRESETS["tiny"].read_text())
    model = LlamaForCausalLM(LlamaConfig(**preset, vocab_size=40, tie_word_embeddings=True))
    assert pref.lm_head_weight(model) is model.get_input_embeddings().weight
    ids = torch.randint(0, 20, (4, 6))  # ids 20..39 never appear in the input: only the head reaches them
    labels = ids.clone()
    labels[:, :2] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    reference = LlamaForCausalLM(model.config).requires_grad_(False)
    cfg = pref.PrefConfig()
    out = pref.preference_step(model, reference, batch, cfg, False, None, None)
    out.loss.backward()
    grad = model.get_input_embeddings().weight.grad
    assert grad is not None and grad[20:].abs().sum() > 0


def test_a_deep_copy_made_after_a_forward_computes_with_its_own_weights():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**json.loads(models.PRESETS["tiny"].read_text()), vocab_size=40))
    ids = torch.randint(0, 40, (2, 5))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    before = pref.policy_logps(model, batch, False)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.get_output_embeddings().weight.mul_(3.0)
    assert torch.equal(pref.policy_logps(model, batch, False), before)
    assert not torch.allclose(pref.policy_logps(twin, batch, False), before)


def test_a_run_writes_metrics_checkpoints_model_rewards_and_report(tmp_path, synthetic):
    out = tmp_path / "run"
    assert train_main(["pref", "--data", str(synthetic), "--output-dir", str(out), "--max-steps", "3",
                       "--lambda-adv", "0.2", *FAST]) == 0
    for name in ("config.yaml", "metrics.jsonl", "rewards.jsonl", "report.md", "summary.json",
                 "rewards_by_category.png", "chosen_vs_rejected.png", "training_curves.png", "model/config.json"):
        assert (out / name).is_file(), name
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert set(rows[0]) >= {"loss", "pref_loss", "adv_loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                            "rewards/accuracy", "logratio/chosen", "logratio/rejected", "tokens_per_s"}
    table = audit.read_rewards_jsonl(out / "rewards.jsonl")
    assert len(table.chosen) == 16 and set(table.categories) == {"helpful", "harmless"}
    report = (out / "report.md").read_text()
    assert "implicit rewards" in report and "rewards_by_category.png" in report and "## Data" in report
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "model")  # LoRA merged: a plain causal LM


def test_resume_gives_the_uninterrupted_metrics(tmp_path, synthetic):
    args = ["pref", "--data", str(synthetic), "--lambda-adv", "0.2", *FAST, "--save-every", "3", "--lr", "1e-3"]
    full = tmp_path / "full"
    assert train_main([*args, "--max-steps", "8", "--output-dir", str(full)]) == 0

    # A run stopped after step 6 (its last checkpoint), then resumed to 8. The schedule is constant, so the
    # shorter first run takes the same steps.
    stopped = tmp_path / "stopped"
    assert train_main([*args, "--max-steps", "6", "--output-dir", str(stopped)]) == 0
    assert train_main([*args, "--max-steps", "8", "--output-dir", str(stopped), "--resume",
                       "--resume-changes", "max_steps"]) == 0  # a longer run: a change --resume must be told of
    drop = ("tokens_per_s",)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(metrics(stopped)) == strip(metrics(full))
    assert (audit.read_rewards_jsonl(stopped / "rewards.jsonl").chosen
            == audit.read_rewards_jsonl(full / "rewards.jsonl").chosen).all()


@pytest.mark.parametrize("extra, message", [
    (["--model", "no/such/model-dir"], "model not found"),
    (["--data", "EMPTY"], "is empty"),
    (["--data", "MISSING.jsonl"], "not found"),
    (["--beta", "0"], "--beta"),
    (["--lambda-adv", "0.2", "--data", "ONECAT"], "at least two categories"),
    (["--data", "BADLINE"], "line 2: not valid JSON"),
    (["--data", "NOCOLUMN"], "pass --schema NAME"),
    (["--categories", "helpful"], "line 2: unknown category 'harmless'"),
    (["--batch-size", "1000"], "larger than the 144 training pairs"),
])
def test_bad_input_ends_in_one_clear_error(tmp_path, synthetic, capsys, extra, message):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    one = write_jsonl(tmp_path / "one.jsonl", [{"prompt": f"q{k}", "chosen": "yes.", "rejected": f"no {k}."}
                                               for k in range(40)])
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"prompt": "q", "chosen": "a.", "rejected": "b."}\n{"prompt": "q2", \n')
    no_column = write_jsonl(tmp_path / "nocol.jsonl", [{"prompt": "q", "answer": "a."}])
    names = {"EMPTY": str(empty), "MISSING.jsonl": str(tmp_path / "missing.jsonl"), "ONECAT": str(one),
             "BADLINE": str(bad_line), "NOCOLUMN": str(no_column)}
    extra = [names.get(x, x) for x in extra]
    args = ["pref", "--data", str(synthetic), "--output-dir", str(tmp_path / "out"), "--max-steps", "1", *FAST, *extra]
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, err


# ----------------------------------------------------------------------------------------------------
# Precomputed reference log-probs


def test_precomputed_reference_gives_the_live_reference_metrics_and_is_read_from_the_cache(tmp_path, synthetic):
    live = train(tmp_path, synthetic, "sigmoid", 6)
    cache = tmp_path / "cache"
    out = tmp_path / "pre"
    args = ["pref", "--data", str(synthetic), "--max-steps", "6", "--precompute-ref", "--ref-cache-dir", str(cache),
            *FAST]
    assert train_main([*args, "--output-dir", str(out)]) == 0
    pre = metrics(out)
    keys = ("pref_loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy", "logratio/chosen")
    for a, b in zip(live, pre):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
    (cached,) = cache.glob("ref-logps-*.npz")
    with np.load(cached) as arrays:
        train_logps, eval_logps = arrays["train"], arrays["eval"]
    assert train_logps.shape == (2, 144) and eval_logps.shape == (2, 16) and np.isfinite(train_logps).all()

    # A second run with the same data and reference reads the file: shift the cached chosen log-probs by one
    # nat and the step-1 chosen reward (policy = reference there) moves by exactly -β.
    np.savez(cached, train=train_logps + np.array([[1.0], [0.0]]), eval=eval_logps)
    again = tmp_path / "again"
    assert train_main([*args, "--output-dir", str(again)]) == 0
    assert metrics(again)[0]["rewards/chosen"] == pytest.approx(pre[0]["rewards/chosen"] - 0.1, abs=1e-5)
    assert metrics(again)[0]["rewards/rejected"] == pytest.approx(pre[0]["rewards/rejected"], abs=1e-6)


def test_full_fine_tuning_with_a_precomputed_reference_holds_one_model(tmp_path, synthetic, monkeypatch):
    frozen = train(tmp_path, synthetic, "sigmoid", 5, "--no-lora", "--lr", "1e-3")

    real_deepcopy = pref.copy.deepcopy

    def no_model_copies(obj, *args, **kwargs):
        if isinstance(obj, torch.nn.Module):
            raise AssertionError("a second model was built")
        return real_deepcopy(obj, *args, **kwargs)

    monkeypatch.setattr(pref.copy, "deepcopy", no_model_copies)
    out = tmp_path / "one-model"
    assert train_main(["pref", "--data", str(synthetic), "--output-dir", str(out), "--max-steps", "5", *FAST,
                       "--no-lora", "--lr", "1e-3", "--precompute-ref"]) == 0
    for a, b in zip(frozen, metrics(out)):
        assert b["pref_loss"] == pytest.approx(a["pref_loss"], rel=1e-4, abs=1e-5)
        assert b["rewards/margins"] == pytest.approx(a["rewards/margins"], rel=1e-3, abs=1e-4)
    assert list((out / "ref-cache").glob("ref-logps-*.npz"))


# ----------------------------------------------------------------------------------------------------
# SPO


SPO = ["--loss", "spo", "--dimensions", "first,second", "--beta", "0.5", "--batch-size", "48", "--eval-batch-size",
       "48", "--max-steps", "30"]


def spo_table(out: Path) -> list[dict]:
    import csv

    with open(out / "spo.csv", encoding="utf-8") as f:
        return [{k: float(v) if k != "trained" else v for k, v in row.items()} for row in csv.DictReader(f)]


def test_spo_keeps_the_first_rounds_accuracy_where_plain_sequential_dpo_loses_it(tmp_path, two_dimensions):
    tables = {}
    for alpha in ("0.9", "0"):
        out = tmp_path / f"alpha-{alpha}"
        assert train_main(["pref", "--data", str(two_dimensions), "--output-dir", str(out), *FAST, *SPO,
                           "--alpha", alpha]) == 0
        tables[alpha] = spo_table(out)
        assert [r["trained"] for r in tables[alpha]] == ["-", "first", "second"]
        for name in ("round-1-first", "round-2-second"):
            assert (out / name / "report.md").is_file() and (out / name / "model" / "config.json").is_file()
        assert "round-2-second/report.md" in (out / "report.md").read_text()
    spo, dpo = tables["0.9"], tables["0"]
    assert spo[1] == dpo[1]  # round 1 is the same DPO run in both
    first = spo[1]["accuracy/first"]
    assert first >= 0.7  # round 1 learned its dimension (80% of the held-out labels prefer A)
    # Stated tolerance: SPO (α = 0.9) keeps round-1 accuracy within 0.1; plain sequential DPO loses at least 0.4.
    assert spo[2]["accuracy/first"] >= first - 0.1
    assert dpo[2]["accuracy/first"] <= first - 0.4
    assert dpo[2]["accuracy/second"] >= 0.7  # DPO did learn the second dimension: it traded the first away


def test_spo_round_two_reads_the_kappa_weighted_log_ratios_of_round_one_from_the_cache(tmp_path, two_dimensions):
    out = tmp_path / "spo"
    assert train_main(["pref", "--data", str(two_dimensions), "--output-dir", str(out), *FAST, *SPO,
                       "--max-steps", "3", "--alpha", "0.3"]) == 0
    with np.load(out / "spo-cache" / "policy-0.npz") as p0, np.load(out / "spo-cache" / "policy-1.npz") as p1:
        base, after = dict(p0), dict(p1)
    assert set(base) == {"train-1", "train-2", "eval-1", "eval-2"} and set(after) == {"train-2", "eval-1", "eval-2"}

    # The cache holds what the saved models give: round 1's model scored afresh on round 2's training pairs.
    data = inputs.load_train_eval(pref.parse_config(["--data", str(two_dimensions), "--dimensions", "second",
                                                     *FAST]), *inputs.model_tokenizer("tiny", str(models.TINY_TOKENIZER))[1:])
    hf_tok = models.load_tokenizer(str(models.TINY_TOKENIZER))[0]
    from guard import distributed

    dist = distributed.init_distributed("cpu")
    model = models.load_causal_lm(str(out / "round-1-first" / "model"), vocab_size=len(hf_tok),
                                  pad_token_id=hf_tok.pad_token_id, device=torch.device("cpu"))
    fresh = pref.all_logps(model, data.train, pref.PrefConfig(eval_batch_size=48), hf_tok.pad_token_id, dist, False)
    np.testing.assert_allclose(fresh, after["train-2"], rtol=1e-5, atol=1e-4)

    # Round 2 starts from round 1's model with a fresh (identity) adapter, so its first loss is SPO eq. 5 with
    # Δ_2 = 0: mean over the first batch of -logσ(-α·β·Δ_1), Δ_1 round 1's log-ratio margin from the cache.
    lr1 = after["train-2"] - base["train-2"]
    rows = loop.epoch_order(lr1.shape[1], 0, 0)[:48]
    delta1 = lr1[0, rows] - lr1[1, rows]
    expected = float(np.mean(np.logaddexp(0.0, 0.3 * 0.5 * delta1)))
    assert abs(delta1).mean() > 1.0  # round 1 moved these pairs, so the κ term matters
    assert metrics(out / "round-2-second")[0]["pref_loss"] == pytest.approx(expected, rel=1e-4)
    assert metrics(out / "round-1-first")[0]["pref_loss"] == pytest.approx(np.log(2), rel=1e-6)


# ----------------------------------------------------------------------------------------------------
# Presets, conversational data, SPO and dimension errors


def test_a_preset_sets_the_papers_values_and_flags_still_win(tmp_path):
    cfg = pref.parse_config(["--preset", "spo", "--lr", "1e-3"])
    assert (cfg.loss, cfg.lora_r, cfg.lora_alpha, cfg.epochs, cfg.alpha, cfg.lr) == ("spo", 8, 32, 2, [0.1], 1e-3)
    guard_cfg = pref.parse_config(["--preset", "guard"])
    assert (guard_cfg.lora_r, guard_cfg.lora_alpha, guard_cfg.lora_target_modules) == (
        16, 32, ["q_proj", "k_proj", "v_proj", "o_proj"])
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("preset: apo\nepochs: 3\n")
    apo = pref.parse_config(["--config", str(yaml_file)])
    assert (apo.loss, apo.lora, apo.lr, apo.epochs) == ("apo_zero", False, 2e-7, 3)  # yaml beats the preset
    assert pref.parse_config([]).lora_r == 16  # no preset: the recipe's defaults


def conversational_rows(n: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"Question {k}: what now?"}],
             "chosen": [{"role": "assistant", "content": "Stay safe here."}],
             "rejected": [{"role": "assistant", "content": f"nobody cares {k}."}]} for k in range(n)]


def test_conversational_data_is_rendered_with_a_chat_template(tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", conversational_rows(40))
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }} {% endfor %}")
    out = tmp_path / "run"
    assert train_main(["pref", "--data", str(data), "--output-dir", str(out), "--max-steps", "2", *FAST,
                       "--chat-template", str(template)]) == 0
    assert len(audit.read_rewards_jsonl(out / "rewards.jsonl").chosen) == 4


@pytest.mark.parametrize("case, message", [
    ("chat", "line 1: conversational data (lists of messages) needs a chat template, and the tokenizer of"),
    ("dimension", "no pairs for dimension 'honest' named in --dimensions (dimensions in the data: ['first', "
                  "'second'])"),
    ("spo-no-dimensions", "--loss spo needs --dimensions"),
    ("spo-alpha", "--alpha must be one value in [0, 1] or one per dimension"),
    ("spo-adapter", "--save-adapter is not available with --loss spo"),
    ("template-file", "chat template not found"),
])
def test_conversational_data_without_a_template_and_bad_spo_options_end_in_one_clear_error(
        tmp_path, two_dimensions, capsys, case, message):
    chat = write_jsonl(tmp_path / "chat.jsonl", conversational_rows(20))
    base = ["pref", "--output-dir", str(tmp_path / "out"), "--max-steps", "1", *FAST]
    args = {
        "chat": ["--data", str(chat)],
        "dimension": ["--data", str(two_dimensions), "--dimensions", "first,honest"],
        "spo-no-dimensions": ["--data", str(two_dimensions), "--loss", "spo"],
        "spo-alpha": ["--data", str(two_dimensions), "--loss", "spo", "--dimensions", "first,second",
                      "--alpha", "0.1,0.2,0.3"],
        "spo-adapter": ["--data", str(two_dimensions), "--loss", "spo", "--dimensions", "first,second",
                        "--save-adapter"],
        "template-file": ["--data", str(chat), "--chat-template", str(tmp_path / "missing.jinja")],
    }[case]
    assert train_main([*base, *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, err


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as done:
        train_main(["pref", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for name in pref.PrefConfig.__dataclass_fields__:
        assert f"--{name.replace('_', '-')}" in text, name
    for preset in options.PRESETS:
        assert preset in text


def test_spo_rounds_on_pku_saferlhf_schema_data(tmp_path):
    """The dimensions come from the PKU-SafeRLHF adapter (better_response_id -> helpful, safer_response_id ->
    harmless), the categories are its 19 harm categories."""
    from guard.adapters import PKU_SAFERLHF_CATEGORIES

    rows = []
    for k in range(48):
        harm = PKU_SAFERLHF_CATEGORIES[k % 3]
        rows.append({"prompt": f"Question {k}: what now?", "response_0": f"maybe later {k}.",
                     "response_1": "Stay safe here.", "is_response_0_safe": False, "is_response_1_safe": True,
                     "better_response_id": k % 2, "safer_response_id": 1,
                     "response_0_harm_category": {c: c == harm for c in PKU_SAFERLHF_CATEGORIES},
                     "response_1_harm_category": {c: False for c in PKU_SAFERLHF_CATEGORIES},
                     "response_0_severity_level": 1, "response_1_severity_level": 0})
    data = write_jsonl(tmp_path / "pku.jsonl", rows)
    out = tmp_path / "spo"
    assert train_main(["pref", "--data", str(data), "--output-dir", str(out), *FAST, "--loss", "spo",
                       "--dimensions", "harmless,helpful", "--max-steps", "2", "--eval-fraction", "0.25"]) == 0
    table = spo_table(out)
    assert [r["trained"] for r in table] == ["-", "harmless", "helpful"]
    summary = jsonfiles.read_json(out / "round-1-harmless" / "summary.json")
    assert summary["n_pairs"] == 12 and set(summary["categories"]) <= set(PKU_SAFERLHF_CATEGORIES)
