"""Evaluation statistics for reward models (GUARD).

The GUARD evaluation asks whether a reward model's output distribution is
independent of a category (helpful vs harmless in HH-RLHF, or PKU-SafeRLHF's
19 harm categories).  This package gathers the statistics used for that
question, one concern per module:

* distances.py: distribution distances between the rewards of two groups:
  :func:`ks_distance` (two-sample Kolmogorov-Smirnov statistic and p-value)
  and :func:`wasserstein1` (1-D earth mover's distance);
  dependence between rewards and categories:
  :func:`binned_mutual_information` (built on :func:`bin_labels`);
  mean-reward gaps: :func:`parity_gap` and :func:`relative_drop`;
* scores.py: classification scores: :func:`roc_auc` and :func:`balanced_accuracy`;
* predictability.py: the post-hoc predictability audit of GUARD appendix A.7:
  :func:`predictability_audit`, which trains a small MLP to predict the
  category from frozen rewards and reports its cross-validated AUC and
  balanced accuracy (AUC 0.5 / balanced accuracy 1/C means "unpredictable");
* significance.py: significance and evaluation statistics:
  :func:`permutation_pvalue` (two-sample permutation test, W1 by default),
  :func:`mcnemar` (paired binary outcomes of two models), :func:`bias_rate`
  (share of stereotypical preferences and its standard error);
* diversity.py: :func:`semantic_diversity` (GUARD B.2) and
  :func:`paired_bootstrap_diversity` (CI and p-value of a diversity
  difference over the same prompts);
* checks.py: the input checks they share.

Every function accepts numpy arrays, torch tensors or plain Python lists,
converts numeric inputs to float64 numpy arrays internally and returns plain
Python floats (or a dict of floats).  Invalid input (empty arrays, NaN/inf,
mismatched lengths, bad parameters) raises :class:`ValueError` with a message
naming the argument and the problem.

Example::

    from guard import metrics

    d, p = metrics.ks_distance(rewards_group_a, rewards_group_b)
    w = metrics.wasserstein1(rewards_group_a, rewards_group_b)
    mi = metrics.binned_mutual_information(rewards, categories, bins=50)
    audit = metrics.predictability_audit(rewards, categories, folds=5, seed=0)
    print(audit["auc_mean"], audit["auc_std"])

Runtime dependencies: numpy and torch only.

Import from here (``guard.metrics.ks_distance``, ``from guard.metrics import mcnemar``); the modules are the
layout, not the API. Tests: tests/test_metrics.py, tests/test_eval_stats.py.
"""

from __future__ import annotations

from guard.metrics.distances import (
    KS_EXACT_MAX_PRODUCT,  # noqa: F401 (a public constant, read by tests)
    _kolmogorov_sf,  # noqa: F401 (tests check it against scipy)
    bin_labels,
    binned_mutual_information,
    ks_distance,
    parity_gap,
    relative_drop,
    wasserstein1,
)
from guard.metrics.diversity import paired_bootstrap_diversity, semantic_diversity
from guard.metrics.predictability import (
    _stratified_folds,  # noqa: F401 (tests check the fold sizes)
    predictability_audit,
)
from guard.metrics.scores import (
    _macro_ovr_auc,  # noqa: F401 (tests check it against scikit-learn)
    balanced_accuracy,
    roc_auc,
)
from guard.metrics.significance import (
    _w1_permuted,  # noqa: F401 (tests check it against wasserstein1)
    bias_rate,
    mcnemar,
    permutation_pvalue,
)

__all__ = [
    "ks_distance",
    "wasserstein1",
    "bin_labels",
    "binned_mutual_information",
    "parity_gap",
    "relative_drop",
    "roc_auc",
    "balanced_accuracy",
    "predictability_audit",
    "permutation_pvalue",
    "mcnemar",
    "bias_rate",
    "semantic_diversity",
    "paired_bootstrap_diversity",
]
