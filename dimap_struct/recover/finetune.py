"""Recover accuracy after pruning: knowledge distillation from the unpruned model plus labels.

Single process, or one process per device under `torchrun --nproc_per_node N`
(DistributedDataParallel: gloo on CPU, nccl on GPU). Each process builds the same pruned model
(pruning is deterministic), sees its own shard of every epoch (DistributedSampler), and DDP
averages the gradients, so all ranks hold identical weights after every step.

Loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(labels).
AdamW (or another of timm's optimizers, --opt) with a linear warm-up then timm's cosine (or tanh or
linear, --sched) decay, stepped per batch; optionally clipped gradients, label smoothing of the CE term, gradient accumulation over
parts of the batch, mixup / cutmix of the batch (timm's Mixup; the teacher sees the mixed images)
and a moving average of the weights (timm's ModelEmaV3), which is then the result. Both forwards run under the same autocast (--amp); fp16 scales the loss
(`torch.amp.GradScaler`). The loss stays on the device between read-backs (--log-every).

A resume state (`save_state` / `read_state`) holds everything the next step depends on: the weights,
the optimizer, the loss scaler, the moving average, the global RNG states, and the place in the data
(epoch and batch). The batches' order depends on the seed and the epoch only, and each image's
augmentation on its own seed (`image_seed`: the run's seed, the epoch and the image), so a run
resumed from any step ends on the weights of one that never stopped, and 4 processes of B images
take the step of 1 process of 4B.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import math
import os
import random
from collections import deque
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np
import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.data.loader import PrefetchLoader
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info
from torch.utils.data.distributed import DistributedSampler

from .. import signals
from ..data import MNISTDataset, build_dataset
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
    sched: str
    weight_decay: float
    alpha: float
    temperature: float
    opt: str
    clip_grad: float | None
    smoothing: float
    mixup: float
    cutmix: float
    ema_decay: float | None
    accum_steps: int
    amp: str
    workers: int | None
    compile: bool
    log_every: int
    save_every: int | None

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

    @classmethod
    def local(cls) -> "DistContext":
        """One process, on the first CUDA device when there is one, else on the CPU."""
        return cls(device=torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))


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
        return DistContext.local()
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


def kd_loss(student_logits, teacher_logits, labels, alpha: float, temperature: float,
            smoothing: float = 0.0) -> torch.Tensor:
    """`labels`: class indices, or (after Mixup) class probabilities, already smoothed."""
    t = temperature
    if labels.dim() == 2:
        smoothing = 0.0
    soft = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels, label_smoothing=smoothing)


def lr_schedule(optimizer, total: int, cfg: TrainingConfig):
    """timm's scheduler for `cfg.sched` with one optimiser step as its unit of time: a linear
    warm-up over `warmup_fraction` of the `total` steps (from lr / warm-up steps), then the decay
    from `lr` to `min_lr` at step `total`. `step(t)` sets step t's rate: it is a function of t
    alone, so a resumed run needs only the step."""
    warm = max(1, int(cfg.warmup_fraction * total))
    scheduler, _ = create_scheduler_v2(optimizer, sched="poly" if cfg.sched == "linear" else cfg.sched,
                                       num_epochs=max(1, total - warm), warmup_epochs=warm, warmup_lr=cfg.lr / warm,
                                       warmup_prefix=True, min_lr=cfg.min_lr, decay_rate=1.0, step_on_epochs=True)
    return scheduler


def default_workers(dataset, world_size: int) -> int:
    """DataLoader workers per training process when --workers is not given: 0 for MNIST (held in
    memory, batched in one call: a worker would only add copying), else one CPU per process is
    left to the training loop, at most 8 workers: min(8, CPUs // world_size - 1), at least 0."""
    if isinstance(dataset, MNISTDataset):
        return 0
    return max(0, min(8, (os.cpu_count() or 1) // max(1, world_size) - 1))


def image_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's augmentation in one epoch: a function of the run's seed, the epoch
    and the image only, so any world size, worker count or resumed run draws the same pixels."""
    key = f"{seed}/{epoch}/{index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


class EpochBatches(Sampler):
    """The batches of this rank's shard for one epoch, from batch `start` on; each batch is
    `((seed, epoch), indices)`, what `image_seed` needs. The shard's order depends on the sampler's seed and the epoch only
    (`DistributedSampler`), so skipping `start` batches resumes the epoch where it stopped. Rank
    r of W takes every W-th image of the epoch's permutation, so step k of all ranks together
    reads images k*W*B .. (k+1)*W*B - 1 of it: the same images for any W of one W x B."""

    def __init__(self, shard: DistributedSampler, batch_size: int, seed: int, rank: int):
        self.shard, self.batch_size, self.seed, self.rank = shard, batch_size, seed, rank
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.shard.set_epoch(epoch)
        self.epoch, self.start = epoch, start

    @property
    def per_epoch(self) -> int:
        return len(self.shard) // self.batch_size

    def __len__(self) -> int:
        return self.per_epoch - self.start

    def __iter__(self):
        order = list(self.shard)
        for position in range(self.start, self.per_epoch):
            yield (self.seed, self.epoch), order[position * self.batch_size:(position + 1) * self.batch_size]


class SeededBatches(Dataset):
    """`dataset` fetched a batch at a time, each image's augmentation drawn from its own seed
    (`image_seed`: python's, numpy's and torch's CPU generators, or an MNIST dataset's draw). In
    the training process itself those generators are put back afterwards: the training keeps its
    own draws."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, key):
        (seed, epoch), indices = key
        seeds = [image_seed(seed, epoch, i) for i in indices]
        with _kept_rng(get_worker_info() is None):
            if isinstance(self.dataset, MNISTDataset):
                index = torch.as_tensor(indices, dtype=torch.long)
                return self.dataset.seeded_batch(index, seeds), self.dataset.labels[index]
            items = []
            for i, one in zip(indices, seeds):
                random.seed(one)
                np.random.seed(one % 2 ** 32)
                torch.default_generator.manual_seed(one)
                items.append(self.dataset[i])
            return default_collate(items)


@contextmanager
def _kept_rng(keep: bool):
    if not keep:
        yield
        return
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


def _as_is(batch):
    return batch


def train_loader(data, data_config: dict, cfg: TrainingConfig, ctx: DistContext,
                 seed: int = 0) -> tuple[Iterable, EpochBatches, int]:
    """The training batches of this rank, the sampler that orders them, and the number of
    worker processes: its shard of every epoch (the order shared by all ranks through `seed`),
    `cfg.workers` workers (default `default_workers`), pinned memory on CUDA. Each image's
    augmentation comes from its own seed (`image_seed`). Image files leave the workers as uint8
    and are normalised on the training device by timm's `PrefetchLoader` (a quarter of the bytes
    through shared memory: with float32, two workers took 8.2 CPU-s and 335k page faults in a run timing 1,280
    images at 224 px, with uint8 4.9 CPU-s and 71k)."""
    dataset = build_dataset(data, "train", data_config, train_augment=True, seed=seed + 1000 * ctx.rank,
                            normalized=False)
    shard = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                               seed=seed, drop_last=True)
    batches = EpochBatches(shard, cfg.batch_size, seed, ctx.rank)
    workers = cfg.workers if cfg.workers is not None else default_workers(dataset, ctx.world_size)
    # its own generator: a new iterator must not draw from the training's global RNG
    loader = DataLoader(SeededBatches(dataset), batch_sampler=batches, collate_fn=_as_is, num_workers=workers,
                        pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(seed))
    if isinstance(dataset, MNISTDataset):  # normalised already, and held in memory
        return loader, batches, workers
    return (PrefetchLoader(loader, mean=data_config["mean"], std=data_config["std"],
                           channels=data_config["input_size"][0], device=ctx.device), batches, workers)


def decay_groups(student: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: 1-D parameters and the family's position terms
    (`FamilyAdapter.no_weight_decay`) undecayed, the rest decayed."""
    adapter = adapter_for_model(student)
    skip = adapter.no_weight_decay() if adapter is not None else set()
    return param_groups_weight_decay(student, weight_decay, no_weight_decay_list=skip)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast type of `--amp` on `device`, None for full precision. auto: bf16 on a CUDA
    device that supports it, else none (bf16 autocast on a CPU is not measured faster, so it is
    not chosen for you). UserError for fp16 without CUDA."""
    if amp == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA device (its loss scaling is for GPUs); on a CPU use --amp bf16 "
                        "or none")
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)


def finetune(student: nn.Module, teacher: nn.Module, data, data_config: dict, cfg: TrainingConfig,
             ctx: DistContext | None = None, *, seed: int = 0, state: dict | None = None,
             on_save: Callable[[dict], None] | None = None,
             on_step: Callable[[int, int, float], None] | None = None,
             keep_masks: list[tuple[nn.Parameter, torch.Tensor]] | None = None) -> dict:
    """Fine-tune `student` in place with KD from `teacher`; return a summary. `cfg` holds the
    training options; `seed` fixes the initial RNG, the data order and the augmentation. Both
    models train on `ctx.device` and are back on the CPU when it returns or raises.

    `state`: a state `on_save` was given (`read_state`): training continues at its step, and
    ends with the weights an uninterrupted run ends with (with another world size of the same
    images per step, within float rounding, when nothing draws per process's batch: drop-path,
    dropout and --mixup / --cutmix do).
    `on_save(state)`: called on every rank with a resume state (student, optimizer, scaler, EMA,
    RNG states, epoch, position in the epoch, step; live tensors: serialise them at once) after
    each full epoch, every `cfg.save_every` steps, and when a KeyboardInterrupt (a signal,
    `signals.Terminated`) stops training between two steps (one arriving during a step is held
    until the step ends); the interruption then goes on. No state is saved after a non-finite
    loss.
    `on_step(step, total, loss)`: progress after each step; `loss` is the last one read back
    (every `cfg.log_every` steps, at step 1 and at the end).
    `keep_masks`: (parameter, 0/1 mask) pairs re-applied after every step, so weights zeroed by
    weight-granularity pruning stay zero.
    With `cfg.ema_decay` the student ends with the moving average of its weights.
    UserError when the loss is not finite (naming the step), or `state` does not fit the data.
    """
    ctx = ctx or DistContext()
    dtype = autocast_dtype(cfg.amp, ctx.device)
    torch.manual_seed(seed)
    loader, batches, workers = train_loader(data, data_config, cfg, ctx, seed)
    steps_per_epoch = batches.per_epoch
    if steps_per_epoch == 0:
        raise UserError(f"the training split has fewer than {cfg.batch_size * ctx.world_size} images for one step")
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    try:
        return _train(student, teacher, loader, batches, cfg, ctx, dtype, total, state, on_save, on_step,
                      keep_masks, workers)
    finally:
        student.to("cpu")
        teacher.to("cpu")
        student.eval()


def _train(student, teacher, loader, batches, cfg, ctx, dtype, total, state, on_save, on_step, keep_masks,
           workers) -> dict:
    steps_per_epoch = batches.per_epoch
    teacher.to(ctx.device).eval()
    student.to(ctx.device).train()
    masks = [(param, mask.to(param.device)) for param, mask in keep_masks or []]
    model = nn.parallel.DistributedDataParallel(student) if ctx.distributed else student
    forward = torch.compile(model) if cfg.compile else model
    optimizer = create_optimizer_v2(decay_groups(student, cfg.weight_decay), opt=cfg.opt, lr=cfg.lr,
                                    weight_decay=cfg.weight_decay)
    schedule = lr_schedule(optimizer, total, cfg)
    mixing = None
    if cfg.mixup or cfg.cutmix:  # it smooths the mixed labels itself; its draws come from numpy's saved RNG
        mixing = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                       num_classes=adapter_for_model(student).num_classes)
    ema = ModelEmaV3(student, decay=cfg.ema_decay) if cfg.ema_decay is not None else None
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=dtype == torch.float16)
    step, epoch, position = 0, 0, 0
    if state is not None:
        if state["position"] >= steps_per_epoch:
            raise UserError(f"the resume state stopped at batch {state['position']} of an epoch that has "
                            f"{steps_per_epoch}; was it saved with other data?")
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler.is_enabled() and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        if ema is not None:
            if not state["ema"]:
                raise UserError("the resume state holds no moving average of the weights, and --ema-decay asks "
                                "for one")
            ema.module.load_state_dict(state["ema"])
        step, epoch, position = state["step"], state["epoch"], state["position"]
        set_rng_state(state["rng"], ctx.device)
    losses = _Losses(step)
    saved, busy = step, False

    def save() -> None:
        nonlocal saved
        if on_save is not None:
            on_save({"student": student.state_dict(), "optimizer": optimizer.state_dict(),
                     "scaler": scaler.state_dict(), "ema": {} if ema is None else ema.module.state_dict(),
                     "rng": rng_state(ctx.device), "epoch": epoch,
                     "position": position, "step": step})
        saved = step

    try:
        while step < total:
            batches.set_epoch(epoch, position)
            for images, labels in itertools.islice(loader, total - step):
                with signals.deferred():  # a signal waits for the step to end: the state stays whole
                    busy = True
                    images = images.to(ctx.device, non_blocking=True)
                    labels = labels.to(ctx.device, non_blocking=True)
                    schedule.step(step)
                    if mixing is not None:
                        images, labels = mixing(images, labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss = _accumulate(forward, model, teacher, images, labels, cfg, ctx, dtype, scaler)
                    losses.add(loss)
                    ends_epoch = position + 1 == steps_per_epoch
                    saving = on_save is not None and (ends_epoch or (cfg.save_every is not None
                                                                     and (step + 1) % cfg.save_every == 0))
                    if losses.last is None or (step + 1) % cfg.log_every == 0 or step + 1 == total or saving:
                        losses.read_back()  # before the step: on a non-finite loss the weights are the last read's
                    if cfg.clip_grad is not None:
                        scaler.unscale_(optimizer)
                        dispatch_clip_grad(student.parameters(), cfg.clip_grad, mode="norm")
                    scaler.step(optimizer)
                    scaler.update()
                    if masks:
                        with torch.no_grad():
                            for param, mask in masks:
                                param.mul_(mask)
                    step += 1
                    if ema is not None:
                        ema.update(student, step=step)
                    epoch, position = (epoch + 1, 0) if ends_epoch else (epoch, position + 1)
                    busy = False
                    if saving:
                        save()
                if on_step:
                    on_step(step, total, losses.last)
    except KeyboardInterrupt:
        if not busy and step > saved and on_save is not None and losses.finite():
            save()
        raise
    if ema is not None:  # the average is the result
        student.load_state_dict(ema.module.state_dict())
    return {"steps": step, "steps_per_epoch": steps_per_epoch, "world_size": ctx.world_size,
            "images_seen": step * cfg.batch_size * ctx.world_size, "final_loss": losses.last,
            "mean_loss_last_10": losses.mean_of_last(), "workers": workers,
            "amp": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "none"), "config": cfg.as_dict()}


