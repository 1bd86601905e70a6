"""guard.losses against independent float64 computations: values (numpy formulas), gradients (analytic
derivatives and finite differences), SPO's closed forms, category moments against scipy.stats."""

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from guard.losses import (
    LOSS_TYPES,
    bt_pair_losses,
    category_moments,
    pair_losses,
    spo_kappas,
    spo_pair_losses,
)


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def expected_pair_losses(c, r, loss_type, beta, eps):
    """The DESIGN.md §3 formulas, written once more in numpy."""
    if loss_type == "sigmoid":
        z = beta * (c - r)
        return -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)
    if loss_type == "ipo":
        return (c - r - 1 / (2 * beta)) ** 2
    if loss_type == "apo_zero":
        return 1 - sigmoid(beta * c) + sigmoid(beta * r)
    if loss_type == "apo_down":
        return sigmoid(beta * c) + 1 - sigmoid(beta * (c - r))
    z_c, z_r = max(c.mean(), 0.0), max(r.mean(), 0.0)
    return (1 - sigmoid(beta * (c - z_r)) + 1 - sigmoid(beta * (z_c - r))) / 2


def expected_pair_grads(c, r, loss_type, beta, eps):
    """d loss_i / d lr_c[i] and d loss_i / d lr_r[i] by hand (kto_pair's reference points are constants)."""
    if loss_type == "sigmoid":
        z = beta * (c - r)
        g = beta * (-(1 - eps) * sigmoid(-z) + eps * sigmoid(z))
        return g, -g
    if loss_type == "ipo":
        g = 2 * (c - r - 1 / (2 * beta))
        return g, -g
    ds = lambda x: sigmoid(x) * (1 - sigmoid(x))  # noqa: E731
    if loss_type == "apo_zero":
        return -beta * ds(beta * c), beta * ds(beta * r)
    if loss_type == "apo_down":
        return beta * ds(beta * c) - beta * ds(beta * (c - r)), beta * ds(beta * (c - r))
    z_c, z_r = max(c.mean(), 0.0), max(r.mean(), 0.0)
    return -beta * ds(beta * (c - z_r)) / 2, beta * ds(beta * (z_c - r)) / 2


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_pair_losses_match_formulas_and_gradients(loss_type, batch):
    rng = np.random.default_rng([LOSS_TYPES.index(loss_type), batch])
    c_np, r_np = rng.normal(0, 3, batch), rng.normal(0, 3, batch)
    beta, eps = float(rng.uniform(0.05, 0.5)), (0.1 if loss_type == "sigmoid" else 0.0)
    c = torch.tensor(c_np, requires_grad=True)
    r = torch.tensor(r_np, requires_grad=True)
    losses = pair_losses(c, r, loss_type=loss_type, beta=beta, label_smoothing=eps)
    assert losses.shape == (batch,) and losses.dtype == torch.float64
    np.testing.assert_allclose(losses.detach().numpy(), expected_pair_losses(c_np, r_np, loss_type, beta, eps), rtol=1e-12, atol=1e-12)
    # Each loss depends on its own pair only (kto_pair's batch means are detached), so the gradient of
    # the sum is the per-pair derivative.
    losses.sum().backward()
    g_c, g_r = expected_pair_grads(c_np, r_np, loss_type, beta, eps)
    np.testing.assert_allclose(c.grad.numpy(), g_c, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r.grad.numpy(), g_r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss_type", [t for t in LOSS_TYPES if t != "kto_pair"])
def test_pair_losses_gradcheck(loss_type):
    gen = torch.Generator().manual_seed(3)
    c = torch.randn(9, dtype=torch.float64, generator=gen, requires_grad=True)
    r = torch.randn(9, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: pair_losses(a, b, loss_type=loss_type, beta=0.3, label_smoothing=0.05 if loss_type == "sigmoid" else 0.0), (c, r))


def test_label_smoothing_zero_is_dpo_and_symmetric_swap():
    gen = torch.Generator().manual_seed(0)
    c, r = torch.randn(16, generator=gen, dtype=torch.float64), torch.randn(16, generator=gen, dtype=torch.float64)
    dpo = pair_losses(c, r, loss_type="sigmoid", beta=0.2)
    torch.testing.assert_close(dpo, -torch.nn.functional.logsigmoid(0.2 * (c - r)), rtol=0, atol=1e-14)
    # ε-smoothing mixes the loss of the pair with the loss of the swapped pair.
    smooth = pair_losses(c, r, loss_type="sigmoid", beta=0.2, label_smoothing=0.25)
    swapped = pair_losses(r, c, loss_type="sigmoid", beta=0.2)
    torch.testing.assert_close(smooth, 0.75 * dpo + 0.25 * swapped, rtol=0, atol=1e-14)


def test_kto_pair_reference_points_are_clamped_and_detached():
    c = torch.tensor([-3.0, -1.0, -2.0], dtype=torch.float64, requires_grad=True)  # mean < 0 -> z_c = 0
    r = torch.tensor([4.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)  # mean 3 -> z_r = 3
    beta = 0.5
    losses = pair_losses(c, r, loss_type="kto_pair", beta=beta)
    s = torch.sigmoid
    expected = (2 - s(beta * (c.detach() - 3.0)) - s(beta * (0.0 - r.detach()))) / 2
    torch.testing.assert_close(losses.detach(), expected, rtol=0, atol=1e-14)
    losses[0].backward()  # pair 0's loss must not reach other pairs through the batch means
    assert c.grad[1:].abs().max() == 0 and r.grad[1:].abs().max() == 0


def test_spo_kappas_formula():
    beta, a = 0.1, [0.3, 0.2, 0.5]  # α_1, α_2, α_3: round n = 4
    expected = [
        -beta * a[0] * (1 - a[1]) * (1 - a[2]),  # κ_1
        -beta * a[1] * (1 - a[2]),  # κ_2
        -beta * a[2],  # κ_3
    ]
    np.testing.assert_allclose(spo_kappas(beta, a, 3), expected, rtol=1e-15)
    # Equal importance: κ_{n-i} = -β·α·(1-α)^{i-1}
    np.testing.assert_allclose(spo_kappas(beta, 0.2, 4), [-beta * 0.2 * 0.8 ** (4 - k) for k in range(1, 5)], rtol=1e-15)
    assert spo_kappas(beta, [], 0) == []
    with pytest.raises(ValueError, match="one value per earlier round"):
        spo_kappas(beta, [0.1], 2)


def _rand(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * 2


def test_spo_one_round_is_eq5_and_alpha_zero_is_dpo():
    gen = torch.Generator().manual_seed(1)
    c, r = _rand(gen, 11), _rand(gen, 11)
    pc, pr = _rand(gen, 1, 11), _rand(gen, 1, 11)
    beta, alpha = 0.2, 0.35
    spo = spo_pair_losses(c, r, pc, pr, beta=beta, alphas=[alpha])
    d2, d1 = (c - r).numpy(), (pc - pr)[0].numpy()
    np.testing.assert_allclose(spo.numpy(), -log_sigmoid(beta * d2 - alpha * beta * d1), rtol=1e-12)
    dpo = pair_losses(c, r, loss_type="sigmoid", beta=beta)
    torch.testing.assert_close(spo_pair_losses(c, r, pc, pr, beta=beta, alphas=0.0), dpo, rtol=0, atol=1e-14)
    torch.testing.assert_close(spo_pair_losses(c, r, pc[:0], pr[:0], beta=beta, alphas=[]), dpo, rtol=0, atol=1e-14)


def test_spo_two_rounds_and_gradients():
    gen = torch.Generator().manual_seed(2)
    c = _rand(gen, 5).requires_grad_()
    r = _rand(gen, 5).requires_grad_()
    pc, pr = _rand(gen, 2, 5), _rand(gen, 2, 5)
    beta, a1, a2 = 0.1, 0.4, 0.25
    losses = spo_pair_losses(c, r, pc, pr, beta=beta, alphas=[a1, a2])
    # R_3 = β lr_3 − β α_2 lr_2 − β α_1 (1 − α_2) lr_1   (SPO eq. 7 with n = 3)
    margin = (beta * (c - r) - beta * a2 * (pc[1] - pr[1]) - beta * a1 * (1 - a2) * (pc[0] - pr[0])).detach().numpy()
    np.testing.assert_allclose(losses.detach().numpy(), -log_sigmoid(margin), rtol=1e-12)
    losses.sum().backward()
    np.testing.assert_allclose(c.grad.numpy(), -beta * sigmoid(-margin), rtol=1e-10)
    np.testing.assert_allclose(r.grad.numpy(), beta * sigmoid(-margin), rtol=1e-10)
    assert torch.autograd.gradcheck(
        lambda *t: spo_pair_losses(*t, beta=beta, alphas=[a1, a2]),
        (c.detach().requires_grad_(), r.detach().requires_grad_(), pc.requires_grad_(), pr.requires_grad_()),
    )


@pytest.mark.parametrize("center_coef", [0.0, 0.01])
@pytest.mark.parametrize("margin_kind", ["none", "float", "tensor"])
def test_bt_pair_losses(center_coef, margin_kind):
    rng = np.random.default_rng(7)
    rc, rr = rng.normal(size=13), rng.normal(size=13)
    margin = {"none": None, "float": 0.5, "tensor": rng.uniform(0, 1, 13)}[margin_kind]
    m_np = 0.0 if margin is None else margin
    m_t = torch.tensor(margin) if isinstance(margin, np.ndarray) else margin
    c, r = torch.tensor(rc, requires_grad=True), torch.tensor(rr, requires_grad=True)
    losses = bt_pair_losses(c, r, margin=m_t, center_coef=center_coef)
    expected = -log_sigmoid(rc - rr - m_np) + center_coef * (rc + rr) ** 2
    np.testing.assert_allclose(losses.detach().numpy(), expected, rtol=1e-12)
    losses.mean().backward()
    g = -sigmoid(-(rc - rr - m_np))
    np.testing.assert_allclose(c.grad.numpy(), (g + 2 * center_coef * (rc + rr)) / 13, rtol=1e-10)
    np.testing.assert_allclose(r.grad.numpy(), (-g + 2 * center_coef * (rc + rr)) / 13, rtol=1e-10)


def scipy_moments(x):
    if len(x) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    var = np.var(x)
    if var < 1e-12:
        return [np.mean(x), var, 0.0, 0.0]
    return [np.mean(x), var, scipy.stats.skew(x, bias=True), scipy.stats.kurtosis(x, fisher=True, bias=True)]


@pytest.mark.parametrize("k_columns", [None, 2])
def test_category_moments_match_scipy(k_columns):
    rng = np.random.default_rng(11)
    num_categories, batch = 6, 41
    cats = rng.integers(0, 4, batch)  # categories 4 and 5 stay empty
    cats[:1] = 3
    cats[cats == 2] = 1
    cats[5] = 2  # category 2 holds exactly one value
    shape = (batch,) if k_columns is None else (batch, k_columns)
    vals = rng.gamma(2.0, 1.5, shape)  # skewed, so g1 and g2 are far from 0
    moments, counts = category_moments(torch.tensor(vals), torch.tensor(cats), num_categories)
    cols = 1 if k_columns is None else k_columns
    assert moments.shape == ((num_categories, 4) if k_columns is None else (num_categories, k_columns, 4))
    np.testing.assert_array_equal(counts.numpy(), np.bincount(cats, minlength=num_categories))
    got = moments.numpy().reshape(num_categories, cols, 4)
    v2 = vals.reshape(batch, cols)
    for c in range(num_categories):
        for k in range(cols):
            np.testing.assert_allclose(got[c, k], scipy_moments(v2[cats == c, k]), rtol=1e-10, atol=1e-12)
    assert np.all(got[4:] == 0) and np.all(got[2, :, 1:] == 0)


def test_category_moments_constant_and_empty_have_no_nan_in_value_or_gradient():
    vals = torch.tensor([2.5, 2.5, 2.5, 1.0, 3.0, 7.0], dtype=torch.float32, requires_grad=True)
    cats = torch.tensor([0, 0, 0, 2, 2, 2])
    moments, counts = category_moments(vals, cats, 4)
    assert moments.dtype == torch.float32
    assert torch.equal(counts, torch.tensor([3, 0, 3, 0]))
    assert torch.equal(moments[0], torch.tensor([2.5, 0.0, 0.0, 0.0]))
    assert torch.equal(moments[1], torch.zeros(4)) and torch.equal(moments[3], torch.zeros(4))
    moments.sum().backward()
    assert torch.isfinite(vals.grad).all()
    # d(mean)/dv = 1/n; the zeroed skew/kurtosis of the constant category contribute nothing.
    torch.testing.assert_close(vals.grad[:3], torch.full((3,), 1 / 3))


def test_category_moments_gradcheck():
    gen = torch.Generator().manual_seed(5)
    vals = torch.randn(17, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    cats = torch.tensor([0, 1, 1, 0, 2, 2, 1, 0, 1, 2, 0, 0, 1, 2, 1, 0, 1])
    assert torch.autograd.gradcheck(lambda v: category_moments(v, cats, 4)[0], (vals,))


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 60),
    num_categories=st.integers(1, 7),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1e-3, 1e3),
)
def test_category_moments_property(batch, num_categories, seed, scale):
    rng = np.random.default_rng(seed)
    cats = rng.integers(0, num_categories, batch)
    vals = rng.standard_t(5, batch) * scale
    moments, counts = category_moments(torch.tensor(vals), torch.tensor(cats), num_categories)
    assert int(counts.sum()) == batch
    for c in range(num_categories):
        np.testing.assert_allclose(moments[c].numpy(), scipy_moments(vals[cats == c]), rtol=1e-8, atol=1e-9 * scale**2)


def test_bad_input_is_named():
    x, y = torch.zeros(3), torch.zeros(4)
    with pytest.raises(ValueError, match="same shape"):
        pair_losses(x, y, loss_type="sigmoid")
    with pytest.raises(ValueError, match="loss_type must be one of"):
        pair_losses(x, x, loss_type="dpo")
    with pytest.raises(ValueError, match=r"chosen_logratios has a non-finite value .* at index 1"):
        pair_losses(torch.tensor([0.0, math.nan, 1.0]), x, loss_type="ipo")
    with pytest.raises(ValueError, match=r"rejected_rewards has a non-finite value .* index 2"):
        bt_pair_losses(x, torch.tensor([0.0, 0.0, math.inf]))
    with pytest.raises(ValueError, match="margin must be a float or have the shape"):
        bt_pair_losses(x, x, margin=torch.zeros(2))
    with pytest.raises(ValueError, match=r"categories\[2\] = 5 is out of range \[0, 3\)"):
        category_moments(x, torch.tensor([0, 1, 5]), 3)
    with pytest.raises(ValueError, match=r"categories\[0\] = -1 is out of range"):
        category_moments(x, torch.tensor([-1, 1, 0]), 3)
    with pytest.raises(ValueError, match="one per row of values"):
        category_moments(x, torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="integer tensor"):
        category_moments(x, torch.tensor([0.0, 1.0, 0.0]), 3)
    with pytest.raises(ValueError, match=r"values has a non-finite value .* index 0"):
        category_moments(torch.tensor([math.nan, 0.0, 0.0]), torch.tensor([0, 1, 0]), 3)
    with pytest.raises(ValueError, match=r"previous_chosen_logratios must be \[R, B\]"):
        spo_pair_losses(x, x, torch.zeros(1, 4), torch.zeros(1, 4), alphas=0.1)
    with pytest.raises(ValueError, match=r"previous_rejected_logratios has a non-finite value"):
        spo_pair_losses(x, x, torch.zeros(1, 3), torch.full((1, 3), math.nan), alphas=0.1)
    with pytest.raises(ValueError, match="beta must be positive"):
        pair_losses(x, x, loss_type="sigmoid", beta=0.0)
