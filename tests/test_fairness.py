"""guard.fairness: the adversary learns what it can see, its penalty moves only the model, absent
categories give no sample, and the alternating schedule of DESIGN.md §3 removes a category-dependent
reward shift from a linear Bradley–Terry model without costing pair accuracy."""

import pytest
import torch

from guard import metrics, ops
from guard.fairness import IGNORE, CategoryAdversary, adversary_penalty, adversary_step

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




def train_and_audit(lambda_adv, mode, objective, seed=0):
    """A linear BT reward model on the synthetic two-category pairs above, audited on 1000 held-out pairs."""
    gen = torch.Generator().manual_seed(seed)
    chosen, rejected, cats = synthetic_pairs(6000, gen)
    weight = train_linear_rm(chosen[:5000], rejected[:5000], cats[:5000], lambda_adv=lambda_adv, steps=300,
                             batch=256, gen=gen, mode=mode, objective=objective)
    r_c, r_r, c = chosen[5000:] @ weight, rejected[5000:] @ weight, cats[5000:]
    rewards, reward_cats = torch.cat([r_c, r_r]).numpy(), torch.cat([c, c]).numpy()
    return (r_c > r_r).float().mean().item(), metrics.binned_mutual_information(rewards, reward_cats), weight


@pytest.mark.parametrize("mode,objective,shrink", [
    ("rewards", "ce", 0.5), ("rewards", "entropy", 0.5), ("moments", "entropy", 0.5),
    # Two categories give the moments adversary two samples a batch; maximising its cross-entropy then makes
    # the game oscillate (the model flips which category looks which), so it removes less of the shift.
    ("moments", "ce", 0.75),
])
def test_fair_training_removes_the_category_shift(mode, objective, shrink):
    base_acc, base_mi, base_w = train_and_audit(0.0, mode, objective)
    fair_acc, fair_mi, fair_w = train_and_audit(0.2, mode, objective)
    assert base_w[-1] == 0  # plain BT never touches the category flag: it cancels in r_c − r_r
    assert base_mi > 0.05, base_mi  # the baseline's rewards do depend on the category
    assert fair_mi < shrink * base_mi, (fair_mi, base_mi)
    assert abs(fair_acc - base_acc) <= 0.03, (fair_acc, base_acc)
    assert fair_w[-1] < -0.5  # the fair model learned to cancel the shift with the flag


def test_adversary_learns_separable_categories():
    gen = torch.Generator().manual_seed(1)
    adversary = CategoryAdversary(3, mode="rewards", hidden=16)
    optimizer = torch.optim.Adam(adversary.parameters(), lr=1e-2)
    cats = torch.randint(0, 3, (300,), generator=gen)
    features = torch.randn(300, 2, generator=gen) * 0.3 + cats[:, None].float() * 2
    losses = [adversary_step(adversary, optimizer, features, cats).item() for _ in range(200)]
    assert losses[-1] < 0.2 < losses[0]


def test_penalty_reaches_the_features_not_the_adversary():
    adversary = CategoryAdversary(2, mode="rewards")
    features = torch.randn(10, 2, requires_grad=True)
    targets = torch.randint(0, 2, (10,))
    for objective in ("ce", "entropy"):
        features.grad = None
        adversary_penalty(adversary, features, targets, objective=objective).backward()
        assert features.grad is not None and features.grad.abs().sum() > 0
        assert all(p.grad is None for p in adversary.parameters())
        assert all(p.requires_grad for p in adversary.parameters())  # restored afterwards


def test_absent_categories_give_no_sample():
    adversary = CategoryAdversary(4, mode="moments")
    rewards = torch.randn(6, requires_grad=True)
    cats = torch.tensor([0, 2, 2, 0, 0, 2])
    out = ops.bt_loss(rewards[:3], rewards[3:], categories=cats[:3], num_categories=4)
    features, targets = adversary.features(out.moments, out.counts, rewards[:3], rewards[3:], cats[:3])
    assert targets.tolist() == [0, IGNORE, 2, IGNORE] and features.shape == (4, 8)
    penalty = adversary_penalty(adversary, features, targets)
    expected = torch.nn.functional.cross_entropy(adversary(features[[0, 2]]), torch.tensor([0, 2]))
    torch.testing.assert_close(penalty, expected)  # absent categories weigh nothing
    penalty.backward()
    assert rewards.grad is not None and torch.isfinite(rewards.grad).all()
    none_present = torch.full((4,), IGNORE)
    assert adversary_step(adversary, torch.optim.SGD(adversary.parameters(), lr=0.1), features, none_present).item() == 0.0


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="adversary mode must be one of"):
        CategoryAdversary(2, mode="logits")
    with pytest.raises(ValueError, match="at least 2 categories"):
        CategoryAdversary(1)
    with pytest.raises(ValueError, match="adversary objective must be one of"):
        adversary_penalty(CategoryAdversary(2, mode="rewards"), torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), objective="kl")
    with pytest.raises(ValueError, match="moments mode needs the moments"):
        CategoryAdversary(2).features(None, None, torch.zeros(2), torch.zeros(2), torch.zeros(2, dtype=torch.long))


def test_chance_objective_is_zero_exactly_when_the_adversary_predicts_the_prior():
    from guard.fairness import _target_shares

    adversary = CategoryAdversary(3, mode="rewards", hidden=8)
    targets = torch.tensor([0, 0, 0, 1, 2, 2, IGNORE])
    prior = _target_shares(targets, 3)
    torch.testing.assert_close(prior, torch.tensor([3 / 6, 1 / 6, 2 / 6]))
    with torch.no_grad():  # an adversary that ignores its input and predicts the prior
        adversary.net[2].weight.zero_()
        adversary.net[2].bias.copy_(prior.log())
    features = torch.randn(7, 2, requires_grad=True)
    at_chance = adversary_penalty(adversary, features, targets, objective="chance")
    assert at_chance.item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        adversary.net[2].bias.copy_(torch.tensor([2.0, -1.0, 0.0]))
    off = adversary_penalty(adversary, features, targets, objective="chance")
    assert off.item() < -0.05  # −KL(prior ‖ q) < 0 away from chance
    off.backward()
    assert features.grad is not None


def test_balanced_batches_hold_every_category_and_change_nothing_else():
    import numpy as np

    from guard.train.batches import balanced_epoch_order
    from guard.train.loop import epoch_order

    categories = np.array([0] * 150 + [1] * 40 + [2] * 7 + [3] * 3)
    order = balanced_epoch_order(categories, 16, seed=3, epoch=1)
    batches = order[: (200 // 16) * 16].reshape(-1, 16)
    assert all(set(categories[b]) == {0, 1, 2, 3} and len(set(b)) == 16 for b in batches)
    plain = epoch_order(200, 3, 1)
    changed = (batches != plain[: batches.size].reshape(-1, 16)).sum(1)
    missing = [4 - len(set(categories[b])) for b in plain[: batches.size].reshape(-1, 16)]
    assert changed.tolist() == missing  # one swap per missing category, nothing else moves
    assert np.array_equal(order, balanced_epoch_order(categories, 16, seed=3, epoch=1))  # (seed, epoch) alone
    assert not np.array_equal(order, balanced_epoch_order(categories, 16, seed=3, epoch=2))
    halves = np.array([0, 1] * 100)  # batches that already hold both categories: the plain order
    assert np.array_equal(balanced_epoch_order(halves, 16, seed=0, epoch=0), epoch_order(200, 0, 0))
    many = np.arange(200) % 20  # more categories than a batch holds: the plain order
    assert np.array_equal(balanced_epoch_order(many, 16, seed=0, epoch=0), epoch_order(200, 0, 0))
