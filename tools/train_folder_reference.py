"""Train a reference Swin from scratch on an image folder with train/ and test/ (CIFAR-10).

    .venv/bin/python tools/train_folder_reference.py --data ../shared/data/cifar10 \\
        --out dimap_struct/models/weights/reference_cifar10.safetensors

The architecture is a timm SwinTransformer given by options (width, depths, heads, window,
patch, MLP ratio). The data set is given by `--data`: `train/<class>/*` is learnt from, with one
image in 25 held out to draw the training curve. `test/` is read once, after the last epoch, for
the recipe's figure. No choice is made on it.

The images are decoded once into a uint8 array (`dimap_struct.data.decoded`, cached in
~/.cache/dimap_struct) and augmented in batches: a random 32 x 32 crop of the image
reflect-padded by 4, and a horizontal flip. The optimiser is AdamW with a linear warm-up and then
a per-step cosine decay, with label smoothing and stochastic depth.

After every epoch the full state goes to `--state` (atomically), and `--resume` continues from
it. `--restart` continues from it with a new learning-rate cycle up to `--epochs` (a warm restart
of a run whose schedule ended while it was still under-fitted). `--restart --swa` holds the new
cycle's learning rate constant and writes the average of the weights at the end of each of its
epochs (SWA; LayerNorm has no running statistics to refresh). The weights (safetensors) and the recipe (.json beside them, with the SHA-256, the training
curve, the wall time and the peak RSS) are written at the end.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dimap_struct.data.decoded import decoded_folder  # noqa: E402
from dimap_struct.files import atomic_output  # noqa: E402
from dimap_struct.models.reference import sha256_file  # noqa: E402
from train_reference import lr_factor  # noqa: E402  (the same schedule as the digits trainer)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
HOLDOUT_EVERY = 25


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with train/<class>/ and test/<class>/")
    p.add_argument("--out", type=Path, required=True, help="weights .safetensors (recipe .json beside)")
    p.add_argument("--state", type=Path, help="per-epoch training state for --resume (default: OUT.state.pt)")
    p.add_argument("--resume", action="store_true", help="continue from --state")
    p.add_argument("--restart", action="store_true",
                   help="continue from --state with a new warm-up + cosine cycle (peak --lr) up to --epochs: "
                        "a warm restart of a run whose schedule has ended")
    p.add_argument("--swa", action="store_true",
                   help="with --restart: hold --lr constant after the warm-up and write the average of the "
                        "weights at each epoch's end (stochastic weight averaging, torch.optim.swa_utils)")
    p.add_argument("--embed-dim", type=int, default=32)
    p.add_argument("--depths", type=int, nargs="+", default=[2, 2, 6, 2])
    p.add_argument("--heads", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--patch", type=int, default=2)
    p.add_argument("--mlp-ratio", type=float, default=4.0)
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=35)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--warmup-epochs", type=float, default=2.0)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true",
                   help="train through torch.compile (about 1.2x faster on this CPU after a ~90 s compile)")
    p.add_argument("--steps-per-epoch", type=int, help="cut epochs short (a smoke test of the script)")
    args = p.parse_args(argv)
    if args.swa and not (args.restart or args.resume):
        p.error("--swa averages a restarted cycle: give it with --restart (a --resume of such a cycle "
                "continues its average)")
    return args


def build(args, classes: int, channels: int) -> torch.nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(**model_kwargs(args, classes, channels))


def model_kwargs(args, classes: int, channels: int) -> dict:
    return dict(img_size=32, patch_size=args.patch, in_chans=channels, num_classes=classes,
                window_size=args.window, embed_dim=args.embed_dim, depths=tuple(args.depths),
                num_heads=tuple(args.heads), mlp_ratio=args.mlp_ratio, drop_path_rate=args.drop_path)


def _plain(values: dict) -> dict:
    """Options as JSON-ready values (paths as text)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C) -> normalised float (B, C, H, W)."""
    return (x.permute(0, 3, 1, 2).float().div_(255) - mean) / std


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """A random crop of the reflect-padded images and a horizontal flip, per image, in one batch
    (float (B, C, H, W))."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    top = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    left = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (top[:, None] + torch.arange(h))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w))[:, None, None, :]
    crops = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(3), crops)


