"""guard.ops on packed rows (cu_seqlens): sequence_logprobs and fused_preference_loss over S sequences laid end to
end in one row give, forward and backward, what a float64 reference from materialised logits gives and what the
same ops give on the padded rows of the same sequences; on the Triton kernels (interpreted on the CPU) and the
torch path. Edge cases: a one-token sequence, a sequence with no response token, one pair, the row's last
position. check=True names a bad boundary and an empty response by its sequence.

    TRITON_INTERPRET=1 python -m pytest tests/test_ops_packed.py -q
"""

import os

import pytest
import torch

from guard import losses, ops

IGNORE = -100
needs_triton = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="the Triton kernels need CUDA or TRITON_INTERPRET=1",
)
BACKENDS = [pytest.param("triton", marks=needs_triton), "torch"]
#: sequence lengths of a packed row: chosen sequences, then rejected (pairs i and B + i)
LENGTH_MIXES = {
    "equal": [6, 6, 6, 6],
    "very unequal": [1, 23, 4, 2, 17, 9],  # a one-token sequence (no response: all ignored) and long ones
    "one pair": [5, 3],
}


def make_packed(lengths, h, v, *, seed=0):
    """A packed row: hidden [N, H], weight [V, H], bias [V], labels [N] already shifted (position t predicts
    labels[t]; the first third of each sequence is prompt, each sequence's last position predicts nothing, as the
    next sequence's first token is ignored), cu_seqlens [S + 1]."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    hidden = torch.randn(n, h, generator=gen, dtype=torch.float64)
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64) / h**0.5
    bias = torch.randn(v, generator=gen, dtype=torch.float64) * 0.1
    labels = torch.randint(0, v, (n,), generator=gen)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        labels[start:start + (end - start) // 3] = IGNORE
        labels[end - 1] = IGNORE
    return hidden, weight, bias, labels, cu


def padded(t: torch.Tensor, cu: torch.Tensor, fill) -> torch.Tensor:
    """The packed row's sequences as padded rows [S, T, ...] (`fill` past each one's end)."""
    spans = list(zip(cu[:-1].tolist(), cu[1:].tolist()))
    width = max(end - start for start, end in spans)
    out = torch.full((len(spans), width, *t.shape[1:]), fill, dtype=t.dtype)
    for s, (start, end) in enumerate(spans):
        out[s, :end - start] = t[start:end]
    return out


def reference_logps(hidden, weight, bias, labels, cu, temperature=1.0):
    """float64 per-sequence log-probs from materialised logits, one sequence at a time."""
    logsm = torch.log_softmax((hidden.double() @ weight.double().T + bias.double()) / temperature, -1)
    token = torch.where(labels != IGNORE, logsm.gather(1, labels.clamp(min=0)[:, None])[:, 0], 0.0)
    return torch.stack([token[start:end].sum() for start, end in zip(cu[:-1].tolist(), cu[1:].tolist())])


def grads_of(fn, leaves, upstream):
    leaves = [t.clone().requires_grad_() for t in leaves]
    outs = fn(*leaves)
    sum((o.double() * g).sum() for o, g in zip(outs, upstream)).backward()
    return [o.detach().double() for o in outs], [t.grad.double() for t in leaves]


def assert_close_all(got, want, rtol, atol):
    for k, (a, b) in enumerate(zip(got, want)):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale, msg=lambda m: f"item {k}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mix", LENGTH_MIXES)
@pytest.mark.parametrize("average", [False, True])
def test_sequence_logprobs_packed_matches_float64_and_the_padded_rows(backend, mix, average):
    lengths = LENGTH_MIXES[mix]
    hidden, weight, bias, labels, cu = make_packed(lengths, 20, 67, seed=len(lengths))
    upstream = [torch.randn(len(lengths), generator=torch.Generator().manual_seed(1), dtype=torch.float64)]

    def packed(h, w, b):
        with ops.backend(backend):
            return [ops.sequence_logprobs(h, w, labels, bias=b, temperature=0.9, cu_seqlens=cu, average=average)]

    def as_padded(h, w, b):
        with ops.backend(backend):
            return [ops.sequence_logprobs(padded(h, cu, 0.0), w, padded(labels, cu, IGNORE), bias=b, temperature=0.9,
                                          average=average)]

    def truth(h, w, b):
        total = reference_logps(h, w, b, labels, cu, temperature=0.9)
        if average:
            counts = torch.tensor([int((labels[s:e] != IGNORE).sum()) for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())])
            total = total / counts.clamp(min=1)
        return [total]

    leaves32 = [t.float() for t in (hidden, weight, bias)]
    got, got_grads = grads_of(packed, leaves32, upstream)
    pad, pad_grads = grads_of(as_padded, leaves32, upstream)
    want, want_grads = grads_of(truth, [hidden, weight, bias], upstream)
    assert_close_all(got + got_grads, want + want_grads, rtol=2e-4, atol=2e-5)
    assert_close_all(got + got_grads, pad + pad_grads, rtol=1e-5, atol=1e-6)  # the same numbers, packed or padded
    if mix == "very unequal":  # the one-token sequence has no response token: log-prob 0, no gradient
        assert got[0][0] == 0 and (got_grads[0][0] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mix", LENGTH_MIXES)
@pytest.mark.parametrize("loss_type", ["sigmoid", "kto_pair", "spo"])
def test_fused_preference_loss_packed_matches_the_padded_rows_and_float64(backend, mix, loss_type):
    lengths = LENGTH_MIXES[mix]
    pairs = len(lengths) // 2
    hidden, weight, bias, labels, cu = make_packed(lengths, 16, 53, seed=3)
    gen = torch.Generator().manual_seed(5)
    ref_logps = -torch.rand(2 * pairs, generator=gen) * 20
    categories = torch.arange(pairs) % 2
    previous = torch.randn(1, 2 * pairs, generator=gen) if loss_type == "spo" else None
    kwargs = dict(loss_type=loss_type, beta=0.2, categories=categories, num_categories=3, previous_logratios=previous,
                  alphas=[0.3] if loss_type == "spo" else None)
    keys = ("loss", "pair_losses", "logps", "rewards", "moments")
    upstream = [torch.randn((), generator=gen, dtype=torch.float64), torch.randn(pairs, generator=gen, dtype=torch.float64),
                torch.randn(2 * pairs, generator=gen, dtype=torch.float64),
                torch.randn(2 * pairs, generator=gen, dtype=torch.float64),
                torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)]

    def packed(h, w, b):
        with ops.backend(backend):
            out = ops.fused_preference_loss(h, w, labels, ref_logps, bias=b, cu_seqlens=cu, **kwargs)
        return [getattr(out, k) for k in keys]

    def as_padded(h, w, b):
        with ops.backend(backend):
            out = ops.fused_preference_loss(padded(h, cu, 0.0), w, padded(labels, cu, IGNORE), ref_logps, bias=b,
                                            **kwargs)
        return [getattr(out, k) for k in keys]

    def truth(h, w, b):
        logps = reference_logps(h, w, b, labels, cu)
        lr = logps - ref_logps.double()
        if loss_type == "spo":
            prev = previous.double()
            pair = losses.spo_pair_losses(lr[:pairs], lr[pairs:], prev[:, :pairs], prev[:, pairs:], beta=0.2,
                                          alphas=[0.3])
        else:
            pair = losses.pair_losses(lr[:pairs], lr[pairs:], loss_type=loss_type, beta=0.2)
        rewards = 0.2 * lr
        moments, _ = losses.category_moments(torch.stack([rewards[:pairs], rewards[pairs:]], 1), categories, 3)
        return [pair.mean(), pair, logps, rewards, moments]

    leaves32 = [t.float() for t in (hidden, weight, bias)]
    got, got_grads = grads_of(packed, leaves32, upstream)
    pad, pad_grads = grads_of(as_padded, leaves32, upstream)
    want, want_grads = grads_of(truth, [hidden, weight, bias], upstream)
    assert_close_all(got + got_grads, want + want_grads, rtol=2e-4, atol=2e-5)
    assert_close_all(got + got_grads, pad + pad_grads, rtol=1e-5, atol=1e-6)


def test_segment_sums_are_exact_per_span_with_empty_spans_and_gradients():
    values = torch.tensor([1.5, -2.0, 3.25, 0.5, 4.0], dtype=torch.float32, requires_grad=True)
    cu = torch.tensor([0, 2, 2, 5])  # spans [0, 2), [2, 2) (empty), [2, 5)
    sums = ops.segment_sums(values, cu)
    assert sums.dtype == torch.float32 and sums.tolist() == [-0.5, 0.0, 7.75]
    sums.backward(torch.tensor([10.0, 20.0, 30.0]))
    assert values.grad.tolist() == [10.0, 10.0, 30.0, 30.0, 30.0]


def test_check_names_bad_boundaries_and_an_empty_response_by_sequence():
    hidden, weight, _, labels, cu = make_packed([4, 5, 3, 6], 8, 17)
    hidden, weight = hidden.float(), weight.float()
    ref = torch.zeros(4)
    with pytest.raises(ValueError, match=r"cu_seqlens\[4\] = 17: a packed row's boundaries run from 0 to its 18 rows"):
        ops.fused_preference_loss(hidden, weight, labels, ref, cu_seqlens=cu - torch.tensor([0, 0, 0, 0, 1]), check=True)
    with pytest.raises(ValueError, match=r"cu_seqlens\[2\] = 3 is below cu_seqlens\[1\] = 4"):
        ops.sequence_logprobs(hidden, weight, labels, cu_seqlens=torch.tensor([0, 4, 3, 12, 18]), check=True)
    empty = labels.clone()
    empty[cu[2]:cu[3]] = IGNORE
    with pytest.raises(ValueError, match=r"sequence 2 of the packed row marks no response token .* the rejected "
                                         r"sequence of pair 0 is empty"):
        ops.fused_preference_loss(hidden, weight, empty, ref, cu_seqlens=cu, check=True)
    ops.fused_preference_loss(hidden, weight, labels, ref, cu_seqlens=cu, check=True)  # the good row passes


def test_shape_errors_name_the_packed_layout():
    hidden, weight, _, labels, cu = make_packed([4, 5], 8, 17)
    with pytest.raises(ValueError, match=r"with cu_seqlens, hidden must be a packed row \[N, H\] and labels \[N\]"):
        ops.sequence_logprobs(hidden[None], weight, labels[None], cu_seqlens=cu)
    with pytest.raises(ValueError, match="cu_seqlens must be an integer tensor"):
        ops.sequence_logprobs(hidden, weight, labels, cu_seqlens=cu.float())
    with pytest.raises(ValueError, match=r"cu_seqlens must hold 2B \+ 1 boundaries"):
        ops.fused_preference_loss(hidden.float(), weight.float(), labels, torch.zeros(3),
                                  cu_seqlens=torch.tensor([0, 3, 6, 9]))
