"""guard.curiosity: the RND predictor learns what it is shown and the target never moves, novelty and the
running-RMS-normalised intrinsic reward match a float64 re-computation of their documented definitions,
η scales the bonus linearly, empty responses (zero rows) earn nothing, mean_pool matches a float64
reference, a state_dict / optimizer (and guard.distributed checkpoint) round trip continues bit-
identically, and bad inputs fail with clear errors. CPU only, no network; a few seconds.

    OMP_NUM_THREADS=1 TRITON_INTERPRET=1 python -m pytest tests/test_curiosity.py -q
"""

import io

import pytest
import torch
from guard import distributed
from guard.curiosity import RNDCuriosity, mean_pool

DIM = 64  # the feature width in these tests (a policy's hidden size in real use)


def batch(n: int, seed: int, dim: int = DIM) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def mlp64(net: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The 2-layer ReLU MLP in float64 from the module's weights."""
    w1, b1, w2, b2 = (p.detach().double() for p in net.parameters())
    return torch.relu(x @ w1.T + b1) @ w2.T + b2


def novelty64(rnd: RNDCuriosity, x: torch.Tensor) -> torch.Tensor:
    """1 − cos(predictor(x), target(x)) in float64; 0 for all-zero rows (the documented convention)."""
    x = x.double()
    p, t = mlp64(rnd.predictor, x), mlp64(rnd.target, x)
    cos = (p * t).sum(1) / (p.norm(dim=1) * t.norm(dim=1))
    return torch.where((x != 0).any(1), 1 - cos, torch.zeros((), dtype=torch.float64))


def test_predictor_loss_falls_and_seen_inputs_become_less_novel():
    # The paper's hyperparameters (hidden 512, Adam lr 1e-4), one batch shown 200 times.
    rnd = RNDCuriosity(DIM)
    seen, fresh = batch(32, 1), batch(32, 2)
    before = rnd.novelty(seen)
    losses = [rnd.update(seen) for _ in range(200)]
    # update() returns the mean cosine loss measured before its step: the mean novelty at that point.
    assert losses[0] == pytest.approx(before.mean().item(), rel=1e-6)
    assert 0.8 < losses[0] < 1.2  # an untrained predictor is uncorrelated with the target
    assert losses[-1] < 0.25 * losses[0]
    assert losses[-1] < losses[100] < losses[0]
    after_seen, after_fresh = rnd.novelty(seen), rnd.novelty(fresh)
    assert after_seen.mean() < 0.5 * after_fresh.mean()
    assert (after_seen < before).all()


def test_target_is_frozen_and_predictor_trains():
    rnd = RNDCuriosity(DIM, lr=1e-3)
    target0 = {k: v.clone() for k, v in rnd.target.state_dict().items()}
    predictor0 = {k: v.clone() for k, v in rnd.predictor.state_dict().items()}
    for step in range(20):
        rnd.update(batch(16, step))
    assert all(not p.requires_grad for p in rnd.target.parameters())
    assert all(p.requires_grad for p in rnd.predictor.parameters())
    optimized = {id(p) for group in rnd.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in rnd.predictor.parameters()}
    for k, v in rnd.target.state_dict().items():
        assert torch.equal(v, target0[k]), k
    for k, v in rnd.predictor.state_dict().items():
        assert not torch.equal(v, predictor0[k]), k


def test_initialisation_is_reproducible_from_the_seed():
    a, b, c = RNDCuriosity(DIM, seed=7), RNDCuriosity(DIM, seed=7), RNDCuriosity(DIM, seed=8)
    d = RNDCuriosity(DIM, generator=torch.Generator().manual_seed(7))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]) and torch.equal(v, d.state_dict()[k]), k
    assert not torch.equal(a.target[0].weight, c.target[0].weight)
    assert not torch.equal(a.target[0].weight, a.predictor[0].weight)  # two different draws
    assert tuple(a.target[0].weight.shape) == (512, DIM) and tuple(a.target[2].weight.shape) == (512, 512)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_novelty_matches_float64_reference(dtype):
    rnd = RNDCuriosity(DIM, output_dim=96, lr=1e-3)
    for step in range(5):
        rnd.update(batch(16, 100 + step))
    x = batch(9, 3).to(dtype)
    x[4] = 0  # an empty response
    got = rnd.novelty(x)
    assert got.dtype == torch.float32 and got.shape == (9,) and not got.requires_grad
    ref = novelty64(rnd, x.float())  # what the module sees: the rows in float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    assert got[4] == 0 and (got[[0, 1, 2, 3, 5, 6, 7, 8]] > 0).all() and (got <= 2).all()


