"""Train the reference Swin (dimap_struct.models.reference) from scratch on the MNIST "train" split.

    .venv/bin/python tools/train_reference.py                 # writes dimap_struct/weights/
    .venv/bin/python tools/train_reference.py --epochs 1 --out /tmp/ref.safetensors  # timing

The committed weights came from the defaults with ``--threads 1`` (the machine was shared);
about 40 s per epoch on one core, 20 epochs.

AdamW, per-step cosine schedule after a linear warm-up, label smoothing, random affine on the
digits; top-1 on the "eval" split after every epoch. Writes the weights (safetensors) and,
beside them with a .json suffix, the recipe with the file's SHA-256; both atomically.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dimap_struct.data import build_loader  # noqa: E402
from dimap_struct.deploy.evaluate import accuracy, torch_classifier  # noqa: E402
from dimap_struct.files import atomic_output  # noqa: E402
from dimap_struct.models.reference import (REFERENCE_DATA_CONFIG, REFERENCE_KWARGS,  # noqa: E402
                                    WEIGHTS_PATH, build_reference, sha256_file)

HYPER = dict(batch_size=128, lr=1e-3, min_lr=1e-5, warmup_epochs=2, weight_decay=0.05,
             label_smoothing=0.1, betas=(0.9, 0.999), grad_clip=5.0,
             augment="random affine: rotation +-10 deg, translate 0.1, scale 0.9-1.1")


def lr_factor(step: int, warm: int, steps: int, floor: float) -> float:
    """Learning-rate multiplier at `step`: linear warm-up over `warm` steps, then a cosine decay
    to `floor` at `steps` (both reference trainers use it)."""
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--data", type=Path, default=os.environ.get("DIMAP_DATA"),
                   help="MNIST directory (default: $DIMAP_DATA)")
    p.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="weights .safetensors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=HYPER["lr"])
    p.add_argument("--drop-path", type=float, default=REFERENCE_KWARGS["drop_path_rate"],
                   help="stochastic depth rate")
    p.add_argument("--batch-size", type=int, default=HYPER["batch_size"])
    p.add_argument("--warmup-epochs", type=float, default=HYPER["warmup_epochs"])
    p.add_argument("--threads", type=int, default=2, help="torch threads (use 1 on a busy machine)")
    args = p.parse_args(argv)
    if args.data is None:
        p.error("pass --data PATH (an MNIST directory) or set DIMAP_DATA")
    args.data = Path(args.data)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    hyper = {**HYPER, "lr": args.lr, "batch_size": args.batch_size,
             "warmup_epochs": args.warmup_epochs}
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    model = build_reference(pretrained=False, seed=args.seed, drop_path_rate=args.drop_path).train()
    n_params = sum(p.numel() for p in model.parameters())
    train = build_loader(args.data, "train", REFERENCE_DATA_CONFIG, hyper["batch_size"],
                         shuffle=True, seed=args.seed, train_augment=True)

    # No weight decay on norms, biases and the relative-position tables.
    def decays(name, param):
        return param.ndim > 1 and "relative_position" not in name

    decay = [p for n, p in model.named_parameters() if decays(n, p)]
    no_decay = [p for n, p in model.named_parameters() if not decays(n, p)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": hyper["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=hyper["lr"], betas=hyper["betas"])
    steps = args.epochs * len(train)
    warm = min(round(hyper["warmup_epochs"] * len(train)), steps // 2)
    floor = hyper["min_lr"] / hyper["lr"]

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, warm, steps, floor))
    print(f"reference Swin: {n_params:,} parameters, {len(train.dataset)} train digits, {args.epochs} epochs",
          flush=True)

    history = []
    for epoch in range(args.epochs):
        model.train()
        total = count = 0.0
        bar = tqdm(train, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, file=sys.stdout)
        for images, labels in bar:
            loss = F.cross_entropy(model(images), labels, label_smoothing=hyper["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), hyper["grad_clip"])
            opt.step()
            sched.step()
            total, count = total + loss.item() * len(labels), count + len(labels)
            bar.set_postfix(loss=f"{total / count:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        scored = accuracy(torch_classifier(model, REFERENCE_DATA_CONFIG, "reference"), args.data, batch_size=500)
        top1, eval_size = scored["top1"] / 100, scored["images"]
        elapsed = time.perf_counter() - start
        history.append({"epoch": epoch + 1, "train_loss": round(total / count, 4),
                        "eval_top1": round(top1, 4), "elapsed_s": round(elapsed, 1)})
        print(f"epoch {epoch + 1:3d}/{args.epochs}  loss {total / count:.4f}  "
              f"eval top-1 {100 * top1:.2f}%  {elapsed:6.0f} s", flush=True)

    wall = time.perf_counter() - start
    model.eval()
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    import timm

    recipe = {
        "model": "timm.models.swin_transformer.SwinTransformer",
        "kwargs": {**REFERENCE_KWARGS, "drop_path_rate": args.drop_path},
        "data_config": REFERENCE_DATA_CONFIG,
        "parameters": n_params,
        "data": {"source": "MNIST official test set (t10k), split by index % 5",
                 "train": "index % 5 != 4", "eval": "index % 5 == 4",
                 "train_size": len(train.dataset), "eval_size": eval_size},
        "hyper": {**hyper, "epochs": args.epochs, "optimizer": "AdamW",
                  "schedule": "linear warm-up then cosine, per step"},
        "seed": args.seed,
        "epochs": args.epochs,
        "wall_time_s": round(wall, 1),
        "eval_top1": history[-1]["eval_top1"] if history else None,
        "history": history,
        "versions": {"torch": torch.__version__, "timm": timm.__version__,
                     "python": platform.python_version()},
        "threads": torch.get_num_threads(),
        "command": "tools/train_reference.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "weights": args.out.name,
        "sha256": sha256_file(args.out),
    }
    recipe_path = args.out.with_suffix(".json")
    with atomic_output(recipe_path) as tmp:
        tmp.write_text(json.dumps(recipe, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, sha256 {recipe['sha256']}) "
          f"and {recipe_path.name}; eval top-1 {100 * recipe['eval_top1']:.2f}%, "
          f"{wall / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
