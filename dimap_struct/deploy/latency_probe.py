"""Measure the latency table of `prune.latency` on this machine and runtime, and cache it.

For each stage, a chain of its first two blocks in the model's lean form (models/lean.py: same
windows, shifts, norms and attention kind) is rebuilt with random weights at every head count
and on a grid of MLP widths (`_measure`), exported with a static batch and timed in onnxruntime
(each about 0.25 s, in turns with the stage's other chains). The unpruned lean model and its
skeleton (every branch removed) are timed whole, in turns, for the fixed part and the blocks'
scale. Timing depends on shapes, not on weights, so the model's own weights are never needed.

Cache: one JSON file per key (machine, onnxruntime version, family, architecture, input size,
batch, threads) in $DIMAP_CACHE/latency or ~/.cache/dimap_struct/latency, holding the model and
the sha256 of its canonical JSON; the report records the model and where it came from. An entry
is used only when its checksum, numbers and key check out; otherwise it is measured again and
replaced. The cache is optional: where it cannot be written, the model is measured each time.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime
import torch
from torch import nn

from ..data.decoded import cache_dir as user_cache
from ..errors import UserError
from ..files import atomic_output
from ..models.lean import LeanAttention, LeanBlockSpec, LeanSwin, headless, hidden_width, lean_blocks, window_order
from ..prune.latency import LatencyModel, StageTable, mlp_grid, monotone, with_fixed_part
from .bench import machine_record, time_batch
from .onnx_file import open_session

PLAUSIBLE_SCALE = (0.3, 3.0)
"""The blocks' scale (whole model over the chains' sum, `with_fixed_part`) of the tables cached
here lies within 0.75 to 1.11; a timing of the unpruned model disturbed by other work once gave 0.05, which made every
target under 0.76 unreachable. Outside this range the whole model is timed again."""
TIMINGS_OF_THE_WHOLE = 3

# 2: the model records its own prediction of the unpruned plan; 3: entries carry a sha256; 4: a measured
# table per stage instead of a fitted linear model; 5: a measured skeleton and a block scale
CACHE_VERSION = 5


def cache_dir() -> Path:
    return user_cache() / "latency"


def machine() -> str:
    """CPU model, logical CPUs usable and the platform (`bench`'s machine record): what the
    timings depend on."""
    info = machine_record()
    cpu = info["processor"]
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {info['usable_cpus']} CPUs, {info['platform']}"


def load_or_measure(model: nn.Module, adapter, input_size, batch: int = 1, threads: int = 2, *,
                    family: str = "", refresh: bool = False,
                    on_progress: Callable[[str], None] | None = None) -> tuple[LatencyModel, str]:
    """The latency model of `model` (eval mode) at `batch` and `threads`, from the cache or
    measured now (then cached). Returns (model, source): source is 'cache', 'measured', or
    'measured (cache entry NAME was damaged: WHY)' when the entry failed `_read_entry`'s checks
    (that case also prints one warning line on stderr). The cache is optional: when its directory
    cannot be made or written, one warning line on stderr, and the model is measured and not kept."""
    spec = adapter.lean_spec(tuple(input_size))
    key = {"version": CACHE_VERSION, "machine": machine(), "runtime": f"onnxruntime {onnxruntime.__version__}",
           "family": family or adapter.family, "input_size": list(input_size), "batch": batch, "threads": threads,
           "architecture": [[[_heads(b), _mlp(b), _width(b), list(b.window), list(b.shift)] for b in stage.blocks]
                            for stage in spec.stages]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir() / f"{digest}.json"
    source = "measured"
    if not refresh:
        cached, damage = _read_entry(path, key)
        if cached is not None:
            return cached, "cache"
        if damage is not None:
            print(f"warning: latency cache entry {path} was damaged ({damage}); measuring again", file=sys.stderr)
            source = f"measured (cache entry {path.name} was damaged: {damage})"
    keep = _writable(path.parent)  # before the timing, so the warning comes before the wait
    result = _measure(spec, tuple(input_size), batch, threads, key, on_progress or (lambda text: None))
    if keep:
        _write_entry(path, result)
    return result, source


def _read_entry(path: Path, key: dict) -> tuple[LatencyModel | None, str | None]:
    """(model, None) for a sound cache entry at `path`; (None, None) when there is none;
    (None, why) when it is damaged: unreadable, not JSON, a checksum that does not match its
    model, a model `LatencyModel.from_dict` refuses, or made for another key."""
    try:
        entry = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: the cache is under a file
        return None, None
    except OSError as err:
        return None, f"unreadable: {err.strerror}"
    except ValueError:
        return None, "not JSON"
    if not isinstance(entry, dict) or "model" not in entry:
        return None, "no model in it"
    try:
        checksum = _checksum(entry["model"])
    except ValueError:
        return None, "it holds NaN or infinite numbers"
    if entry.get("sha256") != checksum:
        return None, "its checksum does not match its contents"
    try:
        cached = LatencyModel.from_dict(entry["model"])
    except ValueError as err:
        return None, str(err)
    if cached.key != key:
        return None, "it was made for another machine, runtime, model or setting"
    return cached, None


def _checksum(payload) -> str:
    """sha256 of the canonical JSON of `payload`; ValueError for NaN or infinity."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _writable(directory: Path) -> bool:
    """Whether cache entries can be made in `directory` (made if missing); warns when not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        _skip_cache(directory, err.strerror or str(err))
        return False
    return True


def _write_entry(path: Path, result: LatencyModel) -> None:
    """Store `result` with its checksum at `path`, atomically; a failure (a full disk) only warns."""
    payload = result.to_dict()
    try:
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps({"sha256": _checksum(payload), "model": payload}, indent=1))
    except UserError as err:  # atomic_output's one line: cannot write PATH: REASON
        _skip_cache(path.parent, str(err))
    except OSError as err:
        _skip_cache(path.parent, err.strerror or str(err))


def _skip_cache(directory: Path, why: str) -> None:
    # print, not warnings.warn: the CLI drops library warnings, and this one the user must see
    print(f"warning: latency cache {directory} is not writable ({why}); carrying on without it", file=sys.stderr)


def _measure(spec, input_size: tuple, batch: int, threads: int, key: dict,
             notify: Callable[[str], None]) -> LatencyModel:
    """Each stage's table (`prune.latency.StageTable`), then the whole lean model for the fixed part.

    A stage is timed as a chain of its first two blocks (one unshifted, one shifted, as the stage
    runs them) on the stage's token map, every block of the chain at the same widths: with h heads
    for every h (the MLP whole), and at every width of `mlp_grid` (the attention whole). A branch's
    cost per block is the chain's time over the chain without that branch, divided by the chain's
    length, so the call's own overhead cancels. A stage's chains are timed in turns
    (`_time_modules`)."""
    stages, grid = [], spec.grid
    for s, stage in enumerate(spec.stages):
        if stage.merge is not None:
            grid = (grid[0] // 2, grid[1] // 2)
        chain = stage.blocks[:2]
        heads, mlp, width = _heads(chain[0]), _mlp(chain[0]), _width(chain[0])
        widths = mlp_grid(mlp)
        configs = [(h, mlp) for h in range(heads + 1)] + [(heads, m) for m in widths[:-1]]
        notify(f"timing stage {s + 1}/{len(spec.stages)}: {len(configs)} chains of {len(chain)} blocks")
        ms = _time_modules([functools.partial(_chain_unit, chain, grid, h, m, width) for h, m in configs],
                           (batch, grid[0] * grid[1], width), threads)
        by_heads, by_mlp = ms[:heads + 1], ms[heads + 1:] + [ms[heads]]
        attention = [(t - by_heads[0]) / len(chain) for t in by_heads]
        channels = [(t - by_mlp[0]) / len(chain) for t in by_mlp]
        stages.append(StageTable(monotone(attention), widths, monotone(channels), width))
    blocks = [b for stage in spec.stages for b in stage.blocks]
    block_stages = [s for s, stage in enumerate(spec.stages) for _ in stage.blocks]
    stage_widths = [_width(stage.blocks[0]) for stage in spec.stages]
    tries = []
    for attempt in range(TIMINGS_OF_THE_WHOLE):
        notify("timing the unpruned model and its skeleton" + (" again (the blocks' scale was implausible)"
                                                                if attempt else ""))
        dense, skeleton = _time_modules([LeanSwin(spec, input_size).eval(), LeanSwin(_skeleton(spec), input_size).eval()],
                                        (batch, *input_size), threads, seconds_each=1.0)
        tries.append(with_fixed_part(key, stages, block_stages, stage_widths, [_heads(b) for b in blocks],
                                     [_mlp(b) for b in blocks], dense, skeleton))
        if PLAUSIBLE_SCALE[0] <= tries[-1].scale <= PLAUSIBLE_SCALE[1]:
            break
    return min(tries, key=lambda model: abs(math.log(model.scale)))  # the most plausible of the timings


@contextmanager
def exported_unpruned(spec, input_size, batch: int = 1):
    """The lean model of `spec` exported once, for every `measured_fraction` of one selection
    (a path; the file is removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix=".dimap-probe-") as tmp:
        path = Path(tmp) / "unpruned.onnx"
        export_unit(LeanSwin(spec, input_size).eval(), (batch, *input_size), path)
        yield path


def measured_fraction(spec, head_counts, mlp_widths, input_size, batch: int = 1, threads: int = 2,
                      unpruned: Path | None = None) -> float:
    """The latency of a plan over the unpruned model's, measured: the lean model of `spec` (the
    adapter's `lean_spec`; `unpruned`: its export by `exported_unpruned`) and the same model with
    each block at the plan's head count and MLP width (random weights: timing depends on shapes
    only) exported and timed in turns in onnxruntime, as dimap-bench runs them (`_time_modules`,
    about a second each)."""
    plan = iter(zip(head_counts, mlp_widths))
    with warnings.catch_warnings():  # a removed branch is built with zero-width layers, and torch warns
        warnings.simplefilter("ignore")
        stages = [dataclasses.replace(stage, blocks=[_random_block(b, *next(plan), _width(b)) for b in stage.blocks])
                  for stage in spec.stages]
    dense, pruned = _time_modules([unpruned or LeanSwin(spec, input_size).eval(),
                                   LeanSwin(dataclasses.replace(spec, stages=stages), input_size).eval()],
                                  (batch, *input_size), threads, seconds_each=1.0)
    return pruned / dense


def _skeleton(spec):
    """`spec` with every block's branches removed: what no plan can prune (stem, merges, head,
    the blocks' constant adds)."""
    with warnings.catch_warnings():  # zero-width layers, and torch warns
        warnings.simplefilter("ignore")
        stages = [dataclasses.replace(stage, blocks=[_random_block(b, 0, 0, _width(b)) for b in stage.blocks])
                  for stage in spec.stages]
    return dataclasses.replace(spec, stages=stages)


def _heads(block: LeanBlockSpec) -> int:
    return block.attention.heads


def _width(block: LeanBlockSpec) -> int:
    return block.attention.qkv_weight.shape[1]


def _mlp(block: LeanBlockSpec) -> int:
    return hidden_width(block.mlp)


def _chain_unit(chain: list[LeanBlockSpec], grid, heads: int, mlp: int, width: int) -> nn.Module:
    """Random-weight blocks shaped like `chain` (windows, shifts, norms) with `heads` heads and
    `mlp` MLP channels each (0: the branch removed), in the stage's order, as `LeanSwin` runs them."""
    with warnings.catch_warnings():  # a removed branch is built with zero-width layers, and torch warns
        warnings.simplefilter("ignore")
        blocks = [_random_block(template, heads, mlp, width) for template in chain]
    residual = window_order(grid, chain[0].window, chain[0].shift)
    return nn.Sequential(*lean_blocks(blocks, grid, residual)).eval()


def _random_block(template: LeanBlockSpec, heads: int, mlp: int, width: int) -> LeanBlockSpec:
    if heads == 0:
        attention = headless(nn.Linear(0, width))
    else:
        head_dim = template.attention.qkv_weight.shape[0] // (3 * template.attention.heads)
        tokens = template.window[0] * template.window[1]
        cosine = template.attention.temperature is not None
        attention = LeanAttention(torch.randn(3 * heads * head_dim, width) * 0.02, torch.zeros(3 * heads * head_dim),
                                  heads, torch.zeros(heads, tokens, tokens), nn.Linear(heads * head_dim, width),
                                  scale=None if cosine else head_dim ** -0.5,
                                  temperature=torch.ones(heads) if cosine else None)
    mlp_module = nn.Sequential(nn.Linear(width, mlp), nn.GELU(), nn.Linear(mlp, width))
    return LeanBlockSpec(attention, nn.LayerNorm(width), nn.LayerNorm(width), mlp_module, template.window,
                         template.shift, template.post_norm)


def built(module: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    """`module`, or the module it builds when it is a builder (`_time_modules` takes either)."""
    return module if isinstance(module, nn.Module) else module()


SESSIONS_AT_ONCE = 12
"""Sessions alive at once while timing: every chain of a swin_b stage at once held 9.2 GiB."""


def _time_modules(modules: list[nn.Module | Callable[[], nn.Module] | Path], shape, threads: int,
                  seconds_each: float = 0.25, min_rounds: int = 15) -> list[float]:
    """Median ms of each module (or module a callable builds, one at a time: a swin_b stage's
    chains held 5 GiB of weights at once; or the ONNX file of one, exported by `export_unit`),
    exported alone (static shape) and run in onnxruntime as dimap-bench runs it, in turns (each
    round runs every module once), so that a change in the machine's load falls on all of them
    alike. Rounds: enough for about `seconds_each` per module, at least `min_rounds`. At most `SESSIONS_AT_ONCE` sessions are open: beyond that, modules are
    timed in groups, each with the first module again, and a group's times are scaled by the
    first module's time in the first group over its time in that group."""
    with tempfile.TemporaryDirectory(prefix=".dimap-probe-") as tmp:
        paths = []
        for i, module in enumerate(modules):
            if isinstance(module, Path):
                paths.append(module)
                continue
            paths.append(Path(tmp) / f"unit{i}.onnx")
            export_unit(built(module), shape, paths[-1])
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        size, n = SESSIONS_AT_ONCE, len(paths)
        groups = [list(range(min(size, n)))] + [list(range(i, min(i + size - 1, n))) for i in range(size, n, size - 1)]
        out: list[float] = []
        for k, members in enumerate(groups):
            ms = _time_group([paths[i] for i in ([] if k == 0 else [0]) + members], x, threads, seconds_each,
                             min_rounds)
            out += ms if k == 0 else [t * out[0] / ms[0] for t in ms[1:]]
    return out


def export_unit(module: nn.Module, shape, path: Path) -> None:
    """`module` as an ONNX file of static `shape` for timing. Without torch's constant folding:
    onnxruntime folds the same constants when the session opens with every optimisation on (the
    graph it runs has the same operators in the same order and the same initializer shapes:
    tests/test_latency_budget.py), and torch's folding took a third of the export time of a swin_b
    chain (0.97 s against 0.65 s)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(*shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], do_constant_folding=False)


def _time_group(paths: list[Path], x: np.ndarray, threads: int, seconds_each: float, min_rounds: int) -> list[float]:
    sessions = [open_session(path, threads, tuned=True) for path in paths]
    runners = [lambda session=session: session.run(None, {"input": x}) for session in sessions]
    start = time.perf_counter()
    for run in runners:  # one round, to size the rest
        run()
    per_round = time.perf_counter() - start
    rounds = min(10_000, max(min_rounds, int(seconds_each * len(runners) / max(per_round, 1e-9))))
    times = time_batch(runners, x.shape[0], warmup=0.0, min_iters=rounds, min_time=0.0, max_iters=rounds,
                       on_run=None)
    return [1e3 * statistics.median(t) for t in times]
