"""Both designs of the Triton linear log-prob op -- impl="chunked" (dz per vocabulary chunk, then GEMMs) and
impl="tiled" (one kernel, atomics) -- against float64 references built from materialised logits, forward and
every gradient: every shape of SHAPES with the forward's vocabulary split forced to 1, 2 and ≥ 3 and the
backward's chunk to several sizes; frozen weight and every other combination of needed gradients; large
logits with the entropy; bf16 per row and per vocabulary row against the kernels' own fp32 result; an fp32
head with bf16 hidden states and a transposed head, with no full copy; packed rows; ignored rows holding
NaN; determinism. On the CPU the kernels run under Triton's interpreter:

    TRITON_INTERPRET=1 python -m pytest tests/test_ops_linear_impls.py -q
"""

import os

import pytest
import torch

from guard import ops
from guard.kernels import linear_logprobs, tuning
from guard.kernels.linear_logprobs import _BACKWARDS, IMPLS
from logprob_reference import IGNORE, SHAPES, assert_close_all, linear_case, make_inputs, outputs_and_grads, reference

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="the Triton kernels need CUDA or TRITON_INTERPRET=1",
)
DEVICE = torch.device("cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu")


def triton_logprobs(impl, labels, *, temperature=1.0, entropy=True):
    def fn(hidden, weight, bias):
        with ops.backend("triton"):
            return ops.token_logprobs(hidden, weight, labels, bias=bias, temperature=temperature,
                                      return_entropy=entropy, impl=impl)

    return fn


# ----------------------------------------------------------------------------- every shape, split and chunk


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n,h,v", SHAPES)
@pytest.mark.parametrize("splits,chunk", [(1, None), (2, 48), (4, 10_000)])
def test_every_shape_split_and_chunk(monkeypatch, impl, n, h, v, splits, chunk):
    """Forced forward splits (1, 2, ≥ 3: the merge of partial sums) and backward chunks (the default, an odd
    48 columns that ends in a partial tile, one chunk for everything)."""
    monkeypatch.setattr(tuning, "FORCED_SPLITS", splits)
    monkeypatch.setattr(tuning, "FORCED_CHUNK_V", chunk)
    blocks = tuning.linear_logprobs_blocks(n, v, h, torch.float32, DEVICE)
    assert blocks.splits == splits if splits < 3 else blocks.splits >= 3, blocks
    (out, grads), (ref_out, ref_grads), _ = linear_case(
        "triton", n, h, v, dtype=torch.float32, bias=True, temperature=0.7, entropy=True,
        ignored=0.2 if n > 1 else 0.0, seed=n + v + splits, impl=impl,
    )  # fmt: skip
    assert_close_all(out, ref_out, rtol=1e-4, atol=1e-5)
    assert_close_all(grads, ref_grads, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_all_rows_ignored_and_empty_input(impl):
    hidden, weight, b, labels, grads = make_inputs(9, 20, 70, ignored=1.0, seed=1)
    out, got = outputs_and_grads(triton_logprobs(impl, labels), (hidden, weight, b), grads)
    assert all(torch.equal(o, torch.zeros_like(o)) for o in out + got)
    empty = outputs_and_grads(triton_logprobs(impl, labels[:0]), (hidden[:0], weight, b), (grads[0][:0], grads[1][:0]))
    assert [o.shape for o in empty[0]] == [(0,), (0,)]
    assert torch.equal(empty[1][1], torch.zeros_like(weight, dtype=torch.float64))


# ----------------------------------------------------------------------------- which gradients are formed


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True), (True, False, True)],
                         ids=["hidden-only", "weight-only", "bias-only", "frozen-weight"])
def test_only_the_needed_gradients(impl, needs):
    hidden, weight, b, labels, grads = make_inputs(21, 24, 150, seed=4)
    leaves = [t.clone().requires_grad_(need) for t, need in zip((hidden, weight, b), needs)]
    logp, ent = triton_logprobs(impl, labels, temperature=0.9)(*leaves)
    ((logp.double() * grads[0]).sum() + (ent.double() * grads[1]).sum()).backward()
    _, ref_grads = outputs_and_grads(lambda *t: reference(*t, labels, 0.9), (hidden, weight, b), grads)
    for leaf, need, ref in zip(leaves, needs, ref_grads):
        if need:
            torch.testing.assert_close(leaf.grad.double(), ref, rtol=1e-4, atol=1e-5 * max(1.0, ref.abs().max().item()))
        else:
            assert leaf.grad is None