def _accumulate(forward, model, teacher, images, labels, cfg, ctx, dtype, scaler) -> torch.Tensor:
    """Forward and backward over the batch in `cfg.accum_steps` parts (DDP synchronises the
    gradients on the last one only); the batch's loss, still on the device."""
    parts = list(zip(images.chunk(cfg.accum_steps), labels.chunk(cfg.accum_steps)))
    total = torch.zeros((), device=images.device)
    for i, (x, y) in enumerate(parts):
        last = i == len(parts) - 1
        with model.no_sync() if ctx.distributed and not last else nullcontext():
            with _autocast(ctx.device, dtype):
                with torch.no_grad():
                    target = teacher(x)
                logits = forward(x)
            loss = kd_loss(logits.float(), target.float(), y, cfg.alpha, cfg.temperature, cfg.smoothing) / len(parts)
            scaler.scale(loss).backward()
        total = total + loss.detach()
    return total


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


class _Losses:
    """The losses of the steps since the last read-back, kept on the device: reading one back
    waits for the device, so it happens only at `read_back`."""

    def __init__(self, step: int):
        self.pending: list[torch.Tensor] = []
        self.first = step + 1  # the step of pending[0]
        self.last: float | None = None
        self.recent: deque[float] = deque(maxlen=10)

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(loss.detach())

    def read_back(self) -> None:
        """Read the pending losses; UserError naming the first non-finite one's step."""
        if not self.pending:
            return
        values = torch.stack(self.pending).float().cpu().tolist()
        first, last = self.first, self.first + len(values) - 1
        self.pending, self.first = [], last + 1
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                found = "" if first == last else f", found when steps {first}-{last} were read back"
                raise UserError(f"training diverged at step {first + offset} (loss {value}{found}); the last saved "
                                "state is kept: lower --lr and try again")
        self.recent.extend(values)
        self.last = values[-1]

    def finite(self) -> bool:
        try:
            self.read_back()
        except UserError:
            return False
        return True

    def mean_of_last(self) -> float:
        self.read_back()
        return sum(self.recent) / max(1, len(self.recent))


