"""Options of every command, declared once: default, help, flag, allowed range and whether a
recipe records them.

An options object validates itself when it is made (`UserError`, one line naming the option
and what it allows), whatever it is made from: argparse flags (`add_flags` + `from_args`), a
recipe file (`load_recipe`), or keyword arguments (`make`). A recipe is a flat mapping of
option names to values (YAML or JSON); every report stores the recipe of its run, and
`dimap-compress --config report.json` reads it back.

    options = CompressOptions(model="swin_t", flops=0.5, pretrained=False)
    options.recipe()          # {'recipe_version': 1, 'model': 'swin_t', 'flops': 0.5, ...}
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, TypeVar

from . import __version__
from .deploy.choices import QUANTIZE_SCHEMES, RUNTIMES, resolve_scheme
from .errors import UserError
from .prune.budget import Budget

RECIPE_VERSION = 1
"""Format of recipe files; a newer one is refused with one line."""
RESERVED_KEYS = ("recipe_version", "dimap_struct_version", "command")
"""Keys of a recipe that describe it rather than set an option."""


@dataclass(frozen=True)
class Spec:
    """How one option is shown and checked (the dataclass field holds the default)."""

    help: str
    kind: type = str
    """Value type: str, int, float, bool, dict or list (of `item`)."""
    item: type = int
    flag: str | None = None
    """Command-line flag; None derives --name-with-dashes, "" means API / recipe only."""
    metavar: str | None = None
    group: str = "options"
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    recipe: bool = True
    """Recorded in recipes (outputs and display options are not: they do not change the model)."""
    positional: bool = False

    def choice_list(self) -> tuple[str, ...] | None:
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)


def option(default: Any, help: str, **spec) -> Any:
    """A dataclass field with its `Spec`; list defaults are copied per instance."""
    meta = {"spec": Spec(help=help, **spec)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    spec: Spec = f.metadata["spec"]
    if spec.positional:
        return f.name.upper()
    if spec.flag is not None:
        return spec.flag or f.name
    return "--" + f.name.replace("_", "-")


O = TypeVar("O", bound="Options")


@dataclass(frozen=True, kw_only=True)
class Options:
    """Base of every command's options: per-field checks from each `Spec`, then `check()`."""

    command: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f, getattr(self, f.name)))
        self.check()

    def check(self) -> None:
        """Rules between options; subclasses extend it."""

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def specs(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if "spec" in f.metadata]

    @classmethod
    def make(cls: type[O], values: dict | None = None, **overrides) -> O:
        """Options from a mapping (e.g. a recipe) updated by keyword overrides; unknown names
        are a UserError with the closest known one."""
        merged = {**(values or {}), **overrides}
        for key in RESERVED_KEYS:
            merged.pop(key, None)
        names = [f.name for f in cls.specs()]
        for key in merged:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
                hint = f"; did you mean '{close[0]}'?" if close else f"; known options: {', '.join(names)}"
                raise UserError(f"unknown option '{key}'{hint}")
        return cls(**merged)

    def replace(self: O, **overrides) -> O:
        return type(self).make(self.as_dict(), **overrides)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in self.specs()}

    def recipe(self) -> dict:
        """The options that determine the result, as a recipe mapping (JSON-ready)."""
        values = {f.name: _plain(getattr(self, f.name)) for f in self.specs() if f.metadata["spec"].recipe}
        return {"recipe_version": RECIPE_VERSION, "dimap_struct_version": __version__,
                "command": self.command, **values}

    # -- command line ------------------------------------------------------------------------
    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser, skip: Iterable[str] = ()) -> None:
        """One argparse flag per option (in groups named by each Spec), defaults shown in the
        help. Flags not given stay out of the namespace, so a recipe's values survive."""
        groups: dict[str, Any] = {}
        for f in cls.specs():
            spec: Spec = f.metadata["spec"]
            if f.name in skip or spec.flag == "":
                continue
            target = parser if spec.group == "options" else groups.setdefault(
                spec.group, parser.add_argument_group(spec.group))
            kwargs: dict[str, Any] = {"help": _help(f, spec), "default": argparse.SUPPRESS, "dest": f.name}
            if spec.kind is bool:
                negate = flag_of(f).startswith("--no-")
                kwargs["action"] = "store_false" if negate else "store_true"
            else:
                static = spec.choices if isinstance(spec.choices, tuple) else None
                kwargs["metavar"] = spec.metavar or ("{" + ",".join(static) + "}" if static else None) or (
                    f.name.upper() if spec.positional else "N" if spec.kind in (int, list) else "X")
                kwargs["type"] = spec.item if spec.kind is list else (
                    int if spec.kind is int else float if spec.kind is float else str)
                if spec.kind is list:
                    kwargs["nargs"] = "+"
            if spec.positional:
                kwargs.pop("dest")
                kwargs["nargs"] = "+" if spec.kind is list else "?"
                target.add_argument(f.name, **kwargs)
            else:
                target.add_argument(flag_of(f), *_short(f), **kwargs)

    @classmethod
    def from_args(cls: type[O], args: argparse.Namespace, config: str | os.PathLike | None = None) -> O:
        """Options from a recipe file (if `config`) overridden by the flags given in `args`."""
        names = {f.name for f in cls.specs()}
        given = {k: v for k, v in vars(args).items() if k in names and v is not None}
        base = load_recipe(config, cls.command) if config else {}
        return cls.make(base, **given)