def test_intrinsic_reward_is_eta_times_novelty_over_running_rms():
    """The running statistic against a float64 re-computation over batches of different sizes, with
    predictor updates in between (so novelty changes) and a zero row in one batch."""
    eta, m = 0.05, 0.9
    rnd = RNDCuriosity(DIM, eta=eta, scale_momentum=m, lr=1e-3)
    assert rnd.running_scale() is None
    ema = weight = 0.0
    for i, n in enumerate([5, 17, 3, 32, 11]):
        x = batch(n, 200 + i) * (1 + i)  # rows of different norms, too
        if i == 3:
            x[7] = 0
        n64 = novelty64(rnd, x)
        valid = (x != 0).any(1)
        ema = m * ema + (1 - m) * n64[valid].square().mean().item()
        weight = m * weight + (1 - m)
        ref = eta * n64 / (ema / weight) ** 0.5
        got = rnd.intrinsic_reward(x)
        torch.testing.assert_close(got.double(), ref, rtol=2e-5, atol=1e-7)
        assert rnd.novelty_sq_ema.item() == pytest.approx(ema, rel=1e-5)
        assert rnd.ema_weight.item() == pytest.approx(1 - m ** (i + 1), rel=1e-6)
        assert rnd.running_scale().item() == pytest.approx((ema / weight) ** 0.5, rel=1e-5)
        if i == 0:
            # The first batch counts towards its own scale: its rewards have RMS exactly eta.
            assert got.square().mean().sqrt().item() == pytest.approx(eta, rel=1e-5)
        assert (got[valid] > 0).all() and (got[~valid] == 0).all()
        for _ in range(3):
            rnd.update(x)


def test_update_stats_false_reads_the_statistic_without_changing_it():
    rnd = RNDCuriosity(DIM, eta=0.1)
    x, y = batch(8, 1), batch(6, 2)
    # No statistic yet: the batch's own RMS, and the buffers stay at zero.
    r = rnd.intrinsic_reward(x, update_stats=False)
    n = novelty64(rnd, x)
    torch.testing.assert_close(r.double(), 0.1 * n / n.square().mean().sqrt(), rtol=1e-5, atol=1e-7)
    assert rnd.novelty_sq_ema.item() == 0 and rnd.ema_weight.item() == 0
    rnd.intrinsic_reward(x)
    state = (rnd.novelty_sq_ema.clone(), rnd.ema_weight.clone())
    scale = rnd.running_scale()
    r = rnd.intrinsic_reward(y, update_stats=False)
    assert torch.equal(rnd.novelty_sq_ema, state[0]) and torch.equal(rnd.ema_weight, state[1])
    torch.testing.assert_close(r, 0.1 * rnd.novelty(y) / scale)
    # ... while the default updates it.
    rnd.intrinsic_reward(y)
    assert not torch.equal(rnd.novelty_sq_ema, state[0])


def test_reward_is_nonzero_and_linear_in_eta():
    modules = {eta: RNDCuriosity(DIM, eta=eta, seed=3) for eta in (0.0, 0.05, 0.2)}
    for step in range(3):
        x = batch(12, 300 + step)
        r = {eta: rnd.intrinsic_reward(x) for eta, rnd in modules.items()}
        for rnd in modules.values():
            rnd.update(x)
        assert (r[0.05] > 0).all()
        assert torch.equal(r[0.0], torch.zeros(12))
        torch.testing.assert_close(r[0.2], 4 * r[0.05], rtol=1e-6, atol=0)


