"""Tests for guard.audit: reward_summary against direct guard.metrics / scipy computations, the
rewards.jsonl round trip (bit-identical floats, identical summary) and its errors."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
import torch
from scipy import stats

from guard import audit, metrics


def _data(n: int, names: list[str], seed: int, shift: float = 0.5):
    """Pairs with a category-dependent reward shift (category k adds k * shift)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(names), n)
    cats = [names[k] for k in idx]
    chosen = rng.normal(size=n) + 0.3 + idx * shift
    rejected = rng.normal(size=n) + idx * shift
    return chosen, rejected, cats


def _all_rewards(chosen, rejected, cats):
    return np.concatenate([chosen, rejected]), np.asarray(list(cats) * 2, dtype=object)


def test_two_categories_match_direct_computation():
    chosen, rejected, cats = _data(120, ["harmless", "helpful"], seed=1, shift=1.0)
    s = audit.reward_summary(chosen, rejected, cats, seed=3)
    rewards, rc = _all_rewards(chosen, rejected, cats)
    a, b = rewards[rc == "harmless"], rewards[rc == "helpful"]

    assert s["n_pairs"] == 120
    assert s["accuracy"] == np.mean(chosen > rejected)
    ref = stats.ks_2samp(a, b, method="exact")
    assert abs(s["ks"] - ref.statistic) < 1e-12
    assert abs(s["ks_pvalue"] - ref.pvalue) < 1e-6
    assert abs(s["w1"] - stats.wasserstein_distance(a, b)) < 1e-10
    assert s["worst_pair"] == ["harmless", "helpful"]
    assert s["binned_mi"] == metrics.binned_mutual_information(rewards, rc, bins=50)
    aud = metrics.predictability_audit(rewards, rc, folds=5, seed=3)
    assert s["audit_auc"] == aud["auc_mean"] and s["audit_auc_sd"] == aud["auc_std"]
    assert s["audit_balanced_accuracy"] == aud["ba_mean"]
    assert s["audit_balanced_accuracy_sd"] == aud["ba_std"]
    assert s["audit_auc"] > 0.6  # the shift is visible to the audit
    assert s["audit_excluded"] == []
    for name, group in (("harmless", a), ("helpful", b)):
        assert s["categories"][name]["count"] == cats.count(name)
        assert s["categories"][name]["mean_reward"] == pytest.approx(group.mean(), rel=1e-12)
    assert list(s["categories"]) == ["harmless", "helpful"]
    assert json.loads(json.dumps(s)) == s  # JSON-ready: plain types only


def test_four_categories_take_the_worst_pair():
    names = ["a", "b", "c", "d"]
    chosen, rejected, cats = _data(160, names, seed=2, shift=0.5)
    s = audit.reward_summary(chosen, rejected, cats, seed=0, bins=20)
    rewards, rc = _all_rewards(chosen, rejected, cats)
    ks = {(x, y): stats.ks_2samp(rewards[rc == x], rewards[rc == y], method="exact")
          for x, y in itertools.combinations(names, 2)}
    worst = max(ks, key=lambda k: ks[k].statistic)
    assert s["worst_pair"] == list(worst) == ["a", "d"]  # the largest shift
    assert abs(s["ks"] - ks[worst].statistic) < 1e-12
    assert abs(s["ks_pvalue"] - ks[worst].pvalue) < 1e-6
    w1 = max(stats.wasserstein_distance(rewards[rc == x], rewards[rc == y]) for x, y in ks)
    assert abs(s["w1"] - w1) < 1e-10
    assert s["binned_mi"] == metrics.binned_mutual_information(rewards, rc, bins=20)
    assert s["audit_auc"] == metrics.predictability_audit(rewards, rc, folds=5, seed=0)["auc_mean"]
    assert sorted(s["categories"]) == names
    assert sum(v["count"] for v in s["categories"].values()) == 160


def test_pairwise_distances_lists_every_pair_and_skips_single_values():
    rng = np.random.default_rng(0)
    groups = {"z": rng.normal(size=9), "a": rng.normal(size=7), "m": rng.normal(1, 1, size=8), "one": [0.5]}
    out = audit.pairwise_distances(groups)
    assert [(p["a"], p["b"]) for p in out] == [("a", "m"), ("a", "z"), ("m", "z")]
    for p in out:
        ref = stats.ks_2samp(groups[p["a"]], groups[p["b"]], method="exact")
        assert abs(p["ks"] - ref.statistic) < 1e-12 and abs(p["ks_pvalue"] - ref.pvalue) < 1e-6
        assert abs(p["w1"] - stats.wasserstein_distance(groups[p["a"]], groups[p["b"]])) < 1e-10


