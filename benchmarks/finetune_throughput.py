"""Fine-tuning throughput: `dimap-finetune`'s loop against a minimal loop built from timm's parts.

Both sides train the same pruned student with KD from the same dense teacher (the teacher's
forward counted on both), on CIFAR-10's train split, with the same batch, precision, threads and
data-loading workers, and the same KD loss:

- dimap: `recover.finetune.finetune` (our sampler and resume bookkeeping, timm's transforms,
  optimizer and scheduler);
- timm: `timm.data.create_dataset` + `create_loader`, `timm.optim.create_optimizer_v2`, a plain
  step loop.

Images per second are counted from the end of the warm-up steps to the last step, and the two
loops run in turns (`--repeats`), medians reported. Two settings: reference-cifar10 at its own
32 pixels, and swin_t (random weights) on the same photos upscaled to 224 on the fly, where
decoding and resizing cost what they cost on ImageNet. A third part times the loader alone at
224 pixels, 0 against 2 workers.

    .venv/bin/python -m benchmarks.finetune_throughput
    .venv/bin/python -m benchmarks.finetune_throughput --settings native --repeats 1 --steps 10
"""
from __future__ import annotations

import argparse
import datetime as dt
import itertools
import statistics
import time
from pathlib import Path

import torch

from .common import CIFAR10, RESULTS, command, write_json

SETTINGS = {
    "native": dict(model="reference-cifar10", batch=64, steps=30, warm=5),
    "upscaled-224": dict(model="swin_t", batch=16, steps=6, warm=2),
}


def models(name: str):
    """(student pruned to half its MACs, dense teacher, data config)."""
    from dimap_struct import compress, load_model

    loaded = load_model(name) if name.startswith("reference") else load_model(name, pretrained=False)
    student = compress(loaded, 0.5).model
    return student, loaded.model, loaded.data_config


def dimap_rate(student, teacher, data_config, batch: int, steps: int, warm: int, workers: int) -> float:
    from dimap_struct.options import TrainingOptions
    from dimap_struct.recover.finetune import finetune

    stamps: list[float] = []
    finetune(student, teacher, str(CIFAR10), data_config,
             TrainingOptions(max_steps=warm + steps, batch_size=batch, workers=workers, amp="none", log_every=10**6),
             on_step=lambda step, total, loss: stamps.append(time.perf_counter()))
    return steps * batch / (stamps[-1] - stamps[warm - 1])


def timm_rate(student, teacher, data_config, batch: int, steps: int, warm: int, workers: int) -> float:
    from timm.data import create_dataset, create_loader
    from timm.optim import create_optimizer_v2

    from dimap_struct.recover.finetune import kd_loss

    dataset = create_dataset("", root=str(CIFAR10), split="train", is_training=True)
    loader = create_loader(dataset, input_size=data_config["input_size"], batch_size=batch, is_training=True,
                           use_prefetcher=True, device=torch.device("cpu"), mean=data_config["mean"], std=data_config["std"],
                           interpolation=data_config["interpolation"], crop_pct=data_config["crop_pct"],
                           num_workers=workers, pin_memory=False)
    optimizer = create_optimizer_v2(student, "adamw", lr=5e-4, weight_decay=0.05)
    student.train()
    teacher.eval()
    stamps = []
    for step, (images, labels) in enumerate(loader):
        if step == warm + steps:
            break
        with torch.no_grad():
            target = teacher(images)
        loss = kd_loss(student(images), target, labels, 0.7, 2.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stamps.append(time.perf_counter())
    student.eval()
    return steps * batch / (stamps[-1] - stamps[warm - 1])


def loader_rate(data_config, batch: int, batches: int, workers: int) -> float:
    """Images per second of dimap-finetune's training loader alone, in steady state: timed from
    the fifth batch on (past the workers' start and the batches they prefetched meanwhile)."""
    from dimap_struct.options import TrainingOptions
    from dimap_struct.recover.finetune import DistContext, train_loader

    loader, sampler, _ = train_loader(str(CIFAR10), data_config, TrainingOptions(batch_size=batch, workers=workers),
                                      DistContext())
    sampler.set_epoch(0)
    it = iter(loader)
    for _ in range(4):
        next(it)
    start = time.perf_counter()
    for _ in itertools.islice(it, batches):
        pass
    return batches * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: per setting)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loader-batches", type=int, default=40)
    parser.add_argument("--out", default=str(RESULTS / "finetune_throughput"))
    args = parser.parse_args(argv)
    from dimap_struct.deploy.latency_probe import machine

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = {"command": command("finetune_throughput", argv), "date": dt.date.today().isoformat(),
               "machine": machine(), "device": "cpu", "threads": args.threads, "workers": args.workers,
               "rows": [], "loader": []}
    for name in args.settings:
        setting = dict(SETTINGS[name], **({"steps": args.steps} if args.steps else {}))
        student, teacher, config = models(setting["model"])
        if name == "upscaled-224":
            config = dict(config, input_size=(3, 224, 224))
        rates = {"dimap": [], "timm": []}
        for _ in range(args.repeats):  # in turns: both see the same machine load
            for side, rate in (("dimap", dimap_rate), ("timm", timm_rate)):
                rates[side].append(rate(student, teacher, config, setting["batch"], setting["steps"],
                                        setting["warm"], args.workers))
                print(name, side, f"{rates[side][-1]:.1f} images/s", flush=True)
        row = {"setting": name, **setting, "dimap": rates["dimap"], "timm": rates["timm"],
               "ratio": statistics.median(rates["dimap"]) / statistics.median(rates["timm"])}
        results["rows"].append(row)
        if name == "upscaled-224":
            # the main process's torch threads too: with nothing else to do, its OpenMP threads spin
            # between batches on the cores the workers need (measured: 2 threads cost 2 workers 22%)
            for _ in range(args.repeats):
                for threads in sorted({1, args.threads}):
                    torch.set_num_threads(threads)
                    for workers in (0, 2):
                        results["loader"].append({"workers": workers, "threads": threads, "images_per_s": loader_rate(
                            config, 32, args.loader_batches, workers)})
                        print("loader", results["loader"][-1], flush=True)
            torch.set_num_threads(args.threads)
    lines = [f"# Fine-tuning throughput ({results['date']}, {results['machine']}, CPU, {args.threads} threads, "
             f"{args.workers} loader worker(s))", "", f"`{results['command']}`", "",
             "| setting | model | batch | dimap images/s (median) | timm loop images/s | dimap / timm |",
             "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['setting']} | {r['model']} | {r['batch']} | {statistics.median(r['dimap']):.1f} | "
                     f"{statistics.median(r['timm']):.1f} | {r['ratio']:.2f} |")
    if results["loader"]:
        results["loader_ratio"] = {}
        lines += ["", "Loader alone at 224 pixels, batch 32 (uint8 out of the workers, normalised by timm's "
                      "PrefetchLoader), medians:", "", "| main-process threads | 0 workers images/s | "
                      "2 workers images/s | ratio |", "|---|---|---|---|"]
        for threads in sorted({x["threads"] for x in results["loader"]}):
            by = {w: statistics.median(x["images_per_s"] for x in results["loader"]
                                       if x["workers"] == w and x["threads"] == threads) for w in (0, 2)}
            results["loader_ratio"][threads] = by[2] / by[0]
            lines.append(f"| {threads} | {by[0]:.1f} | {by[2]:.1f} | {by[2] / by[0]:.2f}x |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    write_json(results, args.out, start)


if __name__ == "__main__":
    main()
