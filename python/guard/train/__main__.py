"""`python -m guard.train`: guard's training entry point.

The transformer recipes (`rm`, `pref`, `ppo`) are not built yet; they arrive with the trainer issues.
Until then the default job is a small but real run of guard's reference math, fused-op CPU path and
fairness adversary: it fits linear Bradley–Terry reward models on synthetic preference pairs from two
categories ("helpful", "harmless") whose responses differ in a feature the true reward likes, so plain
BT rewards shift by category; a GUARD adversary (λ = 0.2 by default) removes the shift. Both models are
audited with the GUARD metrics (KS, Wasserstein-1, binned MI, predictability AUC), side by side.

    python -m guard.train            # about ten seconds on a 2-core CPU
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from guard import metrics, ops
from guard.fairness import CategoryAdversary, adversary_penalty, adversary_step

CATEGORIES = ("helpful", "harmless")


def synthetic_pairs(num_pairs: int, gen: torch.Generator, *, shift: float = 1.5, dim: int = 6):
    """Pairs of responses (features) from one category each, labelled by a Bradley–Terry draw on a hidden
    linear reward. Category 1's responses sit `shift` higher on feature 0, which the reward likes. The
    last feature is a category flag no preference depends on (in an LM: the model can tell the topic)."""
    true_w = torch.randn(dim, generator=gen)
    true_w[0] = true_w[0].abs() + 1
    cats = torch.randint(0, len(CATEGORIES), (num_pairs,), generator=gen)
    a, b = torch.randn(num_pairs, dim, generator=gen), torch.randn(num_pairs, dim, generator=gen)
    a[:, 0] += shift * cats
    b[:, 0] += shift * cats
    a_wins = torch.rand(num_pairs, generator=gen) < torch.sigmoid((a - b) @ true_w)
    flag = cats.float()[:, None]
    chosen = torch.cat([torch.where(a_wins[:, None], a, b), flag], 1)
    rejected = torch.cat([torch.where(a_wins[:, None], b, a), flag], 1)
    return chosen, rejected, cats


def train_linear_rm(chosen, rejected, cats, *, lambda_adv: float, steps: int, batch: int, gen: torch.Generator,
                    mode: str = "rewards", objective: str = "ce") -> torch.Tensor:
    """The alternating schedule of DESIGN.md §3 on a linear reward r = w·x: (1) BT loss and category
    moments, (2) an adversary step on detached features, (3) a model step on L_BT − λ·penalty.
    The demo's adversary reads each pair's rewards: with two categories the moments mode gives it two
    samples a batch, and with the "ce" objective the game then oscillates on this toy (tests/test_fairness.py)."""
    weight = torch.zeros(chosen.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([weight], lr=0.03)
    with torch.random.fork_rng():  # the adversary's initial weights from `gen` too: runs repeat exactly
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        adversary = CategoryAdversary(len(CATEGORIES), mode=mode, hidden=32)
    adv_optimizer = torch.optim.Adam(adversary.parameters(), lr=1e-2)
    for _ in range(steps):
        idx = torch.randint(0, chosen.shape[0], (batch,), generator=gen)
        r_c, r_r, c = chosen[idx] @ weight, rejected[idx] @ weight, cats[idx]
        out = ops.bt_loss(r_c, r_r, categories=c, num_categories=len(CATEGORIES))
        features, targets = adversary.features(out.moments, out.counts, r_c, r_r, c)
        adversary_step(adversary, adv_optimizer, features, targets)
        loss = out.loss - lambda_adv * adversary_penalty(adversary, features, targets, objective=objective)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return weight.detach()


def audit(weight, chosen, rejected, cats, seed: int) -> dict[str, float]:
    """Pair accuracy and the GUARD statistics between the two categories' reward distributions."""
    r_c, r_r = chosen @ weight, rejected @ weight
    rewards, reward_cats = torch.cat([r_c, r_r]).numpy(), torch.cat([cats, cats]).numpy()
    by_cat = [rewards[reward_cats == k] for k in range(len(CATEGORIES))]
    ks, ks_p = metrics.ks_distance(*by_cat)
    auc = metrics.predictability_audit(rewards, reward_cats, seed=seed)
    return {"accuracy": (r_c > r_r).float().mean().item(), "KS": ks, "KS p": ks_p, "W1": metrics.wasserstein1(*by_cat),
            "binned MI": metrics.binned_mutual_information(rewards, reward_cats), "audit AUC": auc["auc_mean"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m guard.train",
        description="Default job (until the trainer recipes land): linear Bradley-Terry reward models on "
        "synthetic two-category pairs, plain and with GUARD's fairness adversary, audited side by side.",
    )
    parser.add_argument("--pairs", type=int, default=6000, help="number of synthetic preference pairs")
    parser.add_argument("--steps", type=int, default=300, help="Adam steps per model")
    parser.add_argument("--batch", type=int, default=256, help="pairs per step")
    parser.add_argument("--lambda-adv", type=float, default=0.2, help="fairness weight of the fair model")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, models and audit")
    args = parser.parse_args(argv)

    print("guard: the rm/pref/ppo recipes are not built yet; running the reference-math demo instead.")
    started = time.perf_counter()
    data_gen = torch.Generator().manual_seed(args.seed)
    chosen, rejected, cats = synthetic_pairs(args.pairs, data_gen)
    split = int(0.9 * args.pairs)  # fixed 10% held out
    train, held_out = slice(0, split), slice(split, None)
    results = {}
    for name, lam in (("baseline (λ=0)", 0.0), (f"fair (λ={args.lambda_adv:g})", args.lambda_adv)):
        gen = torch.Generator().manual_seed(args.seed + 1)  # same batches for both models
        weight = train_linear_rm(chosen[train], rejected[train], cats[train], lambda_adv=lam, steps=args.steps,
                                 batch=args.batch, gen=gen)
        results[name] = audit(weight, chosen[held_out], rejected[held_out], cats[held_out], args.seed)

    names = list(results)
    print(f"{'held-out metric':18s}" + "".join(f"{n:>18s}" for n in names))
    for key in results[names[0]]:
        print(f"{key:18s}" + "".join(f"{results[n][key]:>18.4g}" for n in names))
    print(f"({time.perf_counter() - started:.1f}s) The fair model keeps the pair accuracy while its rewards stop "
          "telling the categories apart.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