def test_zero_rows_earn_nothing_and_are_left_out_of_training_and_statistics():
    x = batch(10, 4)
    padded = torch.cat([x[:3], torch.zeros(2, DIM), x[3:], torch.zeros(1, DIM)])
    real = torch.ones(13, dtype=torch.bool)
    real[[3, 4, 12]] = False
    a, b = RNDCuriosity(DIM, lr=1e-3), RNDCuriosity(DIM, lr=1e-3)
    for _ in range(3):
        ra, rb = a.intrinsic_reward(x), b.intrinsic_reward(padded)
        assert torch.equal(rb[~real], torch.zeros(3)) and torch.equal(b.novelty(padded)[~real], torch.zeros(3))
        torch.testing.assert_close(rb[real], ra, rtol=1e-6, atol=0)
        assert a.update(x) == pytest.approx(b.update(padded), rel=1e-6)
    torch.testing.assert_close(a.predictor[0].weight, b.predictor[0].weight)
    torch.testing.assert_close(a.novelty_sq_ema, b.novelty_sq_ema)
    # A batch of empty responses only: no step, no statistic update, rewards 0.
    before = (b.predictor[0].weight.clone(), b.novelty_sq_ema.clone(), b.ema_weight.clone())
    assert b.update(torch.zeros(4, DIM)) == 0.0
    assert torch.equal(b.intrinsic_reward(torch.zeros(4, DIM)), torch.zeros(4))
    after = (b.predictor[0].weight, b.novelty_sq_ema, b.ema_weight)
    assert all(torch.equal(u, v) for u, v in zip(before, after))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.float32])
def test_mean_pool_matches_float64_reference(dtype, mask_dtype):
    gen = torch.Generator().manual_seed(5)
    n, t, h = 5, 7, 13
    hidden = (torch.randn(n, t, h, generator=gen) * 3 + 1).to(dtype)
    keep = torch.rand(n, t, generator=gen) < 0.6
    keep[1] = False  # an empty response
    keep[2] = True
    keep[3] = False
    keep[3, 6] = True  # a single token
    hidden[1, 0, 0] = float("nan")  # non-finite values where the mask is off do not leak
    hidden[0, ~keep[0]] = float("inf")
    ref = torch.zeros(n, h, dtype=torch.float64)
    for i in range(n):
        rows = [hidden[i, j].double() for j in range(t) if keep[i, j]]
        if rows:
            ref[i] = torch.stack(rows).sum(0) / len(rows)
    got = mean_pool(hidden, keep.to(mask_dtype))
    assert got.dtype == torch.float32 and got.shape == (n, h)
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(got[1], torch.zeros(h))
    assert torch.isfinite(got).all()


