"""guard.ops log-prob ops against a float64 reference with full logits: the Triton kernels (run on the CPU
by Triton's interpreter) and the chunked torch path, forward and every gradient, on odd shapes."""

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from guard import ops
from guard.kernels import linear_logprobs, logits_logprobs
from logprob_reference import IGNORE, SHAPES, assert_close_all, linear_case, make_inputs, outputs_and_grads, reference

needs_triton = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="the Triton kernels need CUDA or TRITON_INTERPRET=1",
)
BACKENDS = [pytest.param("triton", marks=needs_triton), "torch"]


@needs_triton
@pytest.mark.parametrize("n,h,v", SHAPES)
@pytest.mark.parametrize("bias,temperature,entropy", [(True, 0.7, True), (False, 1.0, False)])
def test_triton_token_logprobs_fp32(n, h, v, bias, temperature, entropy):
    (out, grads), (ref_out, ref_grads), _ = linear_case(
        "triton", n, h, v, dtype=torch.float32, bias=bias, temperature=temperature, entropy=entropy, ignored=0.2, seed=n + v
    )
    assert_close_all(out, ref_out, rtol=1e-4, atol=1e-5)
    assert_close_all(grads, ref_grads, rtol=1e-4, atol=1e-5)


@needs_triton
def test_triton_all_rows_ignored_give_zeros():
    (out, grads), _, _ = linear_case("triton", 9, 20, 70, dtype=torch.float32, bias=True, temperature=1.0, entropy=True, ignored=1.0, seed=1)
    assert all(torch.equal(o, torch.zeros_like(o)) for o in out)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def low_precision_errors(n, h, v, dtype, seed):
    """Max error of our Triton op and of a plain torch computation in `dtype`, both against float64."""
    (out, grads), (ref_out, ref_grads), (hidden, weight, b, labels, g) = linear_case(
        "triton", n, h, v, dtype=dtype, bias=True, temperature=0.8, entropy=True, ignored=0.2, seed=seed
    )
    torch_low = outputs_and_grads(lambda hd, w, bb: reference(hd, w, bb, labels, 0.8, dtype=dtype), (hidden, weight, b), g)
    ours = out + grads
    theirs = torch_low[0] + torch_low[1]
    truth = ref_out + ref_grads
    return [((o - t).abs().max().item(), (x - t).abs().max().item(), t.abs().max().item()) for o, x, t in zip(ours, theirs, truth)]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,h,v", [(37, 40, 300), (20, 24, 129)])
def test_triton_token_logprobs_low_precision(dtype, n, h, v):
    # The bar of DESIGN.md §5: our error ≤ 2× the error of the same math done by torch in that dtype.
    # A floor of one part in 10^3 of the value's scale absorbs ties where torch happens to be exact.
    for ours, theirs, scale in low_precision_errors(n, h, v, dtype, seed=v):
        assert ours <= 2 * theirs + 1e-3 * max(scale, 1.0), (ours, theirs, scale)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature,entropy", [(1.0, False), (0.6, True)])