@pytest.mark.parametrize("impl", IMPLS)
def test_backward_op_forms_nothing_it_was_not_asked_for(impl):
    """A frozen head (LoRA) costs no weight gradient: the op returns an empty tensor, it never sized one."""
    hidden, weight, b, labels, _ = make_inputs(12, 16, 90, seed=5)
    _, ent, lse, order, count = linear_logprobs.linear_logprobs_fwd(hidden, weight, b, labels, 1.0, IGNORE, True)
    ones = torch.ones(12)
    for needs in ((True, False, False), (False, True, True), (False, False, True)):
        got = _BACKWARDS[impl](hidden, weight, b, labels, order, count, lse, ent, ones, ones, 1.0, IGNORE, True, *needs)
        for grad, need, like in zip(got, needs, (hidden, weight, b)):
            assert grad.shape == (like.shape if need else (0,)), (needs, grad.shape)


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("backend_impl", [("triton", "chunked"), ("triton", "tiled"), ("torch", None)])
def test_large_logits_entropy_is_exact(backend_impl):
    """|z| up to ~70 with a peaked distribution (entropy down to ~0.01): the entropy accumulated as
    Σ e^{z−m}(z − m) stays within 1e-4 of itself; the textbook lse − Σ p·z in fp32 does not."""
    backend, impl = backend_impl
    gen = torch.Generator().manual_seed(0)
    n, h, v = 24, 32, 300
    hidden = torch.randn(n, h, generator=gen, dtype=torch.float64)
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64) / h**0.5 * 10
    bias = torch.full((v,), 40.0, dtype=torch.float64)
    labels = torch.randint(0, v, (n,), generator=gen)
    _, entropy = reference(hidden, weight, bias, labels, 1.0)
    bar = 1e-6 + 1e-4 * entropy
    z32 = hidden.float() @ weight.float().T + bias.float()
    textbook = torch.logsumexp(z32, -1) - (torch.softmax(z32, -1) * z32).sum(-1)
    assert ((textbook.double() - entropy).abs() > bar).any(), "the case no longer tells the two forms apart"
    with ops.backend(backend):
        _, ours = ops.token_logprobs(hidden.float(), weight.float(), labels, bias=bias.float(), return_entropy=True, impl=impl)
    assert ((ours.double() - entropy).abs() <= bar).all(), (ours.double() - entropy).abs().max()
    assert z32.abs().max() > 50


def per_row_error(low, high):
    """max over rows of |low − high| / max(|row of high|): a wrong or zeroed row scores ~1."""
    low, high = low.double().reshape(low.shape[0], -1), high.double().reshape(high.shape[0], -1)
    scale = high.abs().amax(dim=1).clamp(min=1e-30)
    return ((low - high).abs().amax(dim=1) / scale).max().item()


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_per_row_against_own_fp32(monkeypatch, impl):
    """bf16 inputs against the same values widened to fp32 through the same kernels, row by row: each
    token's log-prob and entropy, each row of grad_hidden, each vocabulary row of grad_weight and each
    element of grad_bias (a zeroed or misplaced row fails). Several backward chunks: the fp32 accumulation."""
    monkeypatch.setattr(tuning, "FORCED_CHUNK_V", 48)
    hidden, weight, b, labels, grads = make_inputs(37, 40, 300, dtype=torch.bfloat16, seed=12)
    low = outputs_and_grads(triton_logprobs(impl, labels, temperature=0.8), (hidden, weight, b), grads)
    high = outputs_and_grads(triton_logprobs(impl, labels, temperature=0.8), (hidden.float(), weight.float(), b.float()), grads)
    valid = labels != IGNORE
    for name, lo, hi in zip(("logp", "entropy"), low[0], high[0]):  # fp32 outputs of bf16-exact products
        torch.testing.assert_close(lo[valid], hi[valid], rtol=1e-5, atol=1e-5, msg=name)
    grad_hidden_low, grad_weight_low, grad_bias_low = low[1]
    grad_hidden_high, grad_weight_high, grad_bias_high = high[1]
    assert per_row_error(grad_hidden_low[valid], grad_hidden_high[valid]) < 2**-6
    assert torch.equal(grad_hidden_low[~valid], torch.zeros_like(grad_hidden_low[~valid]))
    assert per_row_error(grad_weight_low, grad_weight_high) < 2**-6
    assert per_row_error(grad_bias_low[:, None], grad_bias_high[:, None]) < 2**-6


