"""The input contract of guard.ops, the same on the Triton path (interpreted on the CPU) and the torch path:
with check=True a ValueError names the argument the caller passed and the index, worded identically on
both; unchecked (the default, no host sync) non-finite inputs give non-finite outputs at the same places,
a stray category makes the moments NaN, a bad label its row NaN; options (beta, temperature, ...) are
always checked; a preference row without a response token is refused with check=True and scores 0 otherwise.

    TRITON_INTERPRET=1 python -m pytest tests/test_ops_checks.py -q
"""

import math
import os
import re

import pytest
import torch

from guard import ops

IGNORE = -100
needs_triton = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="the Triton kernels need CUDA or TRITON_INTERPRET=1",
)
BACKENDS = [pytest.param("triton", marks=needs_triton), "torch"]


def batch(pairs=3, steps=5, h=16, v=40, seed=0):
    """A preference batch in which every row has response tokens; chosen rows first."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2 * pairs, steps, h, generator=gen)
    weight = torch.randn(v, h, generator=gen) / h**0.5
    labels = torch.randint(0, v, (2 * pairs, steps), generator=gen)
    labels[:, :2] = IGNORE
    ref_logps = -torch.rand(2 * pairs, generator=gen) * 10
    categories = torch.tensor([0, 1, 0, 2, 1, 0][:pairs])
    return hidden, weight, labels, ref_logps, categories


def error_of(backend, fn):
    with ops.backend(backend), pytest.raises(ValueError) as info:
        fn()
    return str(info.value)


def preference(hidden, weight, labels, ref_logps, **kwargs):
    return ops.fused_preference_loss(hidden, weight, labels, ref_logps, **kwargs)


def poisoned(t, index, value=math.nan):
    t = t.clone()
    t[index] = value
    return t


# ----------------------------------------------------------------------------- check=True: named errors


def checked_cases():
    hidden, weight, labels, ref, _ = batch()
    rewards = torch.randn(3)
    empty = labels.clone()
    empty[4] = IGNORE
    prompt_nan = poisoned(hidden, (2, 0, 3))  # position 0 is a prompt token: never read, never an error
    return {
        "hidden": (lambda: preference(poisoned(hidden, (2, 3, 5)), weight, labels, ref, check=True),
                   r"hidden has a non-finite value \(NaN or inf\) at index \(2, 3, 5\)"),
        "weight": (lambda: ops.token_logprobs(hidden[0], poisoned(weight, (7, 1), math.inf), labels[0], check=True),
                   r"weight has a non-finite value \(NaN or inf\) at index \(7, 1\)"),
        "ref_logps": (lambda: preference(hidden, weight, labels, poisoned(ref, 4, -math.inf), check=True),
                      r"ref_logps has a non-finite value \(NaN or inf\) at index 4"),
        "previous_logratios": (lambda: preference(hidden, weight, labels, ref, loss_type="spo", alphas=0.2,
                                                  previous_logratios=poisoned(torch.zeros(2, 6), (1, 5)), check=True),
                               r"previous_logratios has a non-finite value \(NaN or inf\) at index \(1, 5\)"),
        "labels": (lambda: ops.sequence_logprobs(hidden, weight, poisoned(labels, (1, 4), 40), check=True),
                   r"labels\[\(1, 4\)\] = 40 is outside the vocabulary \[0, 40\)"),
        "categories": (lambda: preference(hidden, weight, labels, ref, categories=torch.tensor([0, 3, 1]),
                                          num_categories=3, check=True),
                       r"categories\[1\] = 3 is out of range \[0, 3\)"),
        "empty response": (lambda: preference(hidden, weight, empty, ref, check=True),
                           r"labels\[4\] marks no response token \(every label is ignore_index, -100\): the rejected "
                           r"sequence of pair 1 is empty, so the pair has no log-ratio"),
        "chosen_rewards": (lambda: ops.bt_loss(poisoned(rewards, 2), rewards, check=True),
                           r"chosen_rewards has a non-finite value \(NaN or inf\) at index 2"),
        "rejected_rewards": (lambda: ops.bt_loss(rewards, poisoned(rewards, 0, math.inf), check=True),
                             r"rejected_rewards has a non-finite value \(NaN or inf\) at index 0"),
        "margin": (lambda: ops.bt_loss(rewards, rewards, margin=poisoned(rewards, 1), check=True),
                   r"margin has a non-finite value \(NaN or inf\) at index 1"),
        "bt categories": (lambda: ops.bt_loss(rewards, rewards, categories=torch.tensor([0, -1, 0]), num_categories=2,
                                              check=True),
                          r"categories\[1\] = -1 is out of range \[0, 2\)"),
        "prompt rows are not read": (lambda: preference(prompt_nan, weight, labels, ref, check=True), None),
    }


@pytest.mark.parametrize("case", list(checked_cases()))
def test_checked_errors_name_the_argument_alike_on_both_paths(case):
    fn, pattern = checked_cases()[case]
    if pattern is None:  # no error: NaN at a position whose label is ignore_index is fine
        for backend in ("torch", "triton") if os.environ.get("TRITON_INTERPRET") == "1" else ("torch",):
            with ops.backend(backend):
                assert torch.isfinite(fn().loss)
        return
    messages = {error_of("torch", fn)}
    if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available():
        messages.add(error_of("triton", fn))
    assert len(messages) == 1, messages
    assert re.search(pattern, messages.pop())


@pytest.mark.parametrize("backend", BACKENDS)
def test_options_are_always_checked(backend):
    hidden, weight, labels, ref, _ = batch()
    rewards = torch.randn(3)
    cases = [
        (lambda: preference(hidden, weight, labels, ref, beta=math.nan), "beta must be positive and finite, got nan"),
        (lambda: preference(hidden, weight, labels, ref, beta=math.inf), "beta must be positive and finite, got inf"),
        (lambda: preference(hidden, weight, labels, ref, beta=-0.1), "beta must be positive and finite, got -0.1"),
        (lambda: preference(hidden, weight, labels, ref, label_smoothing=math.nan), "label_smoothing must be in"),
        (lambda: preference(hidden, weight, labels, ref, temperature=math.nan), "temperature must be positive and finite"),
        (lambda: preference(hidden, weight, labels, ref, loss_type="spo", alphas=[math.inf], previous_logratios=torch.zeros(1, 6)),
         "alphas must be finite, got inf"),
        (lambda: ops.bt_loss(rewards, rewards, margin=math.nan), "margin must be finite, got nan"),
        (lambda: ops.bt_loss(rewards, rewards, center_coef=math.inf), "center_coef must be finite, got inf"),
    ]
    for fn, message in cases:
        assert message in error_of(backend, fn)


# ----------------------------------------------------------------------------- unchecked: loud results


def nonfinite_pattern(backend, fn):
    with ops.backend(backend):
        out = fn()
    return [None if t is None else (~torch.isfinite(t)).tolist() for t in out]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy runs the interpreted kernels and warns on the NaN fed in
def test_unchecked_nonfinite_inputs_give_nonfinite_outputs(backend):
    """No sync, no error: a NaN/inf reference, hidden state or reward shows up as non-finite values in the
    outputs it feeds, on every path at the same places."""
    hidden, weight, labels, ref, cats = batch()
    rewards = torch.randn(3)

    def pref(**changes):
        args = dict(hidden=hidden, weight=weight, labels=labels, ref_logps=ref) | changes
        out = preference(args["hidden"], args["weight"], args["labels"], args["ref_logps"], categories=cats, num_categories=3)
        return out.loss, out.pair_losses, out.logps, out.rewards

    got = nonfinite_pattern(backend, lambda: pref(ref_logps=poisoned(ref, 4)))
    assert got == [True, [False, True, False], [False] * 6, [False] * 4 + [True, False]]
    got = nonfinite_pattern(backend, lambda: pref(ref_logps=poisoned(ref, 0, math.inf)))
    assert got[0] and got[1] == [True, False, False] and got[3][0]
    got = nonfinite_pattern(backend, lambda: pref(hidden=poisoned(hidden, (2, 4, 0))))
    assert got[0] and got[1] == [False, False, True] and got[2] == [False, False, True, False, False, False]
    got = nonfinite_pattern(backend, lambda: (ops.bt_loss(poisoned(rewards, 1), rewards).pair_losses,))
    assert got == [[False, True, False]]
    if backend == "triton":  # the same places as the torch path
        with ops.backend("torch"):
            expected = nonfinite_pattern("torch", lambda: pref(ref_logps=poisoned(ref, 0, math.inf)))
        assert nonfinite_pattern("triton", lambda: pref(ref_logps=poisoned(ref, 0, math.inf))) == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_unchecked_stray_category_makes_every_moment_nan(backend):
    hidden, weight, labels, ref, _ = batch()
    cats = torch.tensor([0, 5, 1])
    leaves = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
    with ops.backend(backend):
        out = preference(leaves[0], leaves[1], labels, ref, categories=cats, num_categories=3)
        bt = ops.bt_loss(torch.randn(3), torch.randn(3), categories=cats, num_categories=3)
    for o in (out, bt):
        assert o.moments.isnan().all() and o.counts.tolist() == [1, 1, 0]
        assert torch.isfinite(o.loss)
    out.loss.backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_row_without_response_tokens(backend):
    """Refused with check=True (test above); unchecked its log-prob is the empty sum 0, its reward −β·ref,
    and its hidden states get no gradient. sequence_logprobs scores an empty sequence 0 even when checking:
    the log-probability of an empty continuation is log 1."""
    hidden, weight, labels, ref, _ = batch()
    labels[4] = IGNORE
    leaf = hidden.clone().requires_grad_()
    with ops.backend(backend):
        out = preference(leaf, weight, labels, ref, beta=0.5)
        total = ops.sequence_logprobs(hidden, weight, labels, check=True)
        mean = ops.sequence_logprobs(hidden, weight, labels, average=True, check=True)
    assert out.logps[4] == 0 and total[4] == 0 and mean[4] == 0
    torch.testing.assert_close(out.rewards[4], -0.5 * ref[4])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert leaf.grad[4].abs().max() == 0 and leaf.grad[1].abs().max() > 0
