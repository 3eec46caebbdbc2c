"""Recover accuracy after pruning: knowledge distillation from the unpruned model plus labels.

Single process, or one process per device under `torchrun --nproc_per_node N`
(DistributedDataParallel: gloo on CPU, nccl on GPU). Each process builds the same pruned model
(pruning is deterministic), sees its own shard of every epoch (DistributedSampler), and DDP
averages the gradients, so all ranks hold identical weights after every step.

Loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(labels).
AdamW with a linear warm-up then a cosine decay, stepped per batch.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
import torch.distributed as dist
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ..data import build_dataset
from ..errors import UserError
from ..files import atomic_output
from ..models.adapters import adapter_for_model
from ..untrusted import check_shape, check_tensors, torch_load


class TrainingConfig(Protocol):
    """The training settings `finetune` reads: `options.TrainingOptions` has them (recovery sits
    below the options in the layers, so it names what it needs instead of importing them)."""

    epochs: float
    max_steps: int | None
    batch_size: int
    lr: float
    min_lr: float
    warmup_fraction: float
    weight_decay: float
    alpha: float
    temperature: float

    def as_dict(self) -> dict: ...


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@contextmanager
def distributed() -> Iterator[DistContext]:
    """The process group torchrun describes in the environment (or a single process): joined on
    entry, left on a normal exit once every rank has arrived. After an error it is not left: the
    process is ending, and a barrier would wait for ranks that may never come."""
    ctx = _join()
    yield ctx
    if ctx.distributed:
        dist.barrier()
        dist.destroy_process_group()


def _join() -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return DistContext(rank, world, device)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, shape and bytes), for comparing ranks."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def kd_loss(student_logits, teacher_logits, labels, alpha: float, temperature: float) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def lr_at(step: int, total: int, cfg: TrainingConfig) -> float:
    warm = max(1, int(cfg.warmup_fraction * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def train_loader(data, data_config: dict, cfg: TrainingConfig, ctx: DistContext,
                 seed: int = 0) -> tuple[DataLoader, DistributedSampler]:
    # augmentation draws differ per rank (different images), the shard order is shared
    dataset = build_dataset(data, "train", data_config, train_augment=True, seed=seed + 1000 * ctx.rank)
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=seed, drop_last=True)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True), sampler


def decay_groups(student: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: 1-D parameters and the family's position terms
    (`FamilyAdapter.no_weight_decay`) undecayed, the rest decayed."""
    adapter = adapter_for_model(student)
    skip = adapter.no_weight_decay() if adapter is not None else set()
    return param_groups_weight_decay(student, weight_decay, no_weight_decay_list=skip)


def finetune(student: nn.Module, teacher: nn.Module, data, data_config: dict, cfg: TrainingConfig,
             ctx: DistContext | None = None, *, seed: int = 0, state: dict | None = None,
             on_epoch_end: Callable[[int, dict], None] | None = None,
             on_step: Callable[[int, int, float], None] | None = None,
             keep_masks: list[tuple[nn.Parameter, torch.Tensor]] | None = None) -> dict:
    """Fine-tune `student` in place with KD from `teacher`; return a summary. `cfg` holds the
    training options; `seed` fixes the initial RNG, the data order and the augmentation.

    `state`: what `on_epoch_end` was given at the end of an earlier epoch (resume).
    `on_epoch_end(epoch, state)`: called on every rank after each full epoch with a state dict
    (student, optimizer, epoch, step) to save for `--resume`.
    `on_step(step, total, loss)`: progress.
    `keep_masks`: (parameter, 0/1 mask) pairs re-applied after every step, so weights zeroed by
    weight-granularity pruning stay zero.
    """
    ctx = ctx or DistContext()
    torch.manual_seed(seed)
    loader, sampler = train_loader(data, data_config, cfg, ctx, seed)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise UserError(f"the training split has fewer than {cfg.batch_size * ctx.world_size} images for one step")
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    teacher.eval()
    student.train()
    model = nn.parallel.DistributedDataParallel(student) if ctx.distributed else student
    optimizer = create_optimizer_v2(decay_groups(student, cfg.weight_decay), opt="adamw", lr=cfg.lr,
                                    weight_decay=cfg.weight_decay)
    step, epoch = 0, 0
    if state is not None:
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch = state["step"], state["epoch"]
    losses = []
    while step < total:  # resumed runs start at an epoch boundary
        sampler.set_epoch(epoch)
        start = step
        for images, labels in itertools.islice(loader, total - step):
            images, labels = images.to(ctx.device), labels.to(ctx.device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, cfg)
            with torch.no_grad():
                target = teacher(images)
            loss = kd_loss(model(images), target, labels, cfg.alpha, cfg.temperature)
            if not torch.isfinite(loss):  # before the step: the weights stay the last good ones
                raise UserError(f"training diverged at step {step + 1} (loss {loss.item()}); the last saved state "
                                "is kept: lower --lr and try again")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if keep_masks:
                with torch.no_grad():
                    for param, mask in keep_masks:
                        param.mul_(mask)
            losses.append(loss.item())
            step += 1
            if on_step:
                on_step(step, total, losses[-1])
        if step - start == steps_per_epoch:
            epoch += 1
            if on_epoch_end:
                on_epoch_end(epoch, {"student": student.state_dict(), "optimizer": optimizer.state_dict(),
                                     "epoch": epoch, "step": step})
    student.eval()
    return {"steps": step, "steps_per_epoch": steps_per_epoch, "world_size": ctx.world_size,
            "images_seen": step * cfg.batch_size * ctx.world_size, "final_loss": losses[-1] if losses else None,
            "mean_loss_last_10": sum(losses[-10:]) / max(1, len(losses[-10:])), "config": cfg.as_dict()}


STATE_SHAPE = {"student": dict, "optimizer": {"state": dict, "param_groups": [dict]}, "epoch": int, "step": int,
               "meta": dict}
"""What `save_state` writes (and `read_state` accepts)."""


def read_state(path: Path) -> dict:
    """The resume state `save_state` wrote, read without running any pickled code (torch's
    weights-only unpickler), or UserError naming `path`: not a regular file, empty, truncated,
    of another form, or holding non-finite values."""
    state = torch_load(path, "resume state")
    where = f"resume state {path}"
    check_shape(state, STATE_SHAPE, where)
    if state["epoch"] < 0 or state["step"] < 0:
        check_shape(None, int, where, "step")
    check_tensors(state["student"], where)
    for values in state["optimizer"]["state"].values():
        check_tensors(values if isinstance(values, dict) else {}, where)
    return state


def save_state(path: Path, state: dict, meta: dict) -> None:
    """Write a resume checkpoint atomically (temporary file, then rename)."""
    buffer = io.BytesIO()  # serialised in memory, written by Python: a full disk is an OSError
    torch.save({**state, "meta": meta}, buffer)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
