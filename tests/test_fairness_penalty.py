"""guard.fairness.moment_penalty (the direct penalty on per-category reward moments) against a float64
reference computed from the raw rewards: value and gradients through the fused ops' moments (guard.ops.bt_loss
on both backends, guard.ops.fused_preference_loss back to the hidden states), edge cases (absent categories,
a category of one pair, constant rewards, one category), and the Fairness step that combines it with the
adversary."""

import os

import pytest
import torch

from guard import fairness, ops
from guard.fairness import Fairness, moment_penalty, pooled_moments

needs_triton = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="the Triton kernels need CUDA or TRITON_INTERPRET=1",
)
BACKENDS = [pytest.param("triton", marks=needs_triton), "torch"]
ALL_TERMS = (0.7, 1.3, 0.4, 0.2)


def reference_penalty(chosen, rejected, categories, num_categories, weights, min_count=2, scale_floor=1.0):
    """The penalty from its definition, in float64, one category at a time from the pooled raw rewards."""
    stats, counts = [], []
    for c in range(num_categories):
        values = torch.cat([chosen[categories == c], rejected[categories == c]]).double()
        counts.append(int((categories == c).sum()))
        if values.numel() == 0:
            stats.append(None)
            continue
        mean = values.mean()
        centered = values - mean
        m2, m3, m4 = (centered**2).mean(), (centered**3).mean(), (centered**4).mean()
        flat = m2 <= 1e-12
        skew = torch.zeros((), dtype=torch.float64) if flat else m3 / m2**1.5
        kurt = torch.zeros((), dtype=torch.float64) if flat else m4 / m2**2 - 3
        stats.append((mean, m2, skew, kurt))
    present = [c for c in range(num_categories) if counts[c] > 0]
    total_n = sum(counts)
    w = {c: counts[c] / total_n for c in present}
    grand = sum(w[c] * stats[c][0] for c in present)
    between = sum(w[c] * (stats[c][0] - grand) ** 2 for c in present)
    within = sum(w[c] * stats[c][1] for c in present)
    penalty = weights[0] * between / (between + within + scale_floor)
    shaped = [c for c in present if counts[c] >= min_count]
    if shaped:
        n_shaped = sum(counts[c] for c in shaped)
        for k, weight in ((1, weights[1]), (2, weights[2]), (3, weights[3])):
            vals = {c: torch.log(stats[c][1] + scale_floor) if k == 1 else stats[c][k] for c in shaped}
            center = sum(counts[c] / n_shaped * vals[c] for c in shaped)
            penalty = penalty + weight * sum(counts[c] / n_shaped * (vals[c] - center) ** 2 for c in shaped)
    return penalty


def rewards_batch(batch=29, num_categories=5, seed=0):
    """Rewards of a batch whose category 0 is common and shifted, 1 wide, 2 holds one pair, 3 none, 4 some."""
    gen = torch.Generator().manual_seed(seed)
    categories = torch.randint(0, 5, (batch,), generator=gen)
    categories[categories == 3] = 0
    categories[categories == 2] = 4
    categories[5] = 2
    chosen = torch.randn(batch, generator=gen, dtype=torch.float64) + 1
    rejected = torch.randn(batch, generator=gen, dtype=torch.float64) - 1
    chosen = chosen + 1.5 * (categories == 0) + torch.randn(batch, generator=gen, dtype=torch.float64) * (categories == 1)
    return chosen, rejected ** 3 * 0.3, categories