def test_mean_pool_gradient_reaches_kept_positions_only():
    hidden = torch.randn(3, 4, 5, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    mean_pool(hidden, mask).sum().backward()
    expected = (mask.float() / mask.sum(1, keepdim=True).clamp(min=1))[..., None].expand(3, 4, 5)
    torch.testing.assert_close(hidden.grad, expected)


def drive(rnd: RNDCuriosity, seeds) -> tuple[list[float], list[torch.Tensor]]:
    """A few rollout batches: reward, then a predictor step, as a PPO recipe calls them."""
    losses, rewards = [], []
    for s in seeds:
        x = batch(16, s)
        rewards.append(rnd.intrinsic_reward(x))
        losses.append(rnd.update(x))
    return losses, rewards


def test_state_dict_round_trip_continues_identically():
    a = RNDCuriosity(DIM, lr=1e-3, scale_momentum=0.9)
    drive(a, range(400, 404))
    buf = io.BytesIO()
    torch.save({"module": a.state_dict(), "optimizer": a.optimizer.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    assert {"novelty_sq_ema", "ema_weight"} <= set(saved["module"])

    def restored(*, optimizer: bool = True, statistic: bool = True) -> RNDCuriosity:
        b = RNDCuriosity(DIM, lr=1e-3, scale_momentum=0.9, seed=99)  # other weights until loaded
        b.load_state_dict(saved["module"])
        if optimizer:
            b.optimizer.load_state_dict(saved["optimizer"])
        if not statistic:
            b.novelty_sq_ema.zero_()
            b.ema_weight.zero_()
        return b

    b = restored()
    losses_a, rewards_a = drive(a, range(410, 413))
    losses_b, rewards_b = drive(b, range(410, 413))
    assert losses_a == losses_b
    assert all(torch.equal(u, v) for u, v in zip(rewards_a, rewards_b))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    # The comparison sees what is restored: without Adam's state or the running statistic, it differs.
    reference = restored()
    ref_losses, ref_rewards = drive(reference, range(420, 423))
    losses_c, _ = drive(restored(optimizer=False), range(420, 423))
    assert losses_c[0] == ref_losses[0] and losses_c[1:] != ref_losses[1:]
    _, rewards_d = drive(restored(statistic=False), range(420, 423))
    assert not torch.equal(rewards_d[0], ref_rewards[0])


def test_checkpoint_through_guard_distributed(tmp_path):
    """The trainer's checkpoints take the module and its optimizer as they are."""
    dist = distributed.Dist()
    policy = torch.nn.Linear(3, 3)  # stands in for the model being trained
    a = RNDCuriosity(DIM, lr=1e-3)
    drive(a, range(500, 503))
    path = distributed.save_checkpoint(tmp_path, 3, policy, {"curiosity": a.optimizer}, {"curiosity": a},
                                       {"step": 3}, dist)
    b = RNDCuriosity(DIM, lr=1e-3, seed=1)
    distributed.load_checkpoint(path, policy, {"curiosity": b.optimizer}, {"curiosity": b}, dist)
    losses_a, rewards_a = drive(a, range(510, 513))
    losses_b, rewards_b = drive(b, range(510, 513))
    assert losses_a == losses_b
    assert all(torch.equal(u, v) for u, v in zip(rewards_a, rewards_b))


@pytest.mark.parametrize("features, error, match", [
    (torch.randn(DIM), ValueError, r"shape \[N, input_dim=64\], got \[64\]"),
    (torch.randn(4, DIM + 1), ValueError, r"input_dim=64\], got \[4, 65\]"),
    (torch.randn(2, 3, DIM), ValueError, r"got \[2, 3, 64\]"),
    (torch.zeros(0, DIM), ValueError, "no rows"),
    (torch.ones(4, DIM, dtype=torch.int64), TypeError, "floating"),
    ([[0.0] * DIM], TypeError, "torch.Tensor"),
])
def test_bad_features_are_rejected(features, error, match):
    rnd = RNDCuriosity(DIM)
    for method in (rnd.novelty, rnd.intrinsic_reward, rnd.update):
        with pytest.raises(error, match=match):
            method(features)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_features_name_the_row(bad):
    rnd = RNDCuriosity(DIM)
    x = batch(6, 0)
    x[4, 10] = bad
    x[5, 0] = bad
    for method in (rnd.novelty, rnd.intrinsic_reward, rnd.update):
        with pytest.raises(ValueError, match=r"features row 4 is not finite"):
            method(x.to(torch.bfloat16))
    assert rnd.ema_weight.item() == 0  # nothing was recorded


@pytest.mark.parametrize("kwargs, match", [
    ({"input_dim": 0}, "input_dim"),
    ({"input_dim": 8, "hidden": 2.5}, "hidden"),
    ({"input_dim": 8, "output_dim": -1}, "output_dim"),
    ({"input_dim": 8, "lr": 0.0}, "lr"),
    ({"input_dim": 8, "eta": -0.1}, "eta"),
    ({"input_dim": 8, "eta": float("nan")}, "eta"),
    ({"input_dim": 8, "scale_momentum": 1.0}, "scale_momentum"),
    ({"input_dim": 8, "eps": 0.0}, "eps"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RNDCuriosity(**kwargs)


@pytest.mark.parametrize("hidden, mask, match", [
    (torch.randn(2, 3), torch.ones(2, 3), r"\[N, T, H\]"),
    (torch.randn(2, 3, 4), torch.ones(2, 4), r"mask must have shape \[N, T\] = \[2, 3\]"),
    (torch.randn(2, 3, 4), torch.ones(2, 3, 1), r"got \[2, 3, 1\]"),
    (torch.ones(2, 3, 4, dtype=torch.int32), torch.ones(2, 3), "floating"),
])
def test_mean_pool_rejects_bad_shapes(hidden, mask, match):
    with pytest.raises((ValueError, TypeError), match=match):
        mean_pool(hidden, mask)
