"""`python -m guard.eval rewards`: GUARD's audit of a reward model on preference pairs.

    python -m guard.eval rewards --rewards runs/rm/rewards.jsonl --output-dir runs/rm-audit
    python -m guard.eval rewards --reward-model runs/rm/model --data pairs.jsonl --output-dir runs/rm-audit
    python -m guard.eval rewards --rewards runs/fair/rewards.jsonl --baseline runs/plain/rewards.jsonl --output-dir OUT

The rewards come from a training run's rewards.jsonl (the held-out pairs it scored; the numbers printed
here are then exactly the ones the trainer printed, from the same guard.audit.reward_summary with the same
--seed) or from a reward model that scores --data (its scores are then written to OUT/rewards.jsonl, and the
baseline's to OUT/baseline_rewards.jsonl). Reported, for the model and, with --baseline, for a
second one side by side with the differences:

- pair accuracy (chosen > rejected) and the BT loss mean(−log σ(r_c − r_r)) (no margin);
- per-category reward distributions (quantiles, chosen and rejected means, accuracy);
- KS distance with its p-value and Wasserstein-1 with a permutation p-value between the categories: every
  pair of categories and, with more than two, each against the rest (guard.audit.category_distances); the
  headline KS / W1 are the largest over the pairs of categories, as in the trainer's summary;
- binned mutual information between reward and category (50 equal-width bins);
- the post-hoc predictability audit (GUARD A.7): a fresh 2-layer MLP predicts the category from the frozen
  rewards under stratified 5-fold cross-validation, AUC and balanced accuracy as mean ± sd;
- histograms and ECDFs by category and of chosen vs rejected.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from guard import audit, metrics, plots
from guard.adapters import SCHEMAS
from guard.config import ConfigError, option
from guard.eval import common
from guard.report import Report
from guard.train import inputs, options


@dataclass
class RewardsConfig(common.EvalOptions):
    rewards: str | None = option(None, "a rewards.jsonl a training run wrote (category, chosen_reward, "
                                 "rejected_reward per pair)")
    reward_model: str | None = option(None, "a reward model to score --data with: a directory (the rm recipe's "
                                      "OUTPUT_DIR/model) or a hub name")
    data: str = option("", "preference pairs for --reward-model: a .jsonl/.json/.parquet/.csv file, a folder or a "
                       "hub dataset name (any schema the recipes read)")
    baseline: str | None = option(None, "a second model shown side by side: another rewards.jsonl (with --rewards) "
                                  "or reward model (with --reward-model)")
    split: str = option("train", "dataset split of --data")
    schema: str = option("auto", "schema of --data (auto: detected from the columns)", choices=SCHEMAS)
    dimensions: list[str] | None = option(None, "keep only these preference dimensions of --data")
    categories: list[str] | None = option(None, "category names in order (default: those of --data)")
    max_length: int = option(1024, "tokens per prompt+response sequence; a longer response is cut at its end",
                             domain=">= 2")
    max_prompt_length: int | None = option(None, "keep at most the last N prompt tokens", domain=">= 1")
    chat_template: str | None = option(None, "a Jinja chat template file for conversational --data, when the "
                                       "reward model's tokenizer has none")
    permutations: int = option(1000, "permutations behind each Wasserstein-1 p-value (0: no p-values)", domain=">= 0")
    audit_folds: int = option(5, "folds of the predictability audit", domain=">= 2")
    bins: int = option(50, "equal-width reward bins of the mutual information", domain=">= 2")


#: The compact table: (label, key). The first labels are the trainer's (guard/train/rm.py SUMMARY_ROWS).
ROWS = (("pair accuracy", "accuracy"), ("BT loss", "bt_loss"), ("KS", "ks"), ("KS p-value", "ks_pvalue"),
        ("Wasserstein-1", "w1"), ("W1 p-value", "w1_pvalue"), ("binned MI (nats)", "binned_mi"),
        ("audit AUC", "audit_auc"), ("audit AUC sd", "audit_auc_sd"),
        ("audit balanced accuracy", "audit_balanced_accuracy"),
        ("audit balanced accuracy sd", "audit_balanced_accuracy_sd"), ("pairs", "n_pairs"))


# ----------------------------------------------------------------------------------------------------
# Rewards


@dataclass
class Rewards:
    """Every pair's category name and rewards, and what was set aside getting them."""

    source: str
    categories: list[str]
    chosen: np.ndarray
    rejected: np.ndarray
    set_aside: dict[str, int]


