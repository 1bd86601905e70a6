"""`python -m guard.eval diversity`: semantic diversity of a policy's responses (GUARD B.2).

    python -m guard.eval diversity --policy runs/ppo-curious/model --baseline-policy runs/ppo/model \\
        --prompts lima_prompts.jsonl --num-prompts 1030 --output-dir OUT
    python -m guard.eval diversity ... --embedding-model /models/all-MiniLM-L6-v2     # any local model folder

Each policy answers the same prompts with the same seed and sampling settings (GUARD B.2: temperature 0.9,
top-p 0.95, 100 new tokens); the responses are embedded with a sentence-transformers model (default
all-mpnet-base-v2, mean pooling, l2-normalized) and the semantic diversity is the mean pairwise cosine
distance, 2/(n(n−1)) Σ_{i<j} (1 − cos(e_i, e_j)). With --baseline-policy, a paired bootstrap over the
prompts (--bootstrap 1000 resamples, guard.metrics.paired_bootstrap_diversity) gives the difference
policy − baseline with its confidence interval and a two-sided p-value.

Needs the `sentence-transformers` package (pip install 'guard[eval]').
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from guard import metrics, plots
from guard.config import ConfigError, option
from guard.eval import common
from guard.eval.parity import PromptOptions, answer_all, check_prompt_options, load_prompts
from guard.report import Report

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-mpnet-base-v2"


@dataclass
class DiversityConfig(PromptOptions):
    embedding_model: str = option(DEFAULT_EMBEDDING_MODEL, "sentence-transformers model that embeds the responses: "
                                  "a hub name or a local model folder")
    bootstrap: int = option(1000, "paired bootstrap resamples for the comparison with --baseline-policy", domain=">= 1")
    confidence: float = option(0.95, "level of the bootstrap confidence interval", domain="(0, 1)")
    # GUARD B.2's sampling
    max_new_tokens: int = option(100, "longest response sampled", domain=">= 1")
    temperature: float = option(0.9, "sampling temperature", domain="> 0")
    top_p: float = option(0.95, "nucleus sampling: keep the smallest set of tokens with this probability",
                          domain="(0, 1]")


def load_embedder(model_name: str, device):
    """The sentence-transformers model (a hub name or a local folder), or one readable error."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ConfigError("the diversity evaluation needs sentence-transformers: pip install 'guard[eval]'") from err
    try:
        return SentenceTransformer(model_name, device=str(device))
    except Exception as err:  # noqa: BLE001 - a missing or unreadable model becomes one readable message
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"cannot load the embedding model {model_name}: {reason}") from err


def embed(embedder, texts: list[str], batch_size: int) -> np.ndarray:
    """float64 [n, d] l2-normalized sentence embeddings of `texts`."""
    vectors = embedder.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                              show_progress_bar=len(texts) > 10 * batch_size)
    return np.asarray(vectors, dtype=np.float64)


def mean_distances(embeddings: np.ndarray) -> np.ndarray:
    """Each response's mean cosine distance to the others (their mean is the semantic diversity)."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    distance = 1.0 - unit @ unit.T
    np.fill_diagonal(distance, 0.0)
    return distance.sum(axis=1) / (len(unit) - 1)


def run(cfg: DiversityConfig) -> dict:
    check_prompt_options(cfg)
    if cfg.bootstrap < 1 or not 0 < cfg.confidence < 1:
        raise ConfigError("--bootstrap must be positive and --confidence in (0, 1)")
    with common.session(cfg) as (dist, out, autocast):
        prompts, cmap, rows = load_prompts(cfg)
        embedder = load_embedder(cfg.embedding_model, dist.device) if dist.is_main else None  # fail before generating
        labels, answers, kept = answer_all(cfg, prompts, cmap, rows, dist, autocast, out)
        if len(kept) < 2:
            raise ConfigError(f"semantic diversity needs at least 2 responses; {len(kept)} prompts were answered")
        if not dist.is_main:
            return {}
        embeddings = [embed(embedder, a.responses, cfg.batch_size) for a in answers]
        by_policy = []
        for a, e in zip(answers, embeddings):
            words = [len(text.split()) for text in a.responses]
            by_policy.append({"n": len(a.responses), "diversity": metrics.semantic_diversity(e),
                              "empty_responses": sum(not text.strip() for text in a.responses),
                              "mean_words": float(np.mean(words)), "no_stop_frac": float(1 - np.mean(a.ended)),
                              "set_aside": a.set_aside})
        comparison = None
        if len(answers) > 1:
            comparison = metrics.paired_bootstrap_diversity(embeddings[0], embeddings[1], n_resamples=cfg.bootstrap,
                                                            seed=cfg.seed, confidence=cfg.confidence)
        results = {"command": "diversity", "config": asdict(cfg), "labels": labels, "prompts": len(kept),
                   "policy": by_policy[0], "baseline": by_policy[1] if len(answers) > 1 else None,
                   "comparison": comparison}
        report = write_report(out, cfg, labels, by_policy, comparison, embeddings, prompts, kept, answers)
        common.finish(out, dist, results, report, table(labels, by_policy, comparison, cfg.confidence))
        return results


def table(labels: list[str], by_policy: list[dict], comparison: dict | None, confidence: float) -> list[dict]:
    rows = [{"metric": key.replace("_", " "), **{label: r[key] for label, r in zip(labels, by_policy)}}
            for key in ("diversity", "n", "empty_responses", "mean_words", "no_stop_frac")]
    if comparison is not None:
        rows += [{"metric": "difference vs baseline", labels[0]: comparison["difference"]},
                 {"metric": f"CI low ({100 * confidence:g}%)", labels[0]: comparison["ci_low"]},
                 {"metric": f"CI high ({100 * confidence:g}%)", labels[0]: comparison["ci_high"]},
                 {"metric": "p-value (paired bootstrap)", labels[0]: comparison["pvalue"]}]
    return rows


def write_report(out, cfg: DiversityConfig, labels, by_policy, comparison, embeddings, prompts, kept,
                 answers) -> Report:
    report = Report("Semantic diversity (GUARD B.2)")
    report.text(f"Prompts `{cfg.prompts}` ({len(kept)} answered by every policy); embeddings `{cfg.embedding_model}`; "
                f"seed {cfg.seed}, temperature {cfg.temperature}, top-p {cfg.top_p}, {cfg.max_new_tokens} new tokens. "
                "Diversity = mean pairwise cosine distance of the responses' embeddings."
                + (f" Paired bootstrap: {cfg.bootstrap} resamples of the prompts." if comparison else ""))
    report.table(table(labels, by_policy, comparison, cfg.confidence))
    plots.histograms(out / "distances.png", {label: mean_distances(e) for label, e in zip(labels, embeddings)},
                     "each response's mean cosine distance to the others", "mean cosine distance")
    report.image("distances.png", "mean cosine distance per response")
    report.heading("Samples")
    report.table([{"prompt": prompts.prompts[kept[i]][-200:], **{label: a.responses[i][:200]
                                                                 for label, a in zip(labels, answers)}}
                  for i in range(min(5, len(kept)))])
    return report


def main(argv: list[str] | None = None) -> int:
    run(common.parse_config(DiversityConfig, argv, "python -m guard.eval diversity", __doc__))
    return 0
