"""guard: fair reward models and preference-aligned policies.

Public API (DESIGN.md §2), re-exported explicitly:

    import guard
    guard.pair_losses(chosen_logratios, rejected_logratios, loss_type="sigmoid", beta=0.1)
    guard.category_moments(rewards, categories, num_categories)
    guard.metrics.ks_distance(rewards_a, rewards_b)
    guard.data.dedup(prompts, responses)
    guard.ops.fused_preference_loss(hidden, lm_head_weight, labels, ref_logps, loss_type="sigmoid")
"""

from guard import data, fairness, losses, metrics, ops
from guard.losses import bt_pair_losses, category_moments, pair_losses, spo_pair_losses

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "bt_pair_losses",
    "category_moments",
    "data",
    "fairness",
    "losses",
    "metrics",
    "ops",
    "pair_losses",
    "spo_pair_losses",
]
