"""Multi-process training support for the trainer: process group setup, FSDP2 sharding, differentiable
row gathering, gradient averaging for small replicated modules, distributed checkpoints and the final
full state dict.

Every function is a no-op (or the obvious single-process equivalent) when the run is not distributed,
so a recipe is written once and runs both ways::

    dist = init_distributed()                     # torchrun sets WORLD_SIZE/RANK/LOCAL_RANK
    model = shard_model(model, dist)              # FSDP2 on each *DecoderLayer and on the root
    ...
    scores = gather_rows(local_scores, dist)      # [rows of all ranks], differentiable
    loss = loss_fn(scores)                        # the same global loss on every rank
    loss.backward()
    average_gradients(adversary, dist)            # replicated module: mean of its grads
    optimizer.step()
    save_checkpoint(run_dir, step, model, {"model": opt}, {"adversary": adversary}, extra, dist)
    ...
    state = full_state_dict(model, dist)          # full CPU state on rank 0, None elsewhere

Gradient semantics of `gather_rows`: FSDP2 averages parameter gradients over ranks. When every rank
computes the same loss L from the gathered rows, the true gradient of L with respect to rank r's
parameters' contribution is dL/d(rows of r), and FSDP will divide by the world size; so the backward
of the gather all-reduce-SUMs the incoming gradient and returns this rank's slice (W × its share when
the loss is identical everywhere). After FSDP's mean, parameter gradients equal the single-process
gradient of L on the global batch. A loss computed on *local* rows only (DDP style, e.g. a mean over
local rows) needs no gather: FSDP's mean over equal-sized local batches already gives the global mean.
Keep rows that must stay aligned (a pair's chosen and rejected scores) in one tensor, e.g.
`torch.stack([chosen, rejected], dim=1)`, and gather that once: the row order is rank order.

CPU / gloo: everything here works with the gloo backend on the CPU (this is what the tests run):
`fully_shard` with a CPU device mesh, DTensor state dicts, `torch.distributed.checkpoint` save/load
with resharding, and full state dicts via `get_model_state_dict(full_state_dict=True,
cpu_offload=True)`. Gloo has no reduce-scatter for plain tensors and all-gather needs equal shapes, so
`gather_rows` pads to the largest rank and uses all-gather + all-reduce (NCCL takes the same path).
`torch.distributed.checkpoint` without a process group works in a single process (`no_dist=True`);
torch warns that it "assumes the intent is to save in a single process", which is exactly the intent,
so that warning is silenced here.

Checkpoints: `run_dir/checkpoints/step-{step:08d}/` holds the DCP files (model, optimizers and the
small replicated modules in one DCP state), `extra.json` (from rank 0), `rng-{rank}.pt` (each rank's
python / numpy / torch / cuda RNG states, loadable with `weights_only=True`) and `meta.json`. It is
written as `step-XXXXXXXX.tmp` and renamed by rank 0 after every rank finished, so a killed run never
leaves a directory `latest_checkpoint` would trust. `run_dir` must be on a filesystem all ranks share.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

__all__ = [
    "Dist",
    "init_distributed",
    "shutdown",
    "barrier",
    "shard_model",
    "gather_rows",
    "average_gradients",
    "all_reduce_mean",
    "save_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "full_state_dict",
]

_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass(frozen=True)
class Dist:
    """Where this process stands: its rank among `world_size` processes, the rank on its node, and
    the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on the process that writes files meant to exist once (logs, reports, final model)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part (a process group is in use)."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _resolve_device(device: str | torch.device, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but no CUDA device is available")
        # One GPU per process: the local rank picks it unless the caller named an index.
        index = dev.index if dev.index is not None else local_rank % torch.cuda.device_count()
        dev = torch.device("cuda", index)
    return dev