def _short(f: dataclasses.Field) -> list[str]:
    return ["-o"] if f.name == "output" else []


def _help(f: dataclasses.Field, spec: Spec) -> str:
    text = spec.help
    choices = spec.choice_list()
    if choices:
        text += f"; one of: {', '.join(choices)}"
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if spec.kind is not bool and default not in (None, [], {}):
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        text += f" (default: {shown})"
    return text.replace("%", "%%")


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _coerce(f: dataclasses.Field, value):
    """Check one value against its Spec; return it in its canonical type."""
    spec: Spec = f.metadata["spec"]
    name = flag_of(f)
    if value is None:  # "not given" (a recipe's `key: null`, an API keyword left None): the default
        if f.default is not dataclasses.MISSING:
            return f.default
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else None
    kind = spec.kind
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"{name} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise UserError(f"{name} must be an integer{_range(spec)}, got {value!r}")
        _check_range(name, spec, value, "an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise UserError(f"{name} must be a number{_range(spec)}, got {value!r}") from None
        if not math.isfinite(value):
            raise UserError(f"{name} must be a finite number{_range(spec)}, got {value}")
        _check_range(name, spec, value, "a number")
        return float(value)
    if kind is list:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if spec.item is str:
            items = [os.fspath(v) if isinstance(v, os.PathLike) else v for v in items]
            choices = spec.choice_list()
            for v in items if choices is not None else []:
                if v not in choices:
                    raise UserError(f"{name} must be among {', '.join(choices)}; got {v!r}")
            return items
        if not items or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
            raise UserError(f"{name} must be one or more integers{_range(spec)}, got {value!r}")
        for v in items:
            _check_range(name, spec, v, "integers")
        return items
    if kind is dict:
        if not isinstance(value, dict):
            raise UserError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # e.g. flops: 0.5 in a recipe
    if not isinstance(value, str):
        raise UserError(f"{name} must be text, got {value!r}")
    choices = spec.choice_list()
    if choices is not None and value not in choices:
        close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"{name} must be one of {', '.join(choices)}; got {value!r}{hint}")
    return value


def range_text(spec: Spec) -> str:
    """The allowed range of a number, e.g. '> 0 and <= 1'; '' if it has none."""
    parts = []
    if spec.minimum is not None:
        parts.append(f"{'>' if spec.exclusive_minimum else '>='} {_num(spec.minimum)}")
    if spec.maximum is not None:
        parts.append(f"<= {_num(spec.maximum)}")
    return " and ".join(parts)