@torch.no_grad()
def top1(model, images: torch.Tensor, labels: torch.Tensor, mean, std, batch: int = 500) -> float:
    model.eval()
    right = 0
    for i in range(0, len(labels), batch):
        logits = model(normalise(images[i:i + batch], mean, std))
        right += int((logits.argmax(1) == labels[i:i + batch]).sum())
    return right / len(labels)


def main(argv=None) -> int:
    args = parse_args(argv)
    state_path = args.state or args.out.with_suffix(".state.pt")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    train = decoded_folder(args.data / "train", progress=True)
    channels = train.images.shape[3]
    index = np.arange(len(train.labels))
    held = index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    images, labels = torch.from_numpy(train.images[~held]), torch.from_numpy(train.labels[~held])
    held_images, held_labels = torch.from_numpy(train.images[held]), torch.from_numpy(train.labels[held])
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

    model = build(args, len(train.classes), channels)
    n_params = sum(p.numel() for p in model.parameters())
    decays = [p for n, p in model.named_parameters() if p.ndim > 1 and "relative_position" not in n]
    others = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "relative_position" not in n)]
    opt = torch.optim.AdamW([{"params": decays, "weight_decay": args.weight_decay},
                             {"params": others, "weight_decay": 0.0}], lr=args.lr)
    per_epoch = min(len(labels) // args.batch_size, args.steps_per_epoch or len(labels))
    floor = args.min_lr / args.lr

    # The compiled wrapper shares the module's parameters; state and weights are saved from `model`,
    # so their keys carry no `_orig_mod.` prefix, and evaluation runs eagerly (no recompile per batch size).
    forward = torch.compile(model) if args.compile else model
    gen = torch.Generator().manual_seed(args.seed)
    history, first_epoch, spent, cycle_start = [], 0, 0.0, 0
    earlier_runs: list[dict] = []
    saved = None
    if args.resume or args.restart:
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        history, first_epoch, spent = saved["history"], saved["epoch"], saved["elapsed_s"]
        earlier_runs = [_plain(r) for r in saved.get("runs", [saved["args"]])]
        cycle_start = first_epoch if args.restart else saved.get("cycle_start", 0)
    resumed_average = args.resume and saved.get("swa") is not None
    if args.swa and args.resume and not resumed_average:  # (--swa alone is refused by parse_args)
        print(f"train_folder_reference: error: --swa with --resume: {state_path} holds no average to continue; "
              "start one with --restart --swa", file=sys.stderr)
        return 2
    averaged = None
    if (args.restart and args.swa) or resumed_average:
        from torch.optim.swa_utils import AveragedModel

        averaged = AveragedModel(model)  # a --restart starts a new average, a --resume continues its own
        if resumed_average:
            averaged.load_state_dict(saved["swa"])
    if args.restart:
        # AdamW's moments are kept; only the learning-rate cycle starts again from its warm-up.
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] = args.lr
    steps = (args.epochs - cycle_start) * per_epoch
    warm = min(round(args.warmup_epochs * per_epoch), steps // 2)
    if averaged is not None:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / max(1, warm)))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, warm, steps, floor))
    if args.resume:
        sched.load_state_dict(saved["scheduler"])
        # LambdaLR's constructor set the lr of its step 0; the restored step's lr must drive the next update.
        for group, lr in zip(opt.param_groups, sched.get_last_lr()):
            group["lr"] = lr
    print(f"Swin {args.embed_dim}-{args.depths}-{args.heads}: {n_params:,} parameters, {len(labels)} train images "
          f"({int(held.sum())} held out), epochs {first_epoch + 1}..{args.epochs}", flush=True)

    for epoch in range(first_epoch, args.epochs):
        model.train()
        order = torch.randperm(len(labels), generator=gen)
        total = count = 0.0
        bar = tqdm(range(per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, file=sys.stdout,
                   mininterval=5)
        for step in bar:
            pick = order[step * args.batch_size:(step + 1) * args.batch_size]
            x = augment(normalise(images[pick], mean, std), gen)
            loss = F.cross_entropy(forward(x), labels[pick], label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            total, count = total + loss.item() * len(pick), count + len(pick)
            bar.set_postfix(loss=f"{total / count:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        held_top1 = top1(model, held_images, held_labels, mean, std)
        record = {"epoch": epoch + 1, "train_loss": round(total / count, 4), "holdout_top1": round(held_top1, 4)}
        if averaged is not None:
            averaged.update_parameters(model)
            record["swa_holdout_top1"] = round(top1(averaged.module, held_images, held_labels, mean, std), 4)
        elapsed = spent + time.perf_counter() - start
        history.append({**record, "elapsed_s": round(elapsed, 1)})
        print(f"epoch {epoch + 1:3d}/{args.epochs}  loss {total / count:.4f}  held-out top-1 "
              f"{100 * held_top1:.2f}%" + (f"  average {100 * record['swa_holdout_top1']:.2f}%" if averaged is not None else "")
              + f"  {elapsed:6.0f} s", flush=True)
        with atomic_output(state_path) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
                        "epoch": epoch + 1, "elapsed_s": elapsed, "args": _plain(vars(args)),
                        "cycle_start": cycle_start,
                        "swa": averaged.state_dict() if averaged is not None else None,
                        "runs": earlier_runs + [_plain(vars(args))]}, tmp)

    wall = spent + time.perf_counter() - start
    peak_lr = sched.base_lrs[0]  # on --resume, the cycle's own peak, whatever --lr says
    cycle_kind = ("a warm-up, then a constant lr with the epoch-end weights averaged" if averaged is not None
                  else "a new warm-up + cosine cycle")
    if averaged is not None:
        model = averaged.module
    model.eval()
    test = decoded_folder(args.data / "test", progress=True)
    test_top1 = top1(model, torch.from_numpy(test.images), torch.from_numpy(test.labels), mean, std)
    from safetensors.torch import save_file

    with atomic_output(args.out) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={"format": "pt"})
    import timm

    recipe = {
        "model": "timm.models.swin_transformer.SwinTransformer",
        "kwargs": model_kwargs(args, len(train.classes), channels),
        "data_config": {"input_size": [channels, 32, 32], "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD),
                        "interpolation": "bicubic", "crop_pct": 1.0},
        "classes": train.classes,
        "parameters": n_params,
        "data": {"source": str(args.data), "train": f"train/ except every {HOLDOUT_EVERY}th image (held out)",
                 "train_size": len(labels), "holdout_size": int(held.sum()),
                 "test": "test/, read once after training, for this figure only", "test_size": len(test.labels)},
        "hyper": {**{k: v for k, v in _plain(vars(args)).items() if k not in ("data", "out", "state", "resume", "restart")},
                  "swa": averaged is not None, "lr": peak_lr},
        "augment": "reflect-pad 4 + random 32x32 crop, horizontal flip",
        "schedule": "AdamW, linear warm-up then cosine per step, grad clip 5" + (
            f"; the last cycle (from epoch {cycle_start}) at a constant lr {peak_lr:g}, and the weights written "
            f"are the average of its {int(averaged.n_averaged)} epoch-end weights (SWA)" if averaged is not None else ""),
        "test_top1": round(test_top1, 4),
        "history": history,
        "wall_time_s": round(wall, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version()},
        "command": "tools/train_folder_reference.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "earlier_runs": earlier_runs,
        "note": ("resumed from a per-epoch state: `earlier_runs` are the options each earlier invocation ran "
                 "with; the learning-rate schedule follows the last invocation's --epochs from the step "
                 "reached" + (f"; a warm restart ({cycle_kind}, peak lr {peak_lr:g}) began after "
                              f"epoch {cycle_start}" if cycle_start else "")) if earlier_runs else None,
        "cycle_start": cycle_start,
        "weights": args.out.name,
        "sha256": sha256_file(args.out),
    }
    with atomic_output(args.out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(recipe, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB); test top-1 {100 * test_top1:.2f}%, "
          f"{wall / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