def test_triton_logits_variant(dtype, temperature, entropy):
    gen = torch.Generator().manual_seed(4)
    n, v = 13, 333
    logits = (torch.randn(n, v, generator=gen, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[[2, 7]] = IGNORE
    grads = torch.randn(n, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)

    def ours(x):
        with ops.backend("triton"):
            return ops.token_logprobs_from_logits(x, labels, temperature=temperature, return_entropy=entropy)

    def truth(x, dt=torch.float64):
        logsm = torch.log_softmax(x.to(dt) / temperature, -1)
        valid = labels != IGNORE
        logp = torch.where(valid, logsm.gather(1, labels.clamp(min=0)[:, None])[:, 0], 0.0)
        ent = torch.where(valid, -(logsm.exp() * logsm).sum(-1), 0.0)
        return (logp, ent) if entropy else logp

    (out, (grad,)) = outputs_and_grads(ours, (logits,), grads)
    (ref_out, (ref_grad,)) = outputs_and_grads(truth, (logits,), grads)
    assert_close_all(out, ref_out, rtol=1e-5, atol=1e-6)  # fp32 math either way: the logits are the inputs
    if dtype == torch.float32:
        assert_close_all([grad], [ref_grad], rtol=1e-5, atol=1e-6)
    else:  # the gradient is written in bf16: within one bf16 rounding of the truth
        torch.testing.assert_close(grad, ref_grad, rtol=2**-7, atol=1e-6)


@needs_triton
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("average", [False, True])
def test_triton_sequence_logprobs(steps, average):
    gen = torch.Generator().manual_seed(steps)
    seqs, h, v = 6, 24, 150
    hidden = torch.randn(seqs, steps, h, generator=gen, requires_grad=True)
    weight = (torch.randn(v, h, generator=gen) / 3).requires_grad_()
    labels = torch.randint(0, v, (seqs, steps), generator=gen)
    labels[0] = IGNORE  # a fully ignored sequence
    labels[1, : steps - 1] = IGNORE  # prompt tokens
    with ops.backend("triton"):
        seq = ops.sequence_logprobs(hidden, weight, labels, average=average)
    g = torch.randn(seqs, generator=gen)
    (seq * g).sum().backward()
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    tok, _ = reference(h64.reshape(-1, h), w64, None, labels.reshape(-1), 1.0)
    ref = tok.view(seqs, steps).sum(1)
    if average:
        ref = ref / (labels != IGNORE).sum(1).clamp(min=1)
    (ref * g.double()).sum().backward()
    assert seq[0].item() == 0.0
    torch.testing.assert_close(seq.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden.grad.double(), h64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weight.grad.double(), w64.grad, rtol=1e-4, atol=1e-5)
    assert hidden.grad[0].abs().max() == 0  # no gradient into the ignored sequence


@needs_triton
@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(
    n=st.integers(1, 40), h=st.integers(1, 50), v=st.integers(2, 260),
    bias=st.booleans(), entropy=st.booleans(), temperature=st.floats(0.5, 2.0), seed=st.integers(0, 1000),
)
def test_triton_token_logprobs_random_shapes(n, h, v, bias, entropy, temperature, seed):
    (out, grads), (ref_out, ref_grads), _ = linear_case(
        "triton", n, h, v, dtype=torch.float32, bias=bias, temperature=temperature, entropy=entropy, ignored=0.3, seed=seed
    )
    assert_close_all(out, ref_out, rtol=1e-4, atol=1e-5)
    assert_close_all(grads, ref_grads, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- the torch path


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_path_chunks_match_reference(monkeypatch, dtype):
    n, h, v = 29, 12, 97
    monkeypatch.setattr(ops, "TORCH_CHUNK_ELEMENTS", 4 * v)  # 4 rows a chunk: 8 chunks, the last short
    (out, grads), (ref_out, ref_grads), _ = linear_case(
        "torch", n, h, v, dtype=dtype, bias=True, temperature=0.9, entropy=True, ignored=0.25, seed=2
    )
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert_close_all(out, ref_out, rtol=tol, atol=tol)
    assert_close_all(grads, ref_grads, rtol=tol * 10, atol=tol)


def test_torch_path_gradcheck(monkeypatch):
    monkeypatch.setattr(ops, "TORCH_CHUNK_ELEMENTS", 2 * 11)
    hidden, weight, b, labels, _ = make_inputs(5, 4, 11, dtype=torch.float64, seed=3)

    def fn(hd, w, bb):
        with ops.backend("torch"):
            return ops.token_logprobs(hd, w, labels, bias=bb, temperature=0.8, return_entropy=True)

    assert torch.autograd.gradcheck(fn, tuple(t.requires_grad_() for t in (hidden, weight, b)))
    logits = torch.randn(5, 11, dtype=torch.float64, requires_grad=True)
    with ops.backend("torch"):
        assert torch.autograd.gradcheck(lambda x: ops.token_logprobs_from_logits(x, labels, temperature=1.3, return_entropy=True), (logits,))


def test_auto_backend_uses_torch_on_cpu(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the Triton path ran on CPU tensors under backend='auto'")

    monkeypatch.setattr(linear_logprobs.LinearLogprobsFunction, "apply", boom)
    hidden, weight, _, labels, _ = make_inputs(4, 8, 20)
    with ops.backend("auto"):
        ops.token_logprobs(hidden, weight, labels)


# ----------------------------------------------------------------------------- registration and errors


@needs_triton
@pytest.mark.parametrize("impl", linear_logprobs.IMPLS)
def test_custom_ops_pass_opcheck(impl):
    from guard.kernels.linear_logprobs import _BACKWARDS

    hidden, weight, b, labels, _ = make_inputs(6, 16, 40, seed=5)
    labels[0] = IGNORE
    torch.library.opcheck(linear_logprobs.linear_logprobs_fwd, (hidden, weight, b, labels, 1.0, IGNORE, True))
    logp, ent, lse, order, count = linear_logprobs.linear_logprobs_fwd(hidden, weight, b, labels, 1.0, IGNORE, True)
    for needs in ((True, True, True), (True, False, False), (False, True, False)):
        args = (hidden, weight, b, labels, order, count, lse, ent, torch.ones(6), torch.ones(6), 1.0, IGNORE, True, *needs)
        torch.library.opcheck(_BACKWARDS[impl], args)
    logits = torch.randn(6, 40)
    torch.library.opcheck(logits_logprobs.logits_logprobs_fwd, (logits, labels, 1.0, IGNORE, True))


@needs_triton
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")  # dynamo's own probe
def test_works_under_torch_compile():
    hidden, weight, b, labels, _ = make_inputs(11, 20, 90, seed=6)

    def loss(hd, w):
        lp, ent = ops.token_logprobs(hd, w, labels, bias=b, return_entropy=True)
        return (lp * 2 + ent).sum()

    compiled = torch.compile(loss, backend="aot_eager")
    with ops.backend("triton"):
        eager_args = [t.clone().requires_grad_() for t in (hidden, weight)]
        compiled_args = [t.clone().requires_grad_() for t in (hidden, weight)]
        expected = loss(*eager_args)
        got = compiled(*compiled_args)
        expected.backward()
        got.backward()
    torch.testing.assert_close(got, expected)
    for a, e in zip(compiled_args, eager_args):
        torch.testing.assert_close(a.grad, e.grad)


def test_bad_input_is_named():
    hidden, weight, _, labels, _ = make_inputs(5, 8, 20)
    labels[3] = 20
    with pytest.raises(ValueError, match=r"labels\[3\] = 20 is outside the vocabulary \[0, 20\)"):
        ops.token_logprobs(hidden, weight, labels, check=True)
    labels[3] = -5
    with pytest.raises(ValueError, match=r"labels\[3\] = -5"):
        ops.token_logprobs(hidden, weight, labels, check=True)
    with pytest.raises(ValueError, match=r"labels\[\(1, 0\)\] = 99"):
        ops.sequence_logprobs(hidden.view(1, 5, 8).expand(2, 5, 8), weight, torch.tensor([[0] * 5, [99] + [0] * 4]), check=True)
    with pytest.raises(ValueError, match=r"labels\[2\] = 20 is outside the vocabulary"):
        ops.token_logprobs_from_logits(torch.zeros(3, 20), torch.tensor([0, 1, 20]), check=True)
    with pytest.raises(ValueError, match="must have the same H"):
        ops.token_logprobs(hidden, weight[:, :5], labels.clamp(0, 19))
    with pytest.raises(ValueError, match="temperature must be positive"):
        ops.token_logprobs(hidden, weight, labels.clamp(0, 19), temperature=0.0)
    with pytest.raises(ValueError, match="temperature must be positive and finite, got inf"):
        ops.token_logprobs(hidden, weight, labels.clamp(0, 19), temperature=float("inf"))
    with pytest.raises(ValueError, match=r"hidden must be \[N, H\] and labels \[N\], got \(5, 8\) and \(3,\)"):
        ops.token_logprobs(hidden, weight, labels[:3])
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.set_backend("cuda")
    with pytest.raises(ValueError, match=r"impl must be one of \('chunked', 'tiled'\), got 'fast'"):
        ops.token_logprobs(hidden, weight, labels.clamp(0, 19), impl="fast")


@pytest.mark.parametrize("backend", BACKENDS)
def test_unchecked_bad_labels_give_nan_rows(backend):
    """Without check=True nothing synchronises; a label outside the vocabulary is never a plausible number:
    its row's log-prob and entropy are NaN, the other rows are exact, on every path."""
    hidden, weight, b, labels, _ = make_inputs(9, 12, 40, seed=8)
    labels[[2, 5]] = torch.tensor([40, -7])
    labels[7] = IGNORE
    with ops.backend(backend):
        logp, ent = ops.token_logprobs(hidden, weight, labels, bias=b, return_entropy=True)
        from_logits = ops.token_logprobs_from_logits(hidden @ weight.T + b, labels)
    good = torch.ones(9, dtype=torch.bool)
    good[[2, 5]] = False
    ref_logp, ref_ent = reference(hidden, weight, b, labels.where(good, 0), 1.0)
    for got in (logp, ent, from_logits):
        assert got[~good].isnan().all()
    assert logp[7] == 0 and ent[7] == 0
    torch.testing.assert_close(logp[good].double(), ref_logp[good], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent[good].double(), ref_ent[good], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_logits[good].double(), ref_logp[good], rtol=1e-5, atol=1e-5)
