"""The compression report: one typed object for both granularities, written as JSON beside the
ONNX file and (without timings) into its metadata.

Readers never branch on the granularity for what both have: `achieved.macs` is the pruned
MACs (weight granularity: effective MACs, counting non-zero weights), `runtime_macs` what one
inference of the exported model really costs, `blocks[i].attention_kept` / `mlp_kept` the
kept fraction per block. `data_config` is the model's preprocessing, stored once.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import UserError

REPORT_FORMAT = 2
"""Bumped when a field changes meaning; `Report.from_dict` refuses other formats."""


@dataclass
class Counts:
    """A MACs / params breakdown: totals, per stage and per module kind (`prune.costs` counts
    them; the report's `original` and `pruned` hold one each)."""

    macs: int
    params: int
    macs_by_stage: dict[str, int] = field(default_factory=dict)
    macs_by_module: dict[str, int] = field(default_factory=dict)
    params_by_stage: dict[str, int] = field(default_factory=dict)
    params_by_module: dict[str, int] = field(default_factory=dict)


@dataclass
class Source:
    """The unpruned model: name as resolved, family, where its weights came from."""

    model: str
    family: str
    weights: str
    random_init: bool
    model_kwargs: dict = field(default_factory=dict)

    @classmethod
    def of(cls, loaded) -> "Source":
        """The source section of a `models.LoadedModel`."""
        return cls(model=loaded.name, family=loaded.adapter.family, weights=loaded.weights,
                   random_init=loaded.random_init, model_kwargs=loaded.model_kwargs)


@dataclass
class Architecture:
    """How to rebuild the pruned module (`prune.replay.build_architecture`): the source
    model and its constructor options, and the kept widths (None: unpruned)."""

    source_model: str
    model_kwargs: dict = field(default_factory=dict)
    heads: list[int] | None = None
    mlp_widths: list[int] | None = None
    residual_widths: list[int] | None = None


@dataclass
class Target:
    flops: str | None = None
    params: str | None = None
    """Weight granularity: fraction of the prunable weights to keep."""
    macs: int | None = None
    ratio: float | None = None


@dataclass
class Achieved:
    macs: int
    """Pruned MACs (weight granularity: effective MACs on non-zero weights)."""
    ratio: float
    params: int
    """Parameters (weight granularity: non-zero parameters)."""
    params_ratio: float
    on_target: bool | None = None
    kept_prunable_fraction: float | None = None


@dataclass
class BlockRow:
    name: str
    stage: int
    heads_before: int
    heads: int
    mlp_width_before: int
    mlp_width: int
    attention_kept: float
    """Kept fraction of the attention: heads (structured) or non-zero qkv / proj weights."""
    mlp_kept: float
    kept_heads: list[int] | None = None
    kept_per_layer: dict[str, float] | None = None
    """Weight granularity: non-zero fraction of qkv, proj, fc1, fc2."""


@dataclass
class ResidualRow:
    stage: int
    width_before: int
    width: int


@dataclass
class OnnxInfo:
    path: str
    opset: int
    dynamic_batch: bool
    parity_max_abs_diff: float
    bytes: int
    graph: str = "plain"
    """'lean' (models/lean.py) or 'plain' (the model's own forward traced)."""


@dataclass
class Report:
    package_version: str
    granularity: str
    """'structured' or 'weight'."""
    source: Source
    data_config: dict
    """timm's format: input_size (C, H, W), mean, std, interpolation, crop_pct, crop_mode."""
    recipe: dict
    """The options of the run (`options.Options.recipe`): `--config` reproduces it."""
    architecture: Architecture
    criterion: str
    """The name typed (`--criterion`): a score, or a name for a score and a policy."""
    criterion_summary: str
    score: str | None = field(default=None, kw_only=True)
    """The score the criterion ranks by (None: weight granularity)."""
    policy: str | None = field(default=None, kw_only=True)
    """The selection policy that turned the scores into the plan (None: weight granularity)."""
    score_mode: str | None
    """None where the criterion does not use it."""
    target: Target
    achieved: Achieved
    original: Counts
    pruned: Counts
    runtime_macs: int
    """MACs of one inference of the exported model (weight granularity: the dense MACs)."""
    blocks: list[BlockRow]
    residual: list[ResidualRow] | None
    selection: dict
    """Structured: policy, removed weight fraction and threshold per module; weight: per
    module weights, removed, kept fraction, threshold."""
    verification: dict
    notes: list[str]
    format: int = REPORT_FORMAT
    onnx: OnnxInfo | None = None
    pruned_checkpoint: str | None = None
    plot: str | None = None
    finetune: dict | None = None
    iterative: dict | None = None
    """`dimap-finetune --steps K`: each round's MACs target and result (`pipeline.prune_in_rounds`)."""
    recovery: dict | None = None
    """One-shot recovery from calibration images (`recover.oneshot.RecoveryReport.to_dict`)."""
    quantization: dict | None = None
    """`--quantize`: scheme, settings, calibration and the float-vs-INT8 check (`deploy.quantize`)."""
    latency: dict | None = None
    """`--latency R`: target, prediction, and the per-block latency model used (`prune.latency`)."""
    accuracy_estimate: dict | None = None
    """With `--calib-data`: the pruned model against the dense one on held-out train images
    (`deploy.evaluate.agreement`): top-1 agreement, relative logit error, top-1 of each."""
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.data_config["input_size"])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def metadata(self) -> dict:
        """What the ONNX file stores: everything but the run's timings and the file's own entry."""
        data = self.to_dict()
        data.pop("timings_s")
        data.pop("onnx")
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Report":
        """The report `to_dict` wrote; UserError for another format."""
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
            version = data.get("package_version", "?") if isinstance(data, dict) else "?"
            raise UserError(f"report format {data.get('format') if isinstance(data, dict) else '?'} "
                            f"(dimap-struct {version}) is not the format {REPORT_FORMAT} this version reads; "
                            "compress the model again")
        data = dict(data)
        nested = {"source": Source, "architecture": Architecture, "target": Target, "achieved": Achieved,
                  "original": Counts, "pruned": Counts}
        for key, kind in nested.items():
            data[key] = kind(**data[key])
        data["blocks"] = [BlockRow(**b) for b in data["blocks"]]
        if data.get("residual") is not None:
            data["residual"] = [ResidualRow(**r) for r in data["residual"]]
        if data.get("onnx") is not None:
            data["onnx"] = OnnxInfo(**data["onnx"])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def plain_config(config: dict) -> dict:
    """A data config with tuples as lists (as JSON gives it back)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}


MACS_NOTE = ("MACs are multiply-accumulates (the DIMAP paper's 'FLOPs' are MACs): Linear and Conv layers plus "
             "the window-attention matmuls q.k^T and attn.v; norms, softmax and biases are not counted.")
RANDOM_WEIGHTS_NOTE = "Weights are a random initialisation, not pretrained: the pruned model's accuracy means nothing."