def test_category_with_a_single_pair_is_compared_but_left_out_of_the_audit():
    chosen, rejected, cats = _data(80, ["x", "y"], seed=4)
    chosen = np.append(chosen, 2.0)
    rejected = np.append(rejected, -1.0)
    cats = cats + ["rare"]
    s = audit.reward_summary(chosen, rejected, cats)
    assert s["categories"]["rare"] == {"count": 1, "mean_reward": 0.5}
    assert s["audit_excluded"] == ["rare"]
    rewards, rc = _all_rewards(chosen, rejected, cats)
    keep = rc != "rare"
    assert s["audit_auc"] == metrics.predictability_audit(rewards[keep], rc[keep], seed=0)["auc_mean"]
    # Its 2 rewards still count for KS / W1 / MI.
    pairs = audit.pairwise_distances({n: rewards[rc == n] for n in ("rare", "x", "y")})
    assert s["ks"] == max(p["ks"] for p in pairs)
    assert s["binned_mi"] == metrics.binned_mutual_information(rewards, rc)


def test_one_category_gives_none_for_comparisons():
    chosen, rejected, cats = _data(30, ["only"], seed=5)
    s = audit.reward_summary(chosen, rejected, cats)
    for key in ("ks", "ks_pvalue", "w1", "worst_pair", "binned_mi", "audit_auc", "audit_auc_sd",
                "audit_balanced_accuracy", "audit_balanced_accuracy_sd"):
        assert s[key] is None, key
    assert s["n_pairs"] == 30 and s["accuracy"] == np.mean(chosen > rejected)
    assert s["categories"]["only"]["count"] == 30


def test_two_categories_too_small_for_the_audit():
    s = audit.reward_summary([1.0, 2.0, 3.0], [0.0, 3.0, 1.0], ["a", "a", "b"])
    assert s["audit_auc"] is None and s["audit_excluded"] == ["a", "b"]
    assert s["ks"] == 0.25 and s["w1"] == 0.5  # a = {0, 1, 2, 3}, b = {1, 3}
    assert s["accuracy"] == 2 / 3


def test_deterministic_and_input_types_agree():
    chosen, rejected, cats = _data(60, ["p", "q"], seed=6)
    c32, r32 = chosen.astype(np.float32), rejected.astype(np.float32)
    ref = audit.reward_summary(c32.astype(np.float64), r32.astype(np.float64), cats, seed=1)
    assert audit.reward_summary(c32, r32, cats, seed=1) == ref
    assert audit.reward_summary(torch.from_numpy(c32), torch.from_numpy(r32), np.array(cats), seed=1) == ref
    assert audit.reward_summary(c32.tolist(), r32.tolist(), tuple(cats), seed=1) == ref


@pytest.mark.parametrize(
    "args, match",
    [
        (([], [], []), "no reward pairs"),
        (([1.0], [0.0, 1.0], ["a"]), "same length"),
        (([1.0, float("nan")], [0.0, 1.0], ["a", "b"]), r"chosen contains NaN or inf \(first at index 1\)"),
        (([1.0, 2.0], [0.0, 1.0], ["a", 3]), r"categories\[1\] must be a string"),
    ],
)
def test_bad_summary_input(args, match):
    with pytest.raises(ValueError, match=match):
        audit.reward_summary(*args)


def test_bad_summary_options():
    with pytest.raises(ValueError, match="audit_folds must be an integer >= 2"):
        audit.reward_summary([1.0], [0.0], ["a"], audit_folds=1)
    with pytest.raises(ValueError, match="bins"):
        audit.reward_summary([1.0], [0.0], ["a"], bins=0)


# ---------------------------------------------------------------------------
# rewards.jsonl
# ---------------------------------------------------------------------------


def test_rewards_by_category_is_chosen_then_rejected_in_sorted_name_order():
    cats = ["b", "a", "b", "c", "a"]
    chosen, rejected = np.arange(5.0), 10 + np.arange(5.0)
    groups = audit.rewards_by_category(chosen, rejected, cats)
    assert list(groups) == ["a", "b", "c"]
    assert groups["a"].tolist() == [1.0, 4.0, 11.0, 14.0] and groups["b"].tolist() == [0.0, 2.0, 10.0, 12.0]
    assert groups["c"].tolist() == [3.0, 13.0]
    with pytest.raises(ValueError, match="same length"):
        audit.rewards_by_category(chosen, rejected, cats[:4])