def whole_copies(fn, numel):
    """The (op, input shapes) of every tensor copy (.to, .clone, .contiguous) of `numel` elements or more
    that fn makes, nested calls inside the custom ops included (the profiler records every aten op).
    The Triton interpreter's own transfers of each argument are byte-wise copy_ calls, not counted."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    copies = [(e.name, e.input_shapes) for e in prof.events() if e.name in ("aten::_to_copy", "aten::clone")]
    return [(name, shapes) for name, shapes in copies if shapes and shapes[0] and torch.Size(shapes[0]).numel() >= numel]


@pytest.mark.parametrize("impl", IMPLS)
def test_fp32_head_with_bf16_hidden_and_a_transposed_head_are_not_copied(monkeypatch, impl):
    """An fp32 head (read through a transposed view) with bf16 hidden states: products in bf16, as
    weight.to(bfloat16) would give, but no op ever copies the whole [V, H] head (the chunked backward casts
    one chunk at a time)."""
    monkeypatch.setattr(tuning, "FORCED_CHUNK_V", 64)
    n, h, v = 29, 24, 200
    hidden, weight, b, labels, grads = make_inputs(n, h, v, seed=13)
    hidden = hidden.bfloat16()
    head_t = weight.T.contiguous()  # [H, V]: the model stores the head transposed; we get a view
    leaves = [t.clone().requires_grad_() for t in (hidden, head_t, b)]

    def step():  # autograd.grad, not backward(): AccumulateGrad would copy the gradient into head_t's layout
        logp, ent = triton_logprobs(impl, labels, temperature=0.9)(leaves[0], leaves[1].T, leaves[2])
        torch.autograd.grad((logp * grads[0].float()).sum() + (ent * grads[1].float()).sum(), leaves)

    assert whole_copies(step, v * h) == []
    assert whole_copies(lambda: leaves[1].T.contiguous(), v * h), "the probe must see a copy of the head"
    out, got = outputs_and_grads(lambda hd, wt, bb: triton_logprobs(impl, labels, temperature=0.9)(hd, wt.T, bb),
                                 (hidden, head_t, b), grads)
    # against float64 with the head rounded to bf16 (what the products see), at bf16 precision
    ref_out, ref_grads = outputs_and_grads(lambda hd, wt, bb: reference(hd, wt.T, bb, labels, 0.9),
                                           (hidden.double(), head_t.bfloat16().double(), b), grads)
    for o, r in zip(out, ref_out):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)
    assert got[1].dtype == torch.float64 and head_t.dtype == torch.float32
    for g, r in zip(got, ref_grads):
        assert per_row_error(g, r) < 2**-6


@pytest.mark.parametrize("backend_impl", [("triton", "chunked"), ("triton", "tiled"), ("torch", None)])
def test_fp32_hidden_with_bf16_head(backend_impl):
    backend, impl = backend_impl
    hidden, weight, b, labels, grads = make_inputs(19, 32, 111, seed=14)
    weight = weight.bfloat16()

    def ours(hd, w, bb):
        with ops.backend(backend):
            return ops.token_logprobs(hd, w, labels, bias=bb, return_entropy=True, impl=impl)

    out, got = outputs_and_grads(ours, (hidden, weight, b), grads)
    ref_out, ref_grads = outputs_and_grads(lambda *t: reference(*t, labels, 1.0), (hidden, weight.double(), b), grads)
    assert_close_all(out, ref_out, rtol=1e-4, atol=1e-5)
    assert_close_all([got[0], got[2]], [ref_grads[0], ref_grads[2]], rtol=1e-4, atol=1e-5)
    assert per_row_error(got[1], ref_grads[1]) < 2**-7  # grad_weight comes back in the head's dtype, bf16


# ----------------------------------------------------------------------------- layouts and rows


@pytest.mark.parametrize("impl", IMPLS)
def test_ignored_rows_are_never_read(impl):
    """Rows whose label is ignore_index may hold NaN (fully padded positions of some attention kernels):
    every output and gradient of the labelled rows is exact, and the ignored rows get zeros."""
    hidden, weight, b, labels, grads = make_inputs(30, 20, 130, ignored=0.4, seed=15)
    ignored = labels == IGNORE
    poisoned = hidden.clone()
    poisoned[ignored] = float("nan")
    out, got = outputs_and_grads(triton_logprobs(impl, labels), (poisoned, weight, b), grads)
    ref_out, ref_grads = outputs_and_grads(lambda *t: reference(*t, labels, 1.0), (hidden, weight, b), grads)
    assert_close_all(out, ref_out, rtol=1e-4, atol=1e-5)
    assert_close_all(got, ref_grads, rtol=1e-4, atol=1e-5)
    with ops.backend("torch"):
        out, got = outputs_and_grads(lambda *t: ops.token_logprobs(*t[:2], labels, bias=t[2], return_entropy=True),
                                     (poisoned, weight, b), grads)
    assert_close_all(got, ref_grads, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_packed_rows_match_padded_sequences(impl):
    """Three sequences of different lengths with their prompts, packed back to back into one row (no
    padding) and padded into a [3, T] batch: per-sequence sums and every gradient agree, and match float64."""
    gen = torch.Generator().manual_seed(16)
    h, v = 24, 97
    lengths, prompts = [11, 4, 17], [3, 1, 6]
    weight = torch.randn(v, h, generator=gen) / h**0.5
    seqs = [torch.randn(t, h, generator=gen) for t in lengths]
    toks = [torch.randint(0, v, (t,), generator=gen) for t in lengths]
    for tok, p in zip(toks, prompts):
        tok[:p] = IGNORE
    packed_hidden, packed_labels = torch.cat(seqs), torch.cat(toks)
    segment = torch.cat([torch.full((t,), i) for i, t in enumerate(lengths)])
    padded_hidden = torch.zeros(3, max(lengths), h)
    padded_labels = torch.full((3, max(lengths)), IGNORE)
    for i, (x, tok) in enumerate(zip(seqs, toks)):
        padded_hidden[i, : len(x)], padded_labels[i, : len(x)] = x, tok
    g = torch.randn(3, generator=gen, dtype=torch.float64)

    def packed(hd, w):
        with ops.backend("triton"):
            tok = ops.token_logprobs(hd, w, packed_labels, impl=impl)
        return torch.zeros(3, dtype=tok.dtype).index_add(0, segment, tok)

    def padded(hd, w):
        with ops.backend("triton"):
            return ops.sequence_logprobs(hd, w, padded_labels, impl=impl)

    def truth(hd, w):
        return torch.zeros(3, dtype=torch.float64).index_add(0, segment, reference(hd, w, None, packed_labels, 1.0)[0])

    (p_out,), (p_hidden, p_weight) = outputs_and_grads(packed, (packed_hidden, weight), (g,))
    (d_out,), (d_hidden, d_weight) = outputs_and_grads(padded, (padded_hidden, weight), (g,))
    (t_out,), (t_hidden, t_weight) = outputs_and_grads(truth, (packed_hidden.double(), weight.double()), (g,))
    unpadded = torch.cat([d_hidden[i, :t] for i, t in enumerate(lengths)])
    assert_close_all([p_out, d_out, p_hidden, unpadded, p_weight, d_weight], [t_out, t_out, t_hidden, t_hidden, t_weight, t_weight],
                     rtol=1e-4, atol=1e-5)


def test_chunked_is_deterministic():
    """Two runs of the chunked design give bitwise-equal outputs and gradients (no atomics anywhere)."""
    hidden, weight, b, labels, grads = make_inputs(37, 40, 300, seed=17)
    runs = [outputs_and_grads(triton_logprobs("chunked", labels, temperature=0.8), (hidden, weight, b), grads) for _ in range(2)]
    for first, second in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1]):
        assert torch.equal(first, second)


def test_valid_rows_first_is_a_stable_partition():
    labels = torch.tensor([IGNORE, 5, IGNORE, 0, 7, IGNORE, 2])
    order, count = linear_logprobs.valid_rows_first(labels, IGNORE)
    assert order.tolist() == [1, 3, 4, 6, 0, 2, 5] and count.tolist() == [4] and count.dtype == torch.int32


def test_impl_comes_from_the_environment(monkeypatch):
    hidden, weight, _, labels, _ = make_inputs(5, 16, 40, seed=18)
    seen = []
    real = linear_logprobs.LinearLogprobsFunction.apply
    monkeypatch.setattr(linear_logprobs.LinearLogprobsFunction, "apply", lambda *a: seen.append(a[-1]) or real(*a))
    for name in IMPLS:
        monkeypatch.setattr(ops, "_default_impl", name)
        with ops.backend("triton"):
            ops.token_logprobs(hidden, weight, labels)
    assert seen == list(IMPLS)
    monkeypatch.setattr(ops, "_default_impl", "fastest")
    with pytest.raises(ValueError, match="GUARD_LOGPROB_IMPL must be one of"):
        ops.token_logprobs(hidden, weight, labels)