def init_distributed(device: str | torch.device = "auto") -> Dist:
    """Join the torchrun process group when launched with WORLD_SIZE > 1 (NCCL on CUDA, gloo on the
    CPU) and bind this process to its GPU; otherwise describe a single process. `device="auto"` is
    CUDA when available, else the CPU. Calling it again in an initialized process reuses the group."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = _resolve_device(device, local_rank)
    if world_size <= 1:
        return Dist(0, 1, 0, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not tdist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        tdist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return Dist(tdist.get_rank(), tdist.get_world_size(), local_rank, dev)


def shutdown(dist: Dist, *, wait: bool = True) -> None:
    """Leave the process group (no-op single process). `wait`: meet the other ranks at a barrier first, so no
    rank tears down its connections while a peer is still exchanging with it (gloo aborts that peer); pass
    wait=False on an error path, where the other ranks may never arrive."""
    if dist.enabled and tdist.is_initialized():
        if wait:
            barrier(dist)
        tdist.destroy_process_group()


def barrier(dist: Dist) -> None:
    """Wait for every rank (no-op single process)."""
    if not dist.enabled:
        return
    if dist.device.type == "cuda":
        # NCCL otherwise guesses the device and warns about it.
        tdist.barrier(device_ids=[dist.device.index])
    else:
        tdist.barrier()


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    # Generic over architectures and wrappers (peft nests the backbone a few levels deeper): the
    # transformer blocks are the modules whose class name ends in "DecoderLayer". Outermost only, so
    # a block nested inside another is never wrapped twice.
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        inside_found = any(name.startswith(prefix + ".") for prefix in found)
        if type(module).__name__.endswith("DecoderLayer") and not inside_found:
            found[name] = module
    return list(found.values())


def shard_model(model: nn.Module, dist: Dist, *, param_dtype: torch.dtype | None = None) -> nn.Module:
    """Shard `model` with FSDP2 (`fully_shard`) over all ranks: one unit per decoder layer (any module
    whose class name ends in "DecoderLayer") and the root for the rest (embeddings, norm, score head).
    `param_dtype` (e.g. bf16) is the compute dtype of the gathered parameters; gradients are reduced in
    float32. Parameters move to `dist.device`. Returns `model` itself (its class becomes an FSDP
    subclass); its `generate`, if it has one, gathers the root's parameters around the call. Not
    distributed: returned unchanged (move it to `dist.device` yourself)."""
    if not dist.enabled:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    kwargs: dict[str, Any] = {"mesh": mesh}
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in _decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    if callable(getattr(model, "generate", None)):
        # A peft model's generate reaches the inner model's forward without passing the root's: gather the
        # root's parameters around the whole call.
        from torch.distributed.fsdp import register_fsdp_forward_method

        register_fsdp_forward_method(model, "generate")
    return model


def forward_method(model: nn.Module, name: str, make: Callable[[], Callable]) -> Callable:
    """`model.<name>`, the function `make()` builds, registered as an FSDP2 forward method so that calling it
    all-gathers the root unit's parameters (embeddings, norm, heads) and reduces their gradients, as the
    model's own forward would (a no-op unsharded). Made once per model object: a deep copy made later (whose
    copied attribute would still call the original's closure) gets its own, since the owner id recorded
    beside it is not the copy's."""
    owner = f"{name}_owner"
    if getattr(model, owner, None) != id(model):
        from torch.distributed.fsdp import register_fsdp_forward_method

        setattr(model, name, make())
        register_fsdp_forward_method(model, name)
        setattr(model, owner, id(model))
    return getattr(model, name)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes, ctx.rank = sizes, rank
        longest = max(sizes)
        padded = t.new_zeros((longest, *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in sizes]
        tdist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        # Sum over ranks: each rank's loss reads this rank's rows; see the module docstring.
        grad = grad.contiguous()
        tdist.all_reduce(grad, op=tdist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def local_rows(rows: np.ndarray, dist) -> np.ndarray:
    """This rank's contiguous share of a global batch, so the gathered rewards come back in batch order."""
    share = len(rows) // dist.world_size
    return rows[dist.rank * share:(dist.rank + 1) * share]


def rank_chunks(n_items: int, batch_size: int, dist):
    """(n, this rank's rows) for each chunk of about `batch_size` of range(n_items), in order, split over the
    ranks. A chunk that does not divide is padded with its last item, so every rank runs the same number of
    forwards (FSDP collectives): keep the first n of the gathered results."""
    step = max(dist.world_size, batch_size - batch_size % dist.world_size)
    for start in range(0, n_items, step):
        rows = np.arange(start, min(start + step, n_items))
        n = len(rows)
        if n % dist.world_size:
            rows = np.concatenate([rows, np.full(dist.world_size - n % dist.world_size, rows[-1])])
        yield n, local_rows(rows, dist)


def gather_rows(t: torch.Tensor, dist: Dist) -> torch.Tensor:
    """All-gather `t` along dim 0 in rank order, differentiably (ranks may hold different row counts;
    the other dims must match). Backward sums the gradient over ranks, so that with FSDP's gradient
    mean, every rank computing the same loss from the result reproduces the single-process gradients
    of that loss. Returns `t` unchanged when not distributed."""
    if not dist.enabled:
        return t
    if t.dim() == 0:
        raise ValueError("gather_rows needs a tensor with a row dimension (got a scalar)")
    shape = torch.tensor([t.shape[0], *t.shape[1:]], dtype=torch.long, device=t.device)
    shapes = [torch.empty_like(shape) for _ in range(dist.world_size)]
    tdist.all_gather(shapes, shape)
    trailing = {tuple(s[1:].tolist()) for s in shapes}
    if len(trailing) != 1:
        raise ValueError(f"gather_rows: ranks disagree on the trailing shape: {sorted(trailing)}")
    sizes = [int(s[0]) for s in shapes]
    return _GatherRows.apply(t, sizes, dist.rank)


def gather_objects(obj: Any, dist: Dist) -> list[Any]:
    """Every rank's picklable `obj`, in rank order, on every rank ([obj] single process)."""
    if not dist.enabled:
        return [obj]
    out: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: Sequence[float], dist: Dist) -> list[float]:
    """Element-wise sums over ranks of a few numbers (float64), on every rank."""
    if not dist.enabled:
        return [float(v) for v in values]
    buffer = torch.tensor([float(v) for v in values], dtype=torch.float64, device=dist.device)
    tdist.all_reduce(buffer, op=tdist.ReduceOp.SUM)
    return buffer.tolist()


def average_gradients(module: nn.Module, dist: Dist) -> None:
    """Replace the gradients of a small replicated (not sharded) module by their mean over ranks, in
    one all-reduce. A parameter keeps `grad=None` only when it has none on every rank; a rank without
    a gradient for it contributes zeros. No-op when not distributed."""
    if not dist.enabled:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    device = params[0].device
    flat = [
        p.grad.detach().reshape(-1).float() if p.grad is not None else torch.zeros(p.numel(), device=device)
        for p in params
    ]
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    buffer = torch.cat([*flat, present])
    tdist.all_reduce(buffer, op=tdist.ReduceOp.SUM)
    values, counts = buffer[: -len(params)], buffer[-len(params) :]
    offset = 0
    for p, count in zip(params, counts.tolist()):
        mean = (values[offset : offset + p.numel()] / dist.world_size).view_as(p)
        offset += p.numel()
        if count == 0:
            continue
        if p.grad is None:
            p.grad = mean.to(p.dtype)
        else:
            p.grad.copy_(mean)


def all_reduce_mean(x: float | torch.Tensor, dist: Dist) -> float:
    """The mean over ranks of a number (or a one-element tensor), as a float on every rank."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(
                f"all_reduce_mean takes a number or a one-element tensor, got shape {tuple(x.shape)}"
            )
        value = float(x.detach().float().item())
    else:
        value = float(x)
    if not dist.enabled:
        return value
    buffer = torch.tensor([value], dtype=torch.float64, device=dist.device)
    tdist.all_reduce(buffer, op=tdist.ReduceOp.SUM)
    return float(buffer.item()) / dist.world_size


# ---------------------------------------------------------------------------------------------------
# Checkpoints


def _owner(
    opt: torch.optim.Optimizer, name: str, model: nn.Module, modules: Mapping[str, nn.Module]
) -> nn.Module:
    # get/set_optimizer_state_dict key optimizer state by parameter names, so they need the module the
    # optimizer's parameters belong to.
    params = {id(p) for group in opt.param_groups for p in group["params"]}
    for candidate in (model, *modules.values()):
        if params <= {id(p) for p in candidate.parameters()}:
            return candidate
    raise ValueError(
        f"optimizer {name!r}: its parameters are not all in the model or in one of the modules "
        f"{sorted(modules)}; give each optimizer the parameters of a single module"
    )


def _dcp_state(
    model: nn.Module, optimizers: Mapping[str, torch.optim.Optimizer], modules: Mapping[str, nn.Module]
) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    for name, module in modules.items():
        state[f"module.{name}"] = module.state_dict()
    for name, opt in optimizers.items():
        state[f"optim.{name}"] = get_optimizer_state_dict(_owner(opt, name, model, modules), opt)
    return state


def _rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        # Plain containers and tensors only, so torch.load(weights_only=True) reads it back.
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def _quiet_dcp():
    # DCP warns that it "assumes the intent is to save/load in a single process" whenever no process
    # group is initialized, even with no_dist=True; that is the intent here.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"torch\.distributed is disabled, unavailable or uninitialized"
        )
        yield


def _checkpoint_dirs(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir() and (entry / ".metadata").is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer],
    modules: Mapping[str, nn.Module],
    extra: Mapping[str, Any],
    dist: Dist,
    *,
    keep: int = 2,
) -> Path:
    """Write `run_dir/checkpoints/step-{step:08d}/` (collective: every rank calls it): the model
    (sharded or not), each optimizer and each small replicated module in one torch.distributed
    checkpoint, `extra` as extra.json (JSON-serializable: step counters, data position, ...) and every
    rank's RNG states. Written under a `.tmp` name and renamed once complete; then only the newest
    `keep` checkpoints are kept. Returns the checkpoint directory."""
    import torch.distributed.checkpoint as dcp

    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp = root / f"step-{step:08d}.tmp"
    try:
        extra_text = json.dumps(dict(extra), indent=2, sort_keys=True)
    except TypeError as e:
        raise ValueError(f"checkpoint extra must be JSON-serializable: {e}") from None
    if dist.is_main:
        # A .tmp left by a killed run is garbage: start clean.
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier(dist)

    state = _dcp_state(model, optimizers, modules)
    with _quiet_dcp():
        dcp.save(state, checkpoint_id=str(tmp), no_dist=not dist.enabled)
    torch.save(_rng_state(), tmp / f"rng-{dist.rank}.pt")
    if dist.is_main:
        (tmp / "extra.json").write_text(extra_text + "\n")
        meta = {"step": step, "world_size": dist.world_size, "torch": torch.__version__}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    barrier(dist)

    if dist.is_main:
        old = None
        if final.exists():
            # Re-saving the same step (e.g. after a resume): move the old one aside, never delete a
            # complete checkpoint before the new one is in place.
            old = root / f"step-{step:08d}.old"
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old)
        for _, path in _checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(path)
    barrier(dist)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under `run_dir/checkpoints/` (unfinished `.tmp` ones ignored),
    or None."""
    found = _checkpoint_dirs(run_dir)
    return found[-1][1] if found else None


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer],
    modules: Mapping[str, nn.Module],
    dist: Dist,
) -> dict[str, Any]:
    """Restore a checkpoint written by `save_checkpoint` into `model` (already sharded the way it will
    train), `optimizers` and `modules` (the same names as when saved), and this rank's RNG states;
    collective. Returns `extra`. The world size may differ from the saving run (DCP reshards); then
    ranks without a saved RNG state keep their own, with a warning."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    path = Path(path)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(
            f"not a checkpoint: {path} (no .metadata; expected a directory written by save_checkpoint)"
        )
    state = _dcp_state(model, optimizers, modules)
    with _quiet_dcp():
        dcp.load(state, checkpoint_id=str(path), no_dist=not dist.enabled)
    set_model_state_dict(model, state["model"])
    for name, module in modules.items():
        module.load_state_dict(state[f"module.{name}"])
    for name, opt in optimizers.items():
        set_optimizer_state_dict(_owner(opt, name, model, modules), opt, state[f"optim.{name}"])

    rng_path = path / f"rng-{dist.rank}.pt"
    if rng_path.is_file():
        _set_rng_state(torch.load(rng_path, weights_only=True))
    else:
        warnings.warn(
            f"{rng_path} missing (checkpoint saved with another world size): RNG state not restored",
            stacklevel=2,
        )
    extra_path = path / "extra.json"
    return json.loads(extra_path.read_text()) if extra_path.is_file() else {}


def full_state_dict(model: nn.Module, dist: Dist) -> dict[str, torch.Tensor] | None:
    """The full, unsharded state dict as CPU tensors on rank 0 (None on the other ranks; collective),
    for `save_pretrained`: a snapshot, later training does not change it. Not distributed: a CPU copy
    of `model.state_dict()`."""
    if not dist.enabled:
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if dist.is_main else None