def _range(spec: Spec) -> str:
    text = range_text(spec)
    return f" {text}" if text else ""


def _num(x: float) -> str:
    if isinstance(x, int):
        return str(x)
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _check_range(name: str, spec: Spec, value, what: str) -> None:
    low, high = spec.minimum, spec.maximum
    too_low = low is not None and (value <= low if spec.exclusive_minimum else value < low)
    if too_low or (high is not None and value > high):
        raise UserError(f"{name} must be {what}{_range(spec)}, got {value}")


def load_recipe(path: str | os.PathLike, command: str = "") -> dict:
    """The option mapping of a recipe file (.yaml, .yml or .json). A JSON report written by a
    dimap-struct command holds its recipe under 'recipe': that is read instead."""
    from .files import check_input  # deferred: start-up (tempfile, threading), as in cli.common

    path = check_input(path, "--config")
    text = path.read_text(errors="replace")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml  # deferred: start-up (45 ms on every --help); only YAML recipes need it

            data = yaml.safe_load(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise UserError(f"--config {path}: expected a .yaml, .yml or .json recipe")
    except UserError:
        raise
    except Exception as err:  # yaml and json raise their own error types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--config {path} does not parse: {first[:160]}") from None
    if isinstance(data, dict) and isinstance(data.get("recipe"), dict):
        data = data["recipe"]  # a report
    if not isinstance(data, dict):
        raise UserError(f"--config {path} must hold a mapping of option names to values")
    version = data.get("recipe_version", RECIPE_VERSION)
    if version != RECIPE_VERSION:
        raise UserError(f"--config {path} is recipe format {version!r}, written by dimap-struct "
                        f"{data.get('dimap_struct_version', '?')}; this version reads format {RECIPE_VERSION}")
    if "force" in data:  # overwriting files is decided by whoever runs the command, never by a file
        raise UserError(f"--config {path} sets 'force'; a recipe may not: pass --force on the command line")
    if command and data.get("command") not in (None, command):
        raise UserError(f"--config {path} is a recipe for {data['command']}, not {command}")
    return data


# --------------------------------------------------------------------------- the options

def _criteria() -> list[str]:
    # deferred: start-up; the criteria load torch and timm, which only dimap-compress and
    # dimap-finetune need (their --help lists the criteria, so they load them there)
    from .prune.criteria import criterion_names

    return criterion_names()


def _policies() -> list[str]:
    from .prune.select import POLICIES  # deferred: start-up (torch), as in _criteria

    return list(POLICIES)


@dataclass(frozen=True, kw_only=True)
class SourceOptions(Options):
    """Which model, and where its weights come from."""

    model: str | None = option(None, "timm model name, optionally with a pretrained tag "
                               "(swin_base_patch4_window7_224.ms_in22k_ft_in1k), an alias (swin_t, swin_s, "
                               "swin_b, swin_l), 'torchvision:swin_t', the built-in 'reference-cifar10' or "
                               "'reference-mnist' (alias 'reference'), hf:<hub id or save_pretrained directory> "
                               "(transformers), or a pruned checkpoint written by --save-pt",
                               positional=True)
    checkpoint: str | None = option(None, "local .pth / .pt / .safetensors state dict: bare, or under "
                                    "'model' / 'state_dict' (else 'model_ema' / 'state_dict_ema' / 'ema'); "
                                    "DDP 'module.' prefixes are stripped", metavar="PATH", group="weights")
    pretrained: bool = option(True, "random initialisation instead of pretrained weights (for trying the tool)",
                              kind=bool, flag="--no-pretrained", group="weights")
    seed: int = option(0, "seed of the random initialisation, of --criterion random and of data order",
                       kind=int, minimum=0, maximum=2**63 - 1, group="weights")
    model_kwargs: dict = option({}, "constructor options of the model (e.g. img_size, num_classes)", kind=dict,
                                flag="")

    def check(self) -> None:
        super().check()
        if self.checkpoint is not None and not self.pretrained:
            raise UserError("give --checkpoint PATH or --no-pretrained, not both")


@dataclass(frozen=True, kw_only=True)
class PruneOptions(SourceOptions):
    """What to remove and how much: the selection stage's options."""

    granularity: str = option("structured", "structured: remove heads and MLP channels, the model gets faster; "
                              "weight: the paper's setting, zero single weights (one threshold per module), "
                              "not faster", choices=("structured", "weight"), group="selection")
    flops: str | None = option(None, "MACs to keep: a fraction 0 < R <= 1 of the original, or an absolute "
                               "budget such as 7.3G (default: 0.5)", metavar="R", group="selection")
    params: str | None = option(None, "with --granularity weight: keep the fraction R of the prunable weights "
                                "(instead of --flops)", metavar="R", group="selection")
    latency: float | None = option(None, "instead of --flops: keep this fraction 0 < R <= 1 of the dense model's "
                                   "onnxruntime latency on this machine, both as a per-block latency model predicts them "
                                   "(timed once, then cached)", kind=float, minimum=0, exclusive_minimum=True,
                                   maximum=1, metavar="R", group="selection")
    latency_batch: int = option(1, "batch size the --latency budget is for", kind=int, minimum=1, metavar="B",
                                group="selection")
    latency_threads: int = option(2, "onnxruntime threads the --latency budget is for", kind=int, minimum=1,
                                  group="selection")
    latency_checks: int = option(2, "with --latency: time the plan against the unpruned model (about two "
                                 "seconds each, in turns) up to N times, selecting again with the target scaled by "
                                 "the table's error while it lands more than 0.02 from R; 0 trusts the table",
                                 kind=int, minimum=0, metavar="N", group="selection")
    criterion: str = option("dimap", "how groups are ranked: a score, or a name for a score and a policy "
                            "(docs/method.md section 3)", metavar="NAME", choices=_criteria, group="selection")
    policy: str | None = option(None, "how the scores become a plan, instead of the criterion's own policy "
                                "(docs/method.md section 4)", metavar="NAME", choices=_policies, group="selection")
    score_mode: str = option("group", "DIMAP group score: group = per-group energies (option A); weight = mean "
                             "of the paper's per-weight scores over the group (option B)",
                             choices=("group", "weight"), flag="--score", group="selection")
    min_heads: int = option(1, "heads every block keeps (0: a block may lose its whole attention branch)",
                            kind=int, minimum=0, group="selection")
    min_mlp: int = option(8, "MLP channels every block keeps (0: a block may lose its whole MLP)", kind=int,
                          minimum=0, group="selection")
    round_to: int = option(1, "round kept MLP widths, residual widths and heads' total width to multiples of N "
                           "(e.g. 8 or 16 for faster kernels)", kind=int, minimum=1, group="selection")
    prune_embed: bool = option(False, "also remove residual (embedding) channels of every stage: a narrower, "
                               "faster model", kind=bool, group="selection")
    min_embed: int = option(16, "residual channels every stage keeps (with --prune-embed)", kind=int, minimum=1,
                            group="selection")
    calib_data: str | None = option(None, "calibration images (an MNIST directory, an ImageFolder, a .tar of "
                                    "class folders or hfds/NAME; its train split): for data-driven criteria (taylor) and for one-shot recovery after "
                                    "the cut (--recovery)", metavar="PATH", group="selection")
    calib_batches: int = option(4, "calibration batches of 32 images for data-driven criteria", kind=int,
                                minimum=1, group="selection")
    calib_images: int = option(256, "calibration images for recovery and for --criterion dimap-calib (with "
                               "--calib-data)", kind=int, minimum=1, group="recovery")
    recovery: str = option("refit", "with --calib-data, after the cut: refit = least-squares refit of the kept "
                           "columns of proj and fc2 to the unpruned outputs; sequential = refit every kept layer "
                           "(q/k/v, proj, fc1, fc2) in forward order on the pruned model's own inputs against the "
                           "unpruned outputs (slower: a pass per layer); bias = move the removed groups' mean "
                           "contribution into the bias; none = keep the plain cut",
                           choices=("refit", "sequential", "bias", "none"), group="recovery")

    STRUCTURED_ONLY: ClassVar[tuple[str, ...]] = (
        "criterion", "policy", "score_mode", "min_heads", "min_mlp", "round_to", "prune_embed", "min_embed",
        "calib_data", "calib_batches", "calib_images", "recovery", "latency", "latency_batch", "latency_threads",
        "latency_checks")

    def check(self) -> None:
        super().check()
        from .prune.criteria import get_criterion  # deferred: start-up (torch, timm), as in _criteria
        from .prune.select import POLICIES

        if self.flops is not None:
            _ = self.budget  # parsed, so checked, before any heavy work
        if self.granularity == "weight":
            defaults = PruneOptions.__dataclass_fields__
            given = [flag_of(defaults[k]) for k in self.STRUCTURED_ONLY if getattr(self, k) != default_of(defaults[k])]
            if given:
                raise UserError(f"{', '.join(given)} only apply to structured pruning, not to --granularity weight")
            if self.flops is not None and self.params is not None:
                raise UserError("give either --flops or --params, not both")
            if self.params is not None:
                _ = self.budget
            return
        if self.params is not None:
            raise UserError("--params is a target of --granularity weight; structured pruning takes --flops")
        if self.latency is not None and self.flops is not None:
            raise UserError("give either --flops or --latency, not both")
        criterion = get_criterion(self.criterion, self.policy)
        if POLICIES[criterion.policy].needs_latency and (self.latency is None or self.prune_embed):
            raise UserError(f"policy '{criterion.policy}' ranks by the latency table: it needs --latency, "
                            "and does not take --prune-embed")
        if self.score_mode != "group" and not criterion.score.uses_score_mode:
            raise UserError(f"--score applies to criteria that use DIMAP scores, not to '{self.criterion}'")
        if criterion.needs_data and self.calib_data is None:
            raise UserError(f"criterion '{self.criterion}' is data-driven: give --calib-data PATH "
                            "(an MNIST directory or an ImageFolder) for its calibration images")

    @cached_property
    def budget(self) -> Budget:
        """The budget, parsed once: --flops (default 0.5) or, for weight granularity, --params if
        given (an absolute --flops count is checked against the model when it is loaded)."""
        if self.granularity == "weight" and self.flops is None:
            return Budget.parse_weights(self.params if self.params is not None else "0.5")
        return Budget.parse(self.flops if self.flops is not None else "0.5")

    @property
    def target(self) -> str:
        """The budget as written: --flops (default 0.5) or, for weight granularity, --params if given."""
        return self.budget.text


def default_of(f: dataclasses.Field):
    """The default value of an option's field (a fresh copy for lists and mappings)."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


QUANTIZE_HELP = ("write an INT8 model (onnxruntime.quantization): int8-dynamic quantizes activations at run time "
                 "(no data); int8-static calibrates them on --calib-data (QDQ); int8 = static with --calib-data, "
                 "else dynamic")


@dataclass(frozen=True, kw_only=True)
class CompressOptions(PruneOptions):
    """Every option of `compress` / dimap-compress."""

    command: ClassVar[str] = "dimap-compress"

    output: str | None = option(None, "write the pruned model as ONNX here, and the report as OUT.json beside it",
                                metavar="OUT.onnx", group="output", recipe=False)
    force: bool = option(False, "overwrite existing output files", kind=bool, group="output", recipe=False)
    save_pt: str | None = option(None, "also save the pruned PyTorch model (safetensors + architecture spec, no "
                                 "pickle); dimap_struct.load_pruned(OUT.pt) rebuilds it", metavar="OUT.pt",
                                 group="output", recipe=False)
    opset: int = option(17, "ONNX opset of the export", kind=int, minimum=14, maximum=20, group="output")
    plain_export: bool = option(False, "export the model's own forward (timm's or torchvision's graph) instead "
                                "of the lean graph of the same function", kind=bool, group="output")
    quantize: str | None = option(None, QUANTIZE_HELP, choices=QUANTIZE_SCHEMES, metavar="SCHEME", group="output")

    def check(self) -> None:
        super().check()
        resolve_scheme(self.quantize, self.calib_data)


AMP_MODES = ("auto", "bf16", "fp16", "none")
"""Values of --amp (`recover.finetune.autocast_dtype` resolves them for a device)."""


@dataclass(frozen=True, kw_only=True)
class TrainingOptions(Options):
    """Knowledge-distillation fine-tuning (see `recover.finetune`)."""

    data: str | None = option(None, "MNIST directory, ImageFolder, .tar of class folders (or train.tar beside "
                              "test.tar) or hfds/NAME (a Hugging Face dataset); trains on its 'train' split, "
                              "reports top-1 on 'eval' (default: $DIMAP_DATA)", metavar="PATH",
                              group="training")
    epochs: float = option(1.0, "epochs (fractions allowed)", kind=float, minimum=0, exclusive_minimum=True,
                           group="training")
    max_steps: int | None = option(None, "stop after N optimiser steps", kind=int, minimum=1, group="training")
    batch_size: int = option(64, "images per step and process", kind=int, minimum=1, group="training")
    lr: float = option(5e-4, "peak learning rate", kind=float, minimum=0, exclusive_minimum=True, group="training")
    min_lr: float = option(1e-5, "final learning rate of the decay", kind=float, minimum=0, group="training")
    sched: str = option("cosine", "decay of the learning rate after the warm-up, by timm's scheduler factory "
                        "(linear: its poly at power 1)", choices=("cosine", "tanh", "linear"), group="training")
    warmup_fraction: float = option(0.1, "fraction of the steps spent warming up linearly", kind=float, minimum=0,
                                    maximum=1, group="training")
    weight_decay: float = option(0.05, "AdamW weight decay", kind=float, minimum=0, group="training")
    alpha: float = option(0.7, "weight of the distillation term", kind=float, minimum=0, maximum=1,
                          group="training")
    temperature: float = option(2.0, "distillation temperature", kind=float, minimum=0, exclusive_minimum=True,
                                group="training")
    opt: str = option("adamw", "optimizer, by its name in timm's factory (timm.optim.list_optimizers(); the "
                      "position terms and 1-D weights are not decayed)", metavar="NAME", group="training")
    clip_grad: float | None = option(None, "clip the gradients' global L2 norm to X before each step",
                                     kind=float, minimum=0, exclusive_minimum=True, group="training")
    smoothing: float = option(0.0, "label smoothing of the cross-entropy term", kind=float, minimum=0, maximum=0.5,
                              group="training")
    mixup: float = option(0.0, "mix pairs of images and their labels, with weights from Beta(A, A) (timm.data.Mixup; "
                          "0: off); the teacher sees the mixed images", kind=float, minimum=0, metavar="A",
                          group="training")
    cutmix: float = option(0.0, "paste a box of one image into another, its area from Beta(A, A) (timm.data.Mixup, "
                           "alternating with --mixup when both are on; 0: off)", kind=float, minimum=0, metavar="A",
                           group="training")
    ema_decay: float | None = option(None, "keep an exponential moving average of the weights with this decay "
                                     "(timm.utils.ModelEmaV3); the average is what is evaluated and exported",
                                     kind=float, minimum=0, exclusive_minimum=True, maximum=1, group="training")
    accum_steps: int = option(1, "split each step's batch into N parts whose gradients add up: less memory, the "
                              "same step", kind=int, minimum=1, group="training")
    amp: str = option("auto", "mixed precision of the student's and the teacher's forward: auto = bf16 on a CUDA "
                      "device that supports it, none elsewhere (bf16 autocast on a CPU is not measured faster); "
                      "fp16 scales the loss (CUDA only)", choices=AMP_MODES, group="training")
    workers: int | None = option(None, "data-loading processes per training process (default: 0 for MNIST, "
                                 "which is held in memory; else min(8, CPUs / processes - 1), at least 0)",
                                 kind=int, minimum=0, group="training", recipe=False)
    compile: bool = option(False, "torch.compile the student (the first steps are slower while it compiles)",
                           kind=bool, group="training", recipe=False)
    log_every: int = option(20, "read the loss back from the device every N steps (and at the end); the check "
                            "for a non-finite loss runs then and names the steps it covers", kind=int, minimum=1,
                            group="training", recipe=False)
    save_every: int | None = option(None, "also save the resume state (OUT.resume.pt) every N optimiser steps, "
                                    "mid-epoch; it is always saved after each epoch and when a signal stops "
                                    "training", kind=int, minimum=1, metavar="STEPS", group="output", recipe=False)


    def check(self) -> None:
        super().check()
        if self.batch_size % self.accum_steps:
            raise UserError(f"--accum-steps {self.accum_steps} does not divide --batch-size {self.batch_size}")
        if (self.mixup or self.cutmix) and self.batch_size % 2:
            raise UserError(f"--mixup and --cutmix mix the images of a batch in pairs: --batch-size {self.batch_size} "
                            "must be even")
        from timm.optim import list_optimizers  # deferred: start-up (torch, timm), as in _criteria

        names = list_optimizers()
        if self.opt not in names:
            close = difflib.get_close_matches(self.opt, names, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"--opt {self.opt!r} is not one of timm's optimizers{hint}; "
                            "timm.optim.list_optimizers() lists them")


@dataclass(frozen=True, kw_only=True)
class FinetuneOptions(TrainingOptions, PruneOptions):
    """Every option of dimap-finetune: prune like dimap-compress, then train. The command prunes
    structurally; `pipeline.finetune` also takes granularity 'weight' (the zeroed weights stay
    zero while training)."""

    command: ClassVar[str] = "dimap-finetune"

    output: str | None = option(None, "fine-tuned ONNX model (and OUT.json beside it)", metavar="OUT.onnx",
                                group="output", recipe=False)
    force: bool = option(False, "overwrite existing output files", kind=bool, group="output", recipe=False)
    resume: bool = option(False, "continue from OUT.resume.pt at the step it was saved (after each epoch, every "
                          "--save-every steps, and when a signal stopped training); the process count, "
                          "--batch-size and --accum-steps may change if --batch-size x processes stays", kind=bool,
                          group="output", recipe=False)
    plain_export: bool = option(False, "export the model's own forward (timm's or torchvision's graph) instead "
                                "of the lean graph of the same function", kind=bool, group="output")
    quantize: str | None = option(None, QUANTIZE_HELP + "; static calibrates on --calib-data, else on --data",
                                  choices=QUANTIZE_SCHEMES, metavar="SCHEME", group="output")
    prune_steps: int = option(1, "reach the target in K rounds of prune + KD (MACs on a geometric schedule, the "
                              "KD budget split evenly) instead of one cut", kind=int, minimum=1, maximum=50,
                              flag="--steps", metavar="K", group="training")

    def check(self) -> None:
        super().check()
        resolve_scheme(self.quantize, self.calib_data or self.data or "training data")
        if self.prune_steps > 1 and self.granularity != "structured":
            raise UserError("--steps cuts heads and channels in rounds; it does not work with --granularity weight")
        if self.prune_steps > 1 and self.latency is not None:
            raise UserError("--steps reaches a MACs target in rounds; it does not work with --latency (use --flops)")
        if self.prune_steps > 1 and self.resume:
            raise UserError("--resume continues a one-cut run; it does not work with --steps > 1")
        if self.prune_steps > 1 and self.max_steps is not None and self.max_steps < self.prune_steps:
            raise UserError(f"--steps {self.prune_steps} needs at least one training step per round; "
                            f"--max-steps {self.max_steps} allows fewer")

    def training(self) -> TrainingOptions:
        """The training part of these options."""
        names = {f.name for f in TrainingOptions.specs()}
        return TrainingOptions(**{k: v for k, v in self.as_dict().items() if k in names})

    def pruning(self) -> CompressOptions:
        """The pruning part of these options, as `compress` takes them (no outputs)."""
        names = {f.name for f in PruneOptions.specs()}
        return CompressOptions(**{k: v for k, v in self.as_dict().items() if k in names})


def resume_path(output: str | os.PathLike) -> Path:
    """The resume state of `dimap-finetune -o OUT.onnx`: OUT.resume.pt (`recover.finetune.save_state`)."""
    return Path(output).with_suffix(".resume.pt")


@dataclass(frozen=True, kw_only=True)
class EvalOptions(SourceOptions):
    """Every option of dimap-eval."""

    command: ClassVar[str] = "dimap-eval"

    model: str | None = option(None, "an .onnx file (onnxruntime), a pruned checkpoint (--save-pt) or a model "
                               "name (reference, swin_t, timm names)", positional=True)
    data: str | None = option(None, "MNIST directory (IDX files), an ImageFolder, a .tar of class folders or "
                              "hfds/NAME (default: $DIMAP_DATA)", metavar="PATH")
    split: str = option("eval", "index % 5 == 4 is 'eval', the rest 'train'; 'all' is everything",
                        choices=("eval", "train", "all"))
    batch_size: int = option(128, "images per batch", kind=int, minimum=1)
    limit: int | None = option(None, "evaluate only the first N images", kind=int, minimum=1)
    threads: int | None = option(None, "onnxruntime / OpenVINO / torch threads", kind=int, minimum=1, recipe=False)
    runtime: str = option("onnxruntime", "runtime for .onnx files (openvino: pip install openvino)",
                          choices=RUNTIMES)


@dataclass(frozen=True, kw_only=True)
class BenchOptions(Options):
    """Every option of dimap-bench (timing schedule and outputs)."""

    command: ClassVar[str] = "dimap-bench"

    models: list = option([], "ONNX files; the first is the baseline", kind=list, item=str, positional=True,
                          recipe=False, metavar="MODEL.onnx")
    batch: list = option([1, 8], "batch sizes", kind=list, minimum=1)
    threads: int = option(2, "intra-op threads (onnxruntime; OpenVINO's inference threads)", kind=int, minimum=1)
    runtime: list = option(["onnxruntime"], "time every file in each of these runtimes, interleaved in one table "
                           "(openvino: pip install openvino)", kind=list, item=str, choices=RUNTIMES, metavar="NAME")
    warmup: float = option(1.0, "warm-up seconds per model and batch", kind=float, minimum=0, metavar="S")
    min_time: float = option(3.0, "measure at least S seconds per model and batch", kind=float, minimum=0,
                             metavar="S")
    min_iters: int = option(20, "and at least N runs per model and batch", kind=int, minimum=1)
    torch: bool = option(False, "also time the PyTorch modules in eager mode on CPU, rebuilt from each file's "
                         "metadata (random weights; a second table)", kind=bool)
    md: str | None = option(None, "write the table as Markdown", metavar="OUT.md", group="output", recipe=False)
    json_out: str | None = option(None, "write the full result as JSON", metavar="OUT.json", group="output",
                                  recipe=False)
    plot: str | None = option(None, "draw median latency (p10-p90 bars) against MACs per batch",
                              metavar="OUT.png", group="output", recipe=False)
    force: bool = option(False, "overwrite existing output files", kind=bool, group="output", recipe=False)