_RNG = {"torch": torch.Tensor, "cuda": [torch.Tensor],
        "numpy": {"keys": torch.Tensor, "pos": int, "has_gauss": int, "gauss": float},
        "python": {"version": int, "state": torch.Tensor, "gauss": [float]}}

STATE_SHAPE = {"student": dict, "optimizer": {"state": dict, "param_groups": [dict]}, "scaler": dict, "ema": dict,
               "rng": _RNG, "epoch": int, "position": int, "step": int, "meta": dict}
"""What `save_state` writes (and `read_state` accepts): `epoch` counts the epochs done,
`position` the batches done in the next one."""


def rng_state(device: torch.device) -> dict:
    """The global RNG states (torch's CPU and `device`'s CUDA generator, numpy's, python's) as
    tensors, numbers and lists: what torch's weights-only loader reads back."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, words, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else [],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                      "gauss": float(gauss)},
            "python": {"version": int(version), "state": torch.tensor(words, dtype=torch.int64),
                       "gauss": [] if gauss_next is None else [float(gauss_next)]}}


def set_rng_state(rng: dict, device: torch.device) -> None:
    """Put back what `rng_state` returned (checked by `read_state`)."""
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng["cuda"]:
        torch.cuda.set_rng_state(rng["cuda"][0], device)
    n = rng["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = rng["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"][0] if py["gauss"] else None))


def _check_rng(rng: dict, where: str) -> None:
    words = 2 ** 32

    def fits(t: torch.Tensor, size: int, dtype: torch.dtype, high: int | None = None) -> bool:
        shaped = t.dtype == dtype and tuple(t.shape) == (size,)
        return shaped and (high is None or bool(((t >= 0) & (t < high)).all()))

    checks = {"rng.torch": fits(rng["torch"], torch.get_rng_state().numel(), torch.uint8),
              "rng.numpy.keys": fits(rng["numpy"]["keys"], 624, torch.int64, words)
              and 0 <= rng["numpy"]["pos"] <= 624,
              "rng.python.state": fits(rng["python"]["state"], 625, torch.int64, words)
              and 0 <= int(rng["python"]["state"][-1]) <= 624 and len(rng["python"]["gauss"]) <= 1}
    for name, ok in checks.items():
        if not ok:
            check_shape(None, int, where, name)


def read_state(path: Path) -> dict:
    """The resume state `save_state` wrote, read without running any pickled code (torch's
    weights-only unpickler), or UserError naming `path`: not a regular file, empty, truncated,
    of another form, or holding non-finite values."""
    state = torch_load(path, "resume state")
    where = f"resume state {path}"
    check_shape(state, STATE_SHAPE, where)
    for name in ("epoch", "position", "step"):
        if state[name] < 0:
            check_shape(None, int, where, name)
    _check_rng(state["rng"], where)
    check_tensors(state["student"], where)
    check_tensors(state["ema"], where)
    for values in state["optimizer"]["state"].values():
        check_tensors(values if isinstance(values, dict) else {}, where)
    return state


def save_state(path: Path, state: dict, meta: dict) -> None:
    """Write a resume checkpoint atomically (temporary file, then rename): after a kill during
    the write the previous one is still there, whole."""
    buffer = io.BytesIO()  # serialised in memory, written by Python: a full disk is an OSError
    torch.save({**state, "meta": meta}, buffer)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