def test_pooled_moments_are_those_of_the_pooled_rewards():
    chosen, rejected, categories = rewards_batch()
    out = ops.bt_loss(chosen, rejected, categories=categories, num_categories=5)
    pooled = pooled_moments(out.moments)
    for c in range(5):
        values = torch.cat([chosen[categories == c], rejected[categories == c]])
        if values.numel() == 0:
            assert torch.equal(pooled[c], torch.zeros(4, dtype=pooled.dtype))
            continue
        centered = values - values.mean()
        m2 = (centered**2).mean()
        expected = torch.stack([values.mean(), m2, (centered**3).mean() / m2**1.5, (centered**4).mean() / m2**2 - 3])
        torch.testing.assert_close(pooled[c], expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weights", [(1.0, 0.0, 0.0, 0.0), (1.0, 1.0, 0.0, 0.0), ALL_TERMS])
def test_penalty_through_bt_loss_matches_float64_reference(backend, weights):
    chosen, rejected, categories = rewards_batch(seed=3)
    leaves = [chosen.float().requires_grad_(), rejected.float().requires_grad_()]
    with ops.backend(backend):
        out = ops.bt_loss(*leaves, categories=categories, num_categories=5)
    got = moment_penalty(out.moments, out.counts, weights)
    got.backward()
    ref_leaves = [chosen.clone().requires_grad_(), rejected.clone().requires_grad_()]
    expected = reference_penalty(*ref_leaves, categories, 5, weights)
    expected.backward()
    assert got.dtype == torch.float32 and expected.item() > 0.02  # not a trivial zero
    torch.testing.assert_close(got.double(), expected.detach(), rtol=2e-4, atol=1e-6)
    for g, e in zip(leaves, ref_leaves):
        assert torch.isfinite(g.grad).all()
        torch.testing.assert_close(g.grad.double(), e.grad, rtol=2e-3, atol=2e-5 * e.grad.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_penalty_through_fused_preference_loss_reaches_the_hidden_states(backend):
    """Implicit rewards β·(log π − log π_ref) from hidden states and an LM head: the gradient of the penalty
    with respect to the hidden states and the head, against float64 log-softmax and the reference penalty."""
    gen = torch.Generator().manual_seed(11)
    pairs, steps, size, vocab = 9, 5, 12, 37
    hidden = torch.randn(2 * pairs, steps, size, generator=gen, dtype=torch.float64)
    weight = torch.randn(vocab, size, generator=gen, dtype=torch.float64) / size**0.5
    labels = torch.randint(0, vocab, (2 * pairs, steps), generator=gen)
    labels[:, :2] = -100
    ref_logps = -torch.rand(2 * pairs, generator=gen, dtype=torch.float64) * 10
    categories = torch.tensor([0, 0, 1, 1, 1, 0, 2, 0, 1])
    leaves = [hidden.float().requires_grad_(), weight.float().requires_grad_()]
    with ops.backend(backend):
        out = ops.fused_preference_loss(leaves[0], leaves[1], labels, ref_logps.float(), beta=0.5,
                                        categories=categories, num_categories=4)
    got = moment_penalty(out.moments, out.counts, ALL_TERMS)
    got.backward()

    ref_leaves = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
    logsm = torch.log_softmax(ref_leaves[0] @ ref_leaves[1].T, -1)
    token = torch.where(labels != -100, logsm.gather(-1, labels.clamp(min=0)[..., None])[..., 0], 0.0)
    rewards = 0.5 * (token.sum(-1) - ref_logps)
    expected = reference_penalty(rewards[:pairs], rewards[pairs:], categories, 4, ALL_TERMS)
    expected.backward()
    torch.testing.assert_close(got.double(), expected.detach(), rtol=5e-4, atol=1e-6)
    for name, g, e in zip(("hidden", "weight"), leaves, ref_leaves):
        torch.testing.assert_close(g.grad.double(), e.grad, rtol=5e-3, atol=5e-5 * e.grad.abs().max().item(),
                                   msg=lambda m: f"grad {name}: {m}")


def test_equal_distributions_give_zero_and_a_shift_gives_eta_squared():
    base = torch.randn(40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    chosen = torch.cat([base[:20], base[:20]])  # both categories: the same values
    rejected = torch.cat([base[20:], base[20:]])
    categories = torch.tensor([0] * 20 + [1] * 20)
    out = ops.bt_loss(chosen, rejected, categories=categories, num_categories=2)
    assert moment_penalty(out.moments, out.counts, ALL_TERMS).item() == pytest.approx(0.0, abs=1e-7)
    # a shift d of one category: between-variance (d/2)², the variances stay equal
    shifted = ops.bt_loss(chosen + 2.0 * categories, rejected + 2.0 * categories, categories=categories,
                          num_categories=2)
    var = torch.cat([base[:20], base[20:]]).var(unbiased=False).item()
    assert moment_penalty(shifted.moments, shifted.counts, (1, 1, 0, 0)).item() == pytest.approx(
        1 / (1 + var + 1), rel=1e-5)
    # without the floor it is scale-free: multiplying every reward by 10 changes nothing
    scaled = ops.bt_loss(10 * (chosen + 2.0 * categories), 10 * (rejected + 2.0 * categories), categories=categories,
                         num_categories=2)
    assert moment_penalty(scaled.moments, scaled.counts, ALL_TERMS, scale_floor=0.0).item() == pytest.approx(
        moment_penalty(shifted.moments, shifted.counts, ALL_TERMS, scale_floor=0.0).item(), rel=1e-4)
    # with it, rewards far below one logit (a model at initialisation) give a small penalty and small gradients
    tiny = (0.01 * torch.cat([chosen + 2.0 * categories, rejected + 2.0 * categories])).requires_grad_()
    small = ops.bt_loss(tiny[:40], tiny[40:], categories=categories, num_categories=2)
    value = moment_penalty(small.moments, small.counts, (1, 1, 0, 0))
    value.backward()
    assert value.item() < 1e-3 and tiny.grad.abs().max().item() < 0.01


def test_edge_cases_stay_finite():
    # one category present: nothing to compare
    rewards = torch.randn(8, dtype=torch.float64, requires_grad=True)
    out = ops.bt_loss(rewards[:4], rewards[4:], categories=torch.zeros(4, dtype=torch.long), num_categories=3)
    one = moment_penalty(out.moments, out.counts, ALL_TERMS)
    one.backward()
    assert one.item() == 0.0 and torch.isfinite(rewards.grad).all()
    # a category whose rewards are all equal (variance 0): finite, with finite gradients, floor or none
    for floor in (1.0, 0.0):
        chosen = torch.tensor([1.0, 1.0, 0.3, -0.2, 2.0], dtype=torch.float64, requires_grad=True)
        rejected = torch.tensor([1.0, 1.0, -1.0, 0.5, -1.0], dtype=torch.float64)
        categories = torch.tensor([0, 0, 1, 1, 1])
        out = ops.bt_loss(chosen, rejected, categories=categories, num_categories=2)
        flat = moment_penalty(out.moments, out.counts, ALL_TERMS, scale_floor=floor)
        flat.backward()
        assert torch.isfinite(flat) and flat.item() > 0.1 and torch.isfinite(chosen.grad).all()
    # a category of one pair counts for the mean term only (min_count = 2)
    chosen, rejected, categories = rewards_batch(seed=4)
    out = ops.bt_loss(chosen, rejected, categories=categories, num_categories=5)
    assert out.counts[2].item() == 1
    moved = out.moments.clone()
    moved[2, :, 1] *= 50  # a wild variance for the single-pair category: the shape terms ignore it
    kept = moment_penalty(out.moments, out.counts, (0, 1, 1, 1))
    assert moment_penalty(moved, out.counts, (0, 1, 1, 1)).item() == pytest.approx(kept.item(), rel=1e-6)


def test_bad_arguments_are_named():
    moments, counts = torch.zeros(3, 2, 4), torch.ones(3, dtype=torch.long)
    with pytest.raises(ValueError, match="moment weights must be 4 non-negative"):
        moment_penalty(moments, counts, (1.0, -1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=r"moments must be \[C, K, 4\]"):
        moment_penalty(moments[:, :, :3], counts)
    with pytest.raises(ValueError, match="fairness penalty must be one of"):
        Fairness(2, penalty="mmd")
    with pytest.raises(ValueError, match="adversary steps must be at least 1"):
        Fairness(2, steps=0)


@pytest.mark.parametrize("penalty", fairness.PENALTIES)
def test_fairness_step_adds_what_its_penalty_says(penalty):
    chosen, rejected, categories = rewards_batch(seed=6)
    chosen, rejected = chosen.float().requires_grad_(), rejected.float()
    out = ops.bt_loss(chosen, rejected, categories=categories, num_categories=5)
    fair = Fairness(5, penalty=penalty, adversary="rewards", objective="chance", steps=3, seed=0)
    before = [p.detach().clone() for p in fair.adversary.parameters()]
    loss, adv_loss = fair(out.loss, 0.5, out.moments, out.counts, chosen, rejected, categories)
    assert adv_loss is not None and torch.isfinite(adv_loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, fair.adversary.parameters()))  # it trained
    expected = out.loss
    if "moments" in penalty:
        expected = expected + 0.5 * moment_penalty(out.moments, out.counts)
    if "adversary" in penalty:
        features, targets = fair.adversary.features(out.moments, out.counts, chosen, rejected, categories)
        expected = expected - 0.5 * fairness.adversary_penalty(fair.adversary, features, targets, objective="chance")
    torch.testing.assert_close(loss, expected)
    watched, _ = fair(out.loss, 0.0, out.moments, out.counts, chosen, rejected, categories)
    assert watched is out.loss  # λ = 0: the plain loss, the adversary only watches
