"""Worker of the fault-injection test (test_signals.py): runs the real `dimap-compress` CLI in
forked children and sends each one SIGTERM at a random moment.

    python tests/sigterm_harness.py WORKDIR SIGNALS SEED      # e.g. SIGNALS = TERM,TERM,HUP,INT

The parent imports everything once, so each child starts at once and spends its time pruning
and exporting; it keeps torch on one thread (no OpenMP pool exists before the fork, which
keeps forked children safe). A first child runs to the end while the parent watches its
directory: it measures the run time T and the moment W when the first temporary file appears
(the export begins). The delays are stratified rather than drawn freely, so that few trials
cover the run: half of the trials spread over [0, 1.2 T] (some runs finish first), one per
equal slice at a random point inside it, and the other half over the writing window [W, T];
the signals are dealt to the delays in random order. If fewer than MIN_DURING of them landed
while the files were being written (load moves the window), up to EXTRA more SIGTERMs are aimed
at it. Each trial writes into WORKDIR/i. Prints
one JSON object: {"duration_s": T, "writing_from_s": W, "trials": [{"dir", "signal",
"delay_s", "exit_code", "temps_at_kill"}]}; the test inspects the directories.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

import onnx  # noqa: E402,F401  (imported before the fork, like everything compress uses)
import onnxruntime  # noqa: E402,F401
import timm  # noqa: E402,F401
import torch_pruning  # noqa: E402,F401

from dimap_struct import files  # noqa: E402
from dimap_struct import pipeline  # noqa: E402,F401
from dimap_struct.cli import compress as cli  # noqa: E402
from dimap_struct.deploy import export  # noqa: E402,F401

MIN_DURING = 3
"""How many signals must land during the export for the test to mean something (test_signals.py)."""
EXTRA = 12
"""The most signals aimed at the writing window after the planned ones."""


def start(directory: Path) -> int:
    directory.mkdir(parents=True)
    pid = os.fork()
    if pid == 0:  # the child: the CLI as a user runs it, then exit without pytest's cleanup
        code = 70
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            code = cli.main(["reference", "--flops", "0.5", "-o", str(directory / "out.onnx"), "--quiet"])
        finally:
            os._exit(code)
    return pid


def finish(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def watch(directory: Path) -> tuple[float, float]:
    """Run one child to the end; return its run time and when its first temporary file appeared."""
    began = time.perf_counter()
    pid = start(directory)
    writing_from = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        now = time.perf_counter() - began
        if done:
            break
        if writing_from is None and any(p.name.startswith(files.TEMP_PREFIX) for p in directory.iterdir()):
            writing_from = now
        time.sleep(0.005)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the uninterrupted run failed with exit code {os.waitstatus_to_exitcode(status)}")
    if writing_from is None:
        raise SystemExit("the uninterrupted run wrote no temporary file that the harness could see")
    return now, writing_from


def stratified(rng: random.Random, n: int, low: float, high: float) -> list[float]:
    """n points in [low, high], one at a random place inside each of n equal slices."""
    width = (high - low) / max(n, 1)
    return [low + width * (i + rng.random()) for i in range(n)]


def main() -> None:
    workdir, names, seed = Path(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3])
    signums = [getattr(signal, f"SIG{name}") for name in names]
    for signum in set(signums):  # a background job starts with SIGINT ignored, nohup with SIGHUP
        signal.signal(signum, signal.SIG_DFL)
    rng = random.Random(seed)
    duration, writing_from = watch(workdir / "full")
    delays = stratified(rng, len(signums) - len(signums) // 2, 0.0, 1.2 * duration) + \
        stratified(rng, len(signums) // 2, writing_from, duration)
    rng.shuffle(delays)
    results = [trial(workdir / str(i), signum, delay) for i, (signum, delay) in enumerate(zip(signums, delays))]
    # On a loaded machine the writing window drifts from the one measured first: aim more signals
    # at it (SIGTERM, at most EXTRA) until MIN_DURING landed while the files were being written.
    extra = 0
    while sum(landed_during_export(r) for r in results) < MIN_DURING and extra < EXTRA:
        results.append(trial(workdir / str(len(results)), signal.SIGTERM, rng.uniform(writing_from, duration)))
        extra += 1
    print(json.dumps({"duration_s": duration, "writing_from_s": writing_from, "trials": results}))


def trial(directory: Path, signum: int, delay: float) -> dict:
    """Start a child, send it `signum` after `delay` seconds, and record what happened."""
    pid = start(directory)
    time.sleep(delay)
    temps = sorted(p.name for p in directory.iterdir() if p.name.startswith(files.TEMP_PREFIX))
    os.kill(pid, signum)
    return {"dir": str(directory), "signal": signal.Signals(signum).name, "delay_s": delay,
            "exit_code": finish(pid), "temps_at_kill": temps}


def landed_during_export(result: dict) -> bool:
    """The signal came while temporary files existed and the run published nothing."""
    return bool(result["temps_at_kill"]) and not any(Path(result["dir"]).iterdir())


if __name__ == "__main__":
    main()