def read_rewards(path: str) -> Rewards:
    if not Path(path).is_file():
        raise ConfigError(f"rewards file not found: {path}")
    try:
        table = audit.read_rewards_jsonl(path)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return Rewards(path, table.categories, table.chosen, table.rejected, {})


def score_data(cfg: RewardsConfig, path: str, dist, autocast: bool) -> Rewards:
    """The reward model at `path` on --data (tokenized with its own tokenizer)."""
    tokenizers = inputs.model_tokenizer(path, None)  # a missing model fails here, before the data
    pairs = inputs.load_pair_set(cfg.data, split=cfg.split, schema=cfg.schema, dimensions=cfg.dimensions,
                                       chat_template=inputs.chat_template_source(tokenizers[0], cfg.chat_template),
                                       tokenizer_name=f"the tokenizer of {path}")
    cmap = inputs.category_map(pairs, cfg.categories)
    data, chosen, rejected = common.score_preferences(path, pairs, cmap, cfg, dist, autocast, max_length=cfg.max_length,
                                                      max_prompt_length=cfg.max_prompt_length, what=f"data {cfg.data}",
                                                      tokenizers=tokenizers)
    return Rewards(path, [cmap.names[c] for c in data.categories], chosen, rejected, data.set_aside)


# ----------------------------------------------------------------------------------------------------
# Analysis


def by_category(r: Rewards) -> dict[str, np.ndarray]:
    return audit.rewards_by_category(r.chosen, r.rejected, r.categories)


def distributions(r: Rewards) -> list[dict]:
    names = np.asarray(r.categories, dtype=object)
    rows = []
    for c, values in by_category(r).items():
        chosen, rejected = r.chosen[names == c], r.rejected[names == c]
        q = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0])
        rows.append({"category": c, "pairs": int(chosen.size), "mean": float(values.mean()), "std": float(values.std()),
                     "min": q[0], "q25": q[1], "median": q[2], "q75": q[3], "max": q[4],
                     "chosen_mean": float(chosen.mean()), "rejected_mean": float(rejected.mean()),
                     "accuracy": float(np.mean(chosen > rejected))})
    return rows


def analyse(r: Rewards, cfg: RewardsConfig) -> dict:
    """The GUARD audit of one model's rewards (a JSON-ready dict; see the module docstring)."""
    try:
        summary = audit.reward_summary(r.chosen, r.rejected, r.categories, seed=cfg.seed,
                                       audit_folds=cfg.audit_folds, bins=cfg.bins)
    except ValueError as err:
        raise ConfigError(f"{r.source}: {err}") from err
    summary["bt_loss"] = float(np.mean(np.logaddexp(0.0, -(r.chosen - r.rejected))))
    summary["mean_margin"] = float(np.mean(r.chosen - r.rejected))
    distances = audit.category_distances(by_category(r), permutations=cfg.permutations, seed=cfg.seed)
    pairs = [d for d in distances if d["kind"] == "pair"]
    widest = max(pairs, key=lambda d: d["w1"]) if pairs else None
    summary["w1_pvalue"] = None if widest is None else widest["w1_pvalue"]
    summary["w1_pair"] = None if widest is None else [widest["a"], widest["b"]]
    summary["distances"] = distances
    summary["distributions"] = distributions(r)
    ks, ks_p = metrics.ks_distance(r.chosen, r.rejected)
    summary["chosen_vs_rejected"] = {"ks": ks, "ks_pvalue": ks_p, "w1": metrics.wasserstein1(r.chosen, r.rejected)}
    summary["set_aside"] = r.set_aside
    return summary


def differences(model: dict, baseline: dict) -> dict:
    """model − baseline of every headline number both have (not of p-values and spreads)."""
    out = {}
    for _, key in ROWS:
        if key.endswith(("pvalue", "_sd")):
            continue
        a, b = model.get(key), baseline.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            out[key] = a - b
    return out


# ----------------------------------------------------------------------------------------------------
# Report


def write_plots(out: Path, r: Rewards, prefix: str, label: str) -> list[tuple[str, str]]:
    """The four plots of one model; returns (file, caption) pairs."""
    groups = by_category(r)
    files = [(f"{prefix}rewards_by_category.png", f"{label}: rewards by category"),
             (f"{prefix}ecdf_by_category.png", f"{label}: reward ECDF by category"),
             (f"{prefix}chosen_vs_rejected.png", f"{label}: chosen vs rejected rewards"),
             (f"{prefix}chosen_vs_rejected_ecdf.png", f"{label}: chosen vs rejected ECDF")]
    plots.reward_histograms(out / files[0][0], groups, files[0][1], pooled_pairs=True)
    plots.ecdf(out / files[1][0], groups, files[1][1], "reward", pooled_pairs=True)
    plots.chosen_rejected_histogram(out / files[2][0], r.chosen, r.rejected, files[2][1])
    plots.ecdf(out / files[3][0], {"chosen": r.chosen, "rejected": r.rejected}, files[3][1], "reward")
    return files


