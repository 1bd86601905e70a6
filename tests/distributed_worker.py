"""Worker for tests/test_distributed.py: a few training steps of a tiny Llama reward model with a
BT loss on gathered pair scores plus a replicated adversary, with a checkpoint and a resume.

Run under torchrun (what the test does), it shards the model with FSDP2 over gloo on the CPU and
rank 0 writes the recorded losses, gradients and parameters to OUT.pt:

    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node 2 \
        tests/distributed_worker.py RUN_DIR OUT.pt

The test imports the same functions to run the single-process reference on the same global batch.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from guard.distributed import (
    Dist,
    all_reduce_mean,
    average_gradients,
    full_state_dict,
    gather_rows,
    init_distributed,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    shard_model,
    shutdown,
)

N_PAIRS, GLOBAL_PAIRS, SEQ, VOCAB, PAD = 32, 8, 8, 64, 0
STEPS, SAVE_AT = 4, 2


def build_model(seed: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD, num_labels=1,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForSequenceClassification(config)


def build_adversary(seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Linear(1, 2)


def dataset() -> dict[str, torch.Tensor]:
    """Fixed pairs (right padded, lengths 3..SEQ) and a category per pair, independent of global RNG."""
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(1, VOCAB, (N_PAIRS, 2, SEQ), generator=g)
    lengths = torch.randint(3, SEQ + 1, (N_PAIRS, 2), generator=g)
    mask = torch.arange(SEQ) < lengths[..., None]
    category = torch.randint(0, 2, (N_PAIRS,), generator=g)
    return {"ids": ids.masked_fill(~mask, PAD), "mask": mask.long(), "category": category}


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(dist: Dist, seed: int):
    model = shard_model(build_model(seed), dist)
    adversary = build_adversary(seed + 1)
    optimizers = {
        "model": torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01),
        "adversary": torch.optim.AdamW(adversary.parameters(), lr=1e-3),
    }
    return model, adversary, optimizers


def full_grads(module: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in module.named_parameters():
        if p.grad is not None:
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            out[name] = g.detach().clone()
    return out


def train_step(model, adversary, optimizers, data, dist: Dist) -> dict:
    """One step on a global batch drawn from the global RNGs (identical on every rank): the BT loss on
    the gathered [pairs, 2] scores plus an adversary loss on this rank's rows (DDP-style mean)."""
    idx = torch.randperm(N_PAIRS)[:GLOBAL_PAIRS]
    # python and numpy RNGs feed the loss too, so a resume that forgot to restore them would diverge.
    coef = 0.5 + 0.1 * random.random() + 0.1 * float(np.random.rand())
    per = GLOBAL_PAIRS // dist.world_size
    local = idx[dist.rank * per : (dist.rank + 1) * per]
    ids = torch.cat([data["ids"][local, 0], data["ids"][local, 1]])  # chosen rows, then rejected rows
    mask = torch.cat([data["mask"][local, 0], data["mask"][local, 1]])
    scores = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    pairs = torch.stack([scores[:per], scores[per:]], dim=1)  # [pairs, 2]: gathering keeps pairs aligned
    gathered = gather_rows(pairs, dist)
    bt = -F.logsigmoid(gathered[:, 0] - gathered[:, 1]).mean()
    adv = F.cross_entropy(adversary(pairs[:, :1]), data["category"][local])
    loss = bt + coef * adv
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(adversary, dist)
    record = {
        "loss": all_reduce_mean(loss, dist),
        "bt": float(bt.detach()),
        "grads": full_grads(model),
        "adv_grads": full_grads(adversary),
    }
    for opt in optimizers.values():
        opt.step()
    return record


def run(dist: Dist, run_dir: Path) -> dict:
    """STEPS steps with a checkpoint after SAVE_AT, then a fresh model resumed from it for the rest."""
    data = dataset()
    seed_all(0)
    model, adversary, optimizers = setup(dist, seed=0)
    steps, saved_state = [], None
    for step in range(1, STEPS + 1):
        steps.append(train_step(model, adversary, optimizers, data, dist))
        if step == SAVE_AT:
            save_checkpoint(run_dir, step, model, optimizers, {"adversary": adversary}, {"step": step}, dist)
            saved_state = full_state_dict(model, dist)
    final = full_state_dict(model, dist)

    # Resume: different init and RNG, everything must come from the checkpoint.
    seed_all(99)
    model, adversary, optimizers = setup(dist, seed=7)
    extra = load_checkpoint(latest_checkpoint(run_dir), model, optimizers, {"adversary": adversary}, dist)
    resumed = [train_step(model, adversary, optimizers, data, dist) for _ in range(extra["step"], STEPS)]
    return {
        "steps": steps,
        "saved_state": saved_state,
        "final": final,
        "final_adversary": {k: v.clone() for k, v in adversary.state_dict().items()},
        "extra": extra,
        "resumed": resumed,
        "resumed_final": full_state_dict(model, dist),
    }


def collective_checks(dist: Dist) -> dict:
    """gather_rows with unequal row counts (rank r holds r + 1 rows) and its gradient; all_reduce_mean."""
    t = torch.full((dist.rank + 1, 3), float(dist.rank), requires_grad=True)
    gathered = gather_rows(t, dist)
    weights = torch.arange(gathered.numel(), dtype=torch.float32).view_as(gathered)
    (weights * gathered).sum().backward()
    mean = all_reduce_mean(float(dist.rank), dist)
    return {"gathered": gathered.detach(), "grad": t.grad.clone(), "mean": mean}


def main() -> None:
    torch.set_num_threads(1)
    run_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    dist = init_distributed("cpu")
    assert dist.enabled, "run me under torchrun with --nproc_per_node >= 2"
    checks = collective_checks(dist)
    grads = [torch.zeros(dist.rank + 1, 3) for _ in range(dist.world_size)]
    torch.distributed.all_gather_object(grads, checks["grad"])
    result = run(dist, run_dir)
    if dist.is_main:
        torch.save({"world_size": dist.world_size, "checks": {**checks, "grad": grads}, **result}, out)
    shutdown(dist)


if __name__ == "__main__":
    main()
