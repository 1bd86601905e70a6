"""guard.distributed: single-process behaviour in this process (no-ops, checkpoint round trip with RNG,
checkpoint files, pruning and errors), and one torchrun launch of tests/distributed_worker.py on 2 CPU
processes with gloo + FSDP2, compared against the single-process run of the same global batches:
losses, every step's gradients and the final parameters; a 2-rank checkpoint resumed under 2 ranks and
under 1 process; gather_rows with unequal row counts and its gradient."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import guard
from guard.distributed import (
    Dist,
    _decoder_layers,
    all_reduce_mean,
    average_gradients,
    full_state_dict,
    gather_rows,
    init_distributed,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    shard_model,
)

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("distributed_worker", HERE / "distributed_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

SINGLE = Dist()
ATOL = 1e-5


def assert_state_close(actual: dict, expected: dict, atol: float = ATOL, rtol: float = 1e-4) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(
            actual[name], expected[name], atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}"
        )


# --- single process ---------------------------------------------------------------------------------


def test_single_process_helpers_are_identity(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    dist = init_distributed("cpu")
    assert dist == Dist(0, 1, 0, torch.device("cpu")) and dist.is_main and not dist.enabled
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not init_distributed("cpu").enabled

    t = torch.randn(3, 2)
    assert gather_rows(t, dist) is t
    assert all_reduce_mean(torch.tensor([2.5]), dist) == 2.5 and all_reduce_mean(3, dist) == 3.0
    with pytest.raises(ValueError, match="one-element"):
        all_reduce_mean(torch.ones(2), dist)

    model = worker.build_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert shard_model(model, dist) is model and type(model).__name__ == "LlamaForSequenceClassification"
    lin = nn.Linear(2, 1)
    lin(t).sum().backward()
    grad = lin.weight.grad.clone()
    average_gradients(lin, dist)
    assert torch.equal(lin.weight.grad, grad)
    assert_state_close(full_state_dict(model, dist), before, atol=0, rtol=0)


def test_decoder_layers_are_found_generically():
    model = worker.build_model(0)
    assert _decoder_layers(model) == list(model.model.layers)

    class InnerDecoderLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(2, 2)

    class MyDecoderLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = InnerDecoderLayer()

    nested = nn.Sequential(MyDecoderLayer(), nn.Linear(2, 2), MyDecoderLayer())
    assert _decoder_layers(nested) == [nested[0], nested[2]]  # outermost only, never nested twice

    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["q_proj"]))
    assert _decoder_layers(wrapped) == list(model.model.layers)


def test_single_process_checkpoint_resume_is_exact(tmp_path):
    result = worker.run(SINGLE, tmp_path)
    assert result["extra"] == {"step": worker.SAVE_AT}
    resumed = [s["loss"] for s in result["resumed"]]
    assert resumed == [s["loss"] for s in result["steps"][worker.SAVE_AT :]]
    assert_state_close(result["resumed_final"], result["final"], atol=0, rtol=0)


def _tiny_setup(seed: int):
    torch.manual_seed(seed)
    model, adversary = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1)), nn.Linear(1, 2)
    opts = {
        "model": torch.optim.AdamW(model.parameters(), lr=0.1),
        "adversary": torch.optim.SGD(adversary.parameters(), lr=0.1, momentum=0.9),
    }
    return model, adversary, opts


def _train(model, adversary, opts):
    x = torch.randn(5, 4)
    loss = model(x).pow(2).mean() + adversary(model(x)).logsumexp(-1).mean()
    loss.backward()
    for opt in opts.values():
        opt.step()
        opt.zero_grad()


def test_checkpoint_restores_states_and_rng(tmp_path):
    model, adversary, opts = _tiny_setup(0)
    _train(model, adversary, opts)
    extra = {"step": 7, "epoch": 1, "note": "x"}
    path = save_checkpoint(tmp_path, 7, model, opts, {"adversary": adversary}, extra, SINGLE)
    draws = (random.random(), float(np.random.rand()), torch.rand(3))
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    expected_opt = opts["model"].state_dict()
    expected_momentum = opts["adversary"].state_dict()["state"][0]["momentum_buffer"].clone()
    expected_adv = {k: v.clone() for k, v in adversary.state_dict().items()}

    model2, adversary2, opts2 = _tiny_setup(1)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    assert load_checkpoint(path, model2, opts2, {"adversary": adversary2}, SINGLE) == extra
    assert (random.random(), float(np.random.rand())) == draws[:2] and torch.equal(torch.rand(3), draws[2])
    assert_state_close(model2.state_dict(), expected, atol=0, rtol=0)
    assert_state_close(adversary2.state_dict(), expected_adv, atol=0, rtol=0)
    got_opt = opts2["model"].state_dict()
    for i, state in expected_opt["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(got_opt["state"][i][key], value, atol=0, rtol=0)
    assert got_opt["param_groups"][0]["lr"] == 0.1
    momentum = opts2["adversary"].state_dict()["state"][0]["momentum_buffer"]
    torch.testing.assert_close(momentum, expected_momentum, atol=0, rtol=0)

    # The RNG file is readable with weights_only=True (safe loading).
    assert set(torch.load(path / "rng-0.pt", weights_only=True)) >= {"python", "numpy", "torch"}
    assert json.loads((path / "meta.json").read_text())["world_size"] == 1


def test_checkpoint_layout_pruning_and_latest(tmp_path):
    model, adversary, opts = _tiny_setup(0)
    assert latest_checkpoint(tmp_path) is None
    for step in (1, 2, 3):
        _train(model, adversary, opts)
        save_checkpoint(tmp_path, step, model, opts, {"adversary": adversary}, {"step": step}, SINGLE)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002", "step-00000003"]  # keep=2

    # An interrupted save (a .tmp) and a directory without DCP metadata are never trusted.
    (root / "step-00000009.tmp").mkdir()
    (root / "step-00000009.tmp" / ".metadata").write_text("half written")
    (root / "step-00000008").mkdir()
    assert latest_checkpoint(tmp_path) == root / "step-00000003"

    # Re-saving a step replaces it; a stale .tmp of that step is cleared first.
    (root / "step-00000004.tmp").mkdir()
    (root / "step-00000004.tmp" / "junk").write_text("x")
    save_checkpoint(tmp_path, 4, model, {"model": opts["model"]}, {}, {"step": 4}, SINGLE, keep=1)
    save_checkpoint(tmp_path, 4, model, {"model": opts["model"]}, {}, {"step": 44}, SINGLE, keep=1)
    names = sorted(p.name for p in root.iterdir())
    assert names == ["step-00000004", "step-00000008", "step-00000009.tmp"]
    assert not (root / "step-00000004" / "junk").exists()
    assert json.loads((root / "step-00000004" / "extra.json").read_text()) == {"step": 44}


def test_checkpoint_errors(tmp_path):
    model, adversary, opts = _tiny_setup(0)
    stray = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer 'stray'"):
        save_checkpoint(tmp_path, 1, model, {"stray": stray}, {"adversary": adversary}, {}, SINGLE)
    with pytest.raises(ValueError, match="JSON-serializable"):
        save_checkpoint(tmp_path, 1, model, opts, {"adversary": adversary}, {"x": object()}, SINGLE)
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        load_checkpoint(tmp_path, model, opts, {"adversary": adversary}, SINGLE)
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, 1, model, {}, {}, {}, SINGLE, keep=0)

    path = save_checkpoint(tmp_path, 1, model, opts, {"adversary": adversary}, {}, SINGLE)
    (path / "rng-0.pt").unlink()
    with pytest.warns(UserWarning, match="RNG state not restored"):
        load_checkpoint(path, model, opts, {"adversary": adversary}, SINGLE)


# --- two processes (torchrun, gloo, FSDP2 on the CPU) ------------------------------------------------


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One torchrun launch of the worker; returns (its results, its run dir)."""
    tmp = tmp_path_factory.mktemp("two_ranks")
    run_dir, out = tmp / "run", tmp / "out.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", RAYON_NUM_THREADS="1")
    # Make the subprocess import the same guard this process imported.
    source = str(Path(guard.__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    # --standalone: a local rendezvous on a free port, so concurrent test runs never collide.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "distributed_worker.py"), str(run_dir), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return torch.load(out, weights_only=True), run_dir


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return worker.run(SINGLE, tmp_path_factory.mktemp("single"))


@pytest.mark.slow
def test_two_ranks_match_single_process(two_ranks, single):
    dist_result, _ = two_ranks
    assert dist_result["world_size"] == 2
    for step, (d, s) in enumerate(zip(dist_result["steps"], single["steps"]), 1):
        assert d["loss"] == pytest.approx(s["loss"], rel=1e-6, abs=1e-6), f"step {step}"
        assert d["bt"] == pytest.approx(s["bt"], rel=1e-6, abs=1e-6), f"step {step}"
        # Gradients, not only AdamW steps (which barely see a gradient scale error).
        assert_state_close(d["grads"], s["grads"])
        assert_state_close(d["adv_grads"], s["adv_grads"])
    assert_state_close(dist_result["final"], single["final"])
    assert_state_close(dist_result["final_adversary"], single["final_adversary"])
    # The check has teeth: training moved the parameters well beyond the tolerance.
    initial = worker.build_model(0).state_dict()
    moved = max(float((single["final"][k] - initial[k]).abs().max()) for k in initial)
    assert moved > 100 * ATOL


@pytest.mark.slow
def test_two_rank_checkpoint_resumes_identically(two_ranks):
    dist_result, run_dir = two_ranks
    ckpt = latest_checkpoint(run_dir)
    assert ckpt is not None and ckpt.name == f"step-{worker.SAVE_AT:08d}"
    assert {p.name for p in ckpt.iterdir()} >= {".metadata", "extra.json", "meta.json", "rng-0.pt", "rng-1.pt"}
    assert dist_result["extra"] == {"step": worker.SAVE_AT}
    uninterrupted = [s["loss"] for s in dist_result["steps"][worker.SAVE_AT :]]
    assert [s["loss"] for s in dist_result["resumed"]] == uninterrupted
    assert_state_close(dist_result["resumed_final"], dist_result["final"], atol=0, rtol=0)


@pytest.mark.slow
def test_two_rank_checkpoint_loads_in_one_process(two_ranks):
    # DCP reshards: the 2-rank checkpoint restores a plain model, its optimizers and rank 0's RNG.
    dist_result, run_dir = two_ranks
    data = worker.dataset()
    model, adversary, optimizers = worker.setup(SINGLE, seed=7)
    worker.seed_all(99)
    extra = load_checkpoint(latest_checkpoint(run_dir), model, optimizers, {"adversary": adversary}, SINGLE)
    assert_state_close(model.state_dict(), dist_result["saved_state"], atol=0, rtol=0)
    losses = [
        worker.train_step(model, adversary, optimizers, data, SINGLE)["loss"]
        for _ in range(extra["step"], worker.STEPS)
    ]
    uninterrupted = [s["loss"] for s in dist_result["steps"][worker.SAVE_AT :]]
    assert losses == pytest.approx(uninterrupted, rel=1e-6, abs=1e-6)
    assert_state_close(model.state_dict(), dist_result["final"])


@pytest.mark.slow
def test_gather_rows_unequal_rows_and_gradient(two_ranks):
    checks = two_ranks[0]["checks"]
    # Rank r held r + 1 rows filled with r; the result is in rank order.
    expected = torch.tensor([[0.0] * 3, [1.0] * 3, [1.0] * 3])
    torch.testing.assert_close(checks["gathered"], expected, atol=0, rtol=0)
    # Loss sum(w * gathered) on every rank: each rank's rows get world_size * w (FSDP then averages).
    w = torch.arange(9, dtype=torch.float32).view(3, 3)
    torch.testing.assert_close(checks["grad"][0], 2 * w[:1], atol=0, rtol=0)
    torch.testing.assert_close(checks["grad"][1], 2 * w[1:], atol=0, rtol=0)
    assert checks["mean"] == 0.5