def test_jsonl_round_trip_is_bit_identical(tmp_path):
    chosen, rejected, cats = _data(70, ["helpful", 'harm "less" ü'], seed=7)
    # float32 rewards as a model produces them, plus awkward float64 values
    chosen = chosen.astype(np.float32)
    rejected = np.concatenate([rejected[:-4], [1 / 3, 1e-300, -0.0, 123456789.123456789]])
    path = audit.write_rewards_jsonl(tmp_path / "run" / "rewards.jsonl", cats, chosen, rejected)
    assert not list(path.parent.glob("*.tmp"))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 70
    assert set(json.loads(lines[0])) == {"category", "chosen_reward", "rejected_reward"}

    table = audit.read_rewards_jsonl(path)
    assert len(table) == 70 and table.categories == cats
    assert table.chosen.dtype == np.float64 and table.rejected.dtype == np.float64
    assert np.array_equal(table.chosen.view(np.int64), chosen.astype(np.float64).view(np.int64))
    assert np.array_equal(table.rejected.view(np.int64), rejected.view(np.int64))  # -0.0 kept too
    assert audit.reward_summary(table.chosen, table.rejected, table.categories) == \
        audit.reward_summary(chosen, rejected, cats)


def test_jsonl_skips_blank_lines_and_ignores_extra_keys(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"category": "a", "chosen_reward": 1, "rejected_reward": -2.5, "id": 7}\n\n  \n'
                    '{"category": "b", "chosen_reward": 0.5, "rejected_reward": 0.25}\n')
    table = audit.read_rewards_jsonl(path)
    assert table.categories == ["a", "b"]
    assert table.chosen.tolist() == [1.0, 0.5] and table.rejected.tolist() == [-2.5, 0.25]


GOOD = '{"category": "a", "chosen_reward": 1.0, "rejected_reward": 0.0}'


@pytest.mark.parametrize(
    "line, reason",
    [
        ('{"category": "a", "chosen_reward": 1.0', "not valid JSON"),
        ("[1, 2, 3]", "expected a JSON object, got list"),
        ('{"category": "a", "chosen_reward": 1.0}', "missing key(s) 'rejected_reward'"),
        ('{"chosen_reward": 1.0, "rejected_reward": 0.0}', "missing key(s) 'category'"),
        ('{"category": "a", "chosen_reward": "1.0", "rejected_reward": 0.0}', "'chosen_reward' must be a number"),
        ('{"category": "a", "chosen_reward": 1.0, "rejected_reward": true}', "'rejected_reward' must be a number"),
        ('{"category": "a", "chosen_reward": NaN, "rejected_reward": 0.0}', "'chosen_reward' must be finite"),
        ('{"category": 3, "chosen_reward": 1.0, "rejected_reward": 0.0}', "'category' must be a non-empty string"),
        ('{"category": "", "chosen_reward": 1.0, "rejected_reward": 0.0}', "'category' must be a non-empty string"),
    ],
)
def test_jsonl_bad_line_names_path_and_line(tmp_path, line, reason):
    path = tmp_path / "rewards.jsonl"
    path.write_text(f"{GOOD}\n{GOOD}\n{line}\n{GOOD}\n")
    with pytest.raises(ValueError, match=re.escape(f"{path} line 3: {reason}")):
        audit.read_rewards_jsonl(path)


def test_jsonl_empty_file_and_bad_writes(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}: no reward rows")):
        audit.read_rewards_jsonl(path)
    with pytest.raises(ValueError, match="same length"):
        audit.write_rewards_jsonl(tmp_path / "x.jsonl", ["a"], [1.0, 2.0], [0.0, 1.0])
    with pytest.raises(ValueError, match=r"rejected contains NaN or inf \(first at index 0\)"):
        audit.write_rewards_jsonl(tmp_path / "x.jsonl", ["a"], [1.0], [float("inf")])
    with pytest.raises(ValueError, match=r"categories\[0\] must be a string"):
        audit.write_rewards_jsonl(tmp_path / "x.jsonl", [0], [1.0], [0.0])
    assert not (tmp_path / "x.jsonl").exists()
