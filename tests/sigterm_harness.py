"""Worker of the fault-injection test (test_signals.py): runs the real `dimap-compress` CLI in
forked children and sends each one SIGTERM at a random moment.

    python tests/sigterm_harness.py WORKDIR SIGNALS SEED      # e.g. SIGNALS = TERM,TERM,HUP,INT

The parent imports everything once, so each child starts at once and spends its time pruning
and exporting; it keeps torch on one thread (no OpenMP pool exists before the fork, which
keeps forked children safe). A first child runs to the end to measure the run time T; then
trial i sends the i-th signal of SIGNALS to its child after a delay drawn uniformly from
[0, 1.2 T] (so some runs finish first). Each trial writes into WORKDIR/i. Prints one JSON
object: {"duration_s": T, "trials": [{"dir", "signal", "delay_s", "exit_code",
"temps_at_kill"}]}; the test inspects the directories.
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


def main() -> None:
    workdir, names, seed = Path(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3])
    signums = [getattr(signal, f"SIG{name}") for name in names]
    for signum in set(signums):  # a background job starts with SIGINT ignored, nohup with SIGHUP
        signal.signal(signum, signal.SIG_DFL)
    rng = random.Random(seed)
    began = time.perf_counter()
    code = finish(start(workdir / "full"))
    duration = time.perf_counter() - began
    if code != 0:
        raise SystemExit(f"the uninterrupted run failed with exit code {code}")
    results = []
    for i, signum in enumerate(signums):
        directory = workdir / str(i)
        delay = rng.uniform(0, 1.2 * duration)
        pid = start(directory)
        time.sleep(delay)
        temps = sorted(p.name for p in directory.iterdir() if p.name.startswith(files.TEMP_PREFIX))
        os.kill(pid, signum)
        results.append({"dir": str(directory), "signal": signal.Signals(signum).name, "delay_s": delay,
                        "exit_code": finish(pid), "temps_at_kill": temps})
    print(json.dumps({"duration_s": duration, "trials": results}))


if __name__ == "__main__":
    main()