def table(labels: list[str], summaries: list[dict], diff: dict | None) -> list[dict]:
    rows = []
    for label, key in ROWS:
        row = {"metric": label, **{name: s.get(key) for name, s in zip(labels, summaries)}}
        if diff is not None:
            row["difference"] = diff.get(key)
        rows.append(row)
    return rows


def write_report(out: Path, labels: list[str], runs: list[Rewards], summaries: list[dict], diff: dict | None,
                 cfg: RewardsConfig) -> Report:
    report = Report("Reward audit (GUARD)")
    sources = ", ".join(f"{label} = `{r.source}`" for label, r in zip(labels, runs))
    report.text(f"Rewards of {sources}; seed {cfg.seed}, {cfg.audit_folds}-fold audit, {cfg.bins} MI bins, "
                f"{cfg.permutations} permutations per W1 p-value. KS / W1 are the largest over the pairs of "
                "categories (the KS p-value is that pair's, uncorrected for the number of pairs).")
    report.heading("Summary")
    report.table(table(labels, summaries, diff))
    for label, r, s in zip(labels, runs, summaries):
        report.heading(f"{label}: distances between categories")
        report.table(s["distances"], ["a", "b", "n_a", "n_b", "ks", "ks_pvalue", "w1", "w1_pvalue"])
        report.heading(f"{label}: reward distributions by category")
        report.table(s["distributions"])
        cr = s["chosen_vs_rejected"]
        report.text(f"Chosen vs rejected: KS {cr['ks']:.4g} (p = {cr['ks_pvalue']:.3g}), W1 {cr['w1']:.4g}, "
                    f"mean margin {s['mean_margin']:.4g}.")
        if s["audit_excluded"]:
            report.text(f"Left out of the audit (fewer rewards than folds): {', '.join(s['audit_excluded'])}.")
        for file, caption in write_plots(out, r, "" if label == labels[0] else "baseline_", label):
            report.image(file, caption)
        if r.set_aside:
            report.text("Pairs set aside while scoring:")
            report.table([{"reason": k, "count": v} for k, v in r.set_aside.items()])
    return report


# ----------------------------------------------------------------------------------------------------
# Entry point


def check(cfg: RewardsConfig) -> None:
    if bool(cfg.rewards) == bool(cfg.reward_model):
        raise ConfigError("give either --rewards FILE (a training run's rewards.jsonl) or --reward-model DIR with "
                          "--data PAIRS")
    if cfg.reward_model and not cfg.data:
        raise ConfigError("--reward-model needs --data (the preference pairs to score)")
    if cfg.permutations < 0 or cfg.audit_folds < 2 or cfg.bins < 1:
        raise ConfigError("--permutations must be >= 0, --audit-folds >= 2 and --bins >= 1")


def run(cfg: RewardsConfig) -> dict:
    check(cfg)
    with common.session(cfg) as (dist, out, autocast):
        sources = [cfg.rewards or cfg.reward_model] + ([cfg.baseline] if cfg.baseline else [])
        runs = [read_rewards(s) if cfg.rewards else score_data(cfg, s, dist, autocast) for s in sources]
        if not dist.is_main:
            return {}
        labels = common.distinct_labels(sources, ["model", "baseline"][:len(sources)])
        if cfg.reward_model:  # the scores, in the trainer's format: --rewards reads them back
            for r, name in zip(runs, ("rewards.jsonl", "baseline_rewards.jsonl")):
                audit.write_rewards_jsonl(out / name, r.categories, r.chosen, r.rejected)
        summaries = [analyse(r, cfg) for r in runs]
        diff = differences(summaries[0], summaries[1]) if len(runs) > 1 else None
        report = write_report(out, labels, runs, summaries, diff, cfg)
        results = {"command": "rewards", "config": asdict(cfg), "labels": labels, "model": summaries[0],
                   "baseline": summaries[1] if len(runs) > 1 else None, "differences": diff}
        common.finish(out, dist, results, report, table(labels, summaries, diff))
        return results


def main(argv: list[str] | None = None) -> int:
    run(options.parse_config(RewardsConfig, argv, "python -m guard.eval rewards", __doc__))
    return 0
