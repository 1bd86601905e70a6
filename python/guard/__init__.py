"""guard: fair reward models and preference-aligned policies.

The public API, re-exported explicitly:

    import guard
    guard.pair_losses(chosen_logratios, rejected_logratios, loss_type="sigmoid", beta=0.1)
    guard.category_moments(rewards, categories, num_categories)
    guard.metrics.ks_distance(rewards_a, rewards_b)
    guard.data.dedup(prompts, responses)
    guard.ops.fused_preference_loss(hidden, lm_head_weight, labels, ref_logps, loss_type="sigmoid")

The submodules load on first use (PEP 562), so `import guard` and the command lines' `--help` do not wait
for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_SUBMODULES = ("data", "fairness", "losses", "metrics", "ops")
_FROM_LOSSES = ("bt_pair_losses", "category_moments", "pair_losses", "spo_pair_losses")

__all__ = ["__version__", *sorted(_SUBMODULES + _FROM_LOSSES)]

if TYPE_CHECKING:
    from guard import data, fairness, losses, metrics, ops
    from guard.losses import bt_pair_losses, category_moments, pair_losses, spo_pair_losses


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"guard.{name}")
    if name in _FROM_LOSSES:
        return getattr(importlib.import_module("guard.losses"), name)
    raise AttributeError(f"module 'guard' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
