"""The family-adapter contract: where heads, MLPs and per-head tensors live in one model family.

A family adapter is the only code that knows a model family's module layout. The generic
pipeline (scoring, selection, costs, surgery, verification) works on the `BlockSite` views it
returns, so supporting a new Swin family means adding one adapter and registering it.
"""
from __future__ import annotations

import difflib
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ...errors import UserError
from ..lean import LeanUnsupported

MAX_LOGIT_SCALE = math.log(100.0)
"""Swin v2's cosine attention clamps each head's learned log-temperature here (timm and
torchvision alike); the adapters' attention forwards do the same."""


@dataclass
class PerHeadTensor:
    """A parameter (or buffer) holding `per_head_size` consecutive entries per attention head
    along `axis`, heads in order: head h owns entries h*s .. (h+1)*s-1 (s = per_head_size).
    E.g. a relative-position bias table of shape (T, heads): axis 1, size 1; Swin v2's
    `q_bias` of shape (heads*d,): axis 0, size d. Buffers are cut with their head but are
    not counted as parameters."""

    module: nn.Module
    name: str
    axis: int
    per_head_size: int = 1

    @property
    def tensor(self) -> torch.Tensor:
        return getattr(self.module, self.name)

    def indices(self, heads: list[int]) -> list[int]:
        """Positions along `axis` owned by `heads`."""
        s = self.per_head_size
        return [h * s + i for h in heads for i in range(s)]


@dataclass
class AttentionSite:
    """One windowed multi-head attention.

    `qkv` is a fused projection whose output rows are laid out as (3, num_heads, head_dim):
    row t*H*d + h*d + i is element i of head h of q (t=0), k (t=1) or v (t=2). Families with
    three projections (Hugging Face) give `qkv=None` and `separate=(q, k, v)`, each with rows
    laid out (num_heads, head_dim); together they are the same layer as a fused qkv (DIMAP
    scores them as one). `proj` reads the concatenated heads, so its input columns are laid
    out as (num_heads, head_dim).
    """

    module: nn.Module
    qkv: nn.Linear | None
    proj: nn.Linear
    num_heads: int
    head_dim: int
    window_area: int
    per_head: list[PerHeadTensor] = field(default_factory=list)
    per_head_layers: list[nn.Linear] = field(default_factory=list)
    """Linear layers with one output row (and bias entry) per head, e.g. the last layer of
    Swin v2's position-bias MLP: cut, zeroed and counted (MACs and params) with their head."""
    separate: tuple[nn.Linear, nn.Linear, nn.Linear] | None = None

    @property
    def projections(self) -> list[tuple[nn.Linear, int]]:
        """(layer, parts) for the input projections: each layer's output rows are laid out
        (parts, num_heads, head_dim)."""
        return [(self.qkv, 3)] if self.qkv is not None else [(layer, 1) for layer in self.separate]

    def projection_rows(self, heads: list[int]) -> list[tuple[nn.Linear, list[int]]]:
        """For each input projection, its output rows that belong to `heads`."""
        h, d = self.num_heads, self.head_dim
        return [(layer, [t * h * d + head * d + i for t in range(parts) for head in heads for i in range(d)])
                for layer, parts in self.projections]

    @property
    def in_features(self) -> int:
        return self.projections[0][0].in_features

    def qkv_tensor(self, grad: bool = False) -> torch.Tensor:
        """The fused (3*H*d, C) weight, or its gradient: `qkv`'s, or q, k, v stacked."""
        tensors = [layer.weight.grad if grad else layer.weight.detach() for layer, _ in self.projections]
        return tensors[0] if len(tensors) == 1 else torch.cat(tensors)

    def qkv_bias(self) -> torch.Tensor | None:
        """The fused (3*H*d,) bias as the forward applies it (a missing part is zero), or None."""
        layers = [layer for layer, _ in self.projections]
        if all(layer.bias is None for layer in layers):
            return None
        return torch.cat([layer.bias.detach() if layer.bias is not None else
                          torch.zeros(layer.out_features, dtype=layer.weight.dtype, device=layer.weight.device)
                          for layer in layers])


def head_width(module: nn.Module, rows: int, heads: int) -> int:
    """Width of one head of `module` from `rows` projection rows per part: rows // heads, or,
    once every head is gone, the width `FamilyAdapter.remove_attention` recorded."""
    return rows // heads if heads else module.removed_head_dim


def is_headless(module: nn.Module) -> bool:
    """Whether `remove_attention` removed every head of this attention module."""
    return isinstance(module, HeadlessAttention)


class HeadlessAttention:
    """Mixin for an attention module whose heads were all removed (`--min-heads 0`). A Swin
    block adds its attention branch to the residual stream, so with no head left the branch is
    its output projection's bias, the same for every token: this forward returns that bias at
    the input's shape (the projection of zero features), and the block around it is untouched.
    The zero-width projections stay, so the state dict keeps one layout per plan."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.proj(x[..., :0])


_HEADLESS: dict[tuple[type, type], type] = {}


def make_headless(module: nn.Module, mixin: type = HeadlessAttention) -> None:
    """Give `module` a subclass of its class with `mixin`'s forward (one class per pair, cached)."""
    cls = type(module)
    if not issubclass(cls, HeadlessAttention):
        key = (cls, mixin)
        if key not in _HEADLESS:
            _HEADLESS[key] = type(f"Headless{cls.__name__}", (mixin, cls), {"__module__": __name__})
        module.__class__ = _HEADLESS[key]


@dataclass
class MlpSite:
    """A two-layer MLP: hidden channel j is row j of `fc1` (and its bias) and column j of `fc2`."""

    fc1: nn.Linear
    fc2: nn.Linear

    @property
    def width(self) -> int:
        return self.fc1.out_features


@dataclass
class BlockSite:
    """One transformer block: its qualified name, stage index, attention and MLP."""

    name: str
    stage: int
    attn: AttentionSite
    mlp: MlpSite


@dataclass
class ResidualSite:
    """Every tensor indexed by the residual (embedding) channels of one stage, width `width`.

    producers write the stream (Linear output rows / Conv2d output channels, with biases);
    consumers read it (Linear input columns); norms are LayerNorms over it (entries);
    interleaved consumers read `groups` concatenated copies of it (Linear input columns or
    LayerNorm entries k*width + c for k < groups, e.g. the next stage's 2x2 patch merging);
    per_channel are other tensors with one entry per channel along `axis`.
    """

    stage: int
    width: int
    producers: list[nn.Module]
    consumers: list[nn.Linear]
    norms: list[nn.LayerNorm]
    interleaved: list[tuple[nn.Module, int]] = field(default_factory=list)
    per_channel: list[PerHeadTensor] = field(default_factory=list)


class FamilyAdapter(ABC):
    """Knows one model family: its names, how to build it, and where its heads, MLPs and
    per-head tensors live. Subclasses register themselves with `register_adapter`; the first
    registered family that claims a name or a model wins, so narrower families register first."""

    family: ClassVar[str]
    """Human-readable family name, e.g. 'timm Swin v1 (swin_transformer)'."""
    prunable_attention: ClassVar[dict[type, type]] = {}
    """Attention classes whose forward cannot run with fewer heads, each mapped to a subclass
    with the same parameters and state-dict keys whose forward can; the constructor gives every
    such module of the model its prunable class."""

    def __init__(self, model: nn.Module):
        self.model = model
        for module in model.modules():
            prunable = self.prunable_attention.get(type(module))
            if prunable is not None:
                module.__class__ = prunable

    # -- names and building (class level: no model yet) -----------------------------------
    @classmethod
    @abstractmethod
    def resolve_name(cls, name: str) -> str | None:
        """The canonical name (aliases resolved, a pretrained tag kept) if `name` belongs to
        this family, else None."""

    @classmethod
    def known_names(cls) -> list[str]:
        """Names offered as suggestions for a misspelt model name."""
        return []

    @classmethod
    def foreign_name(cls, name: str) -> bool:
        """True if `name` is a model of this family's library that no adapter supports (e.g. a
        timm ResNet): the user gets 'not a supported model' instead of 'unknown model'."""
        return False

    @classmethod
    @abstractmethod
    def build(cls, name: str, *, pretrained: bool, **model_kwargs) -> nn.Module:
        """Build the model `name` (canonical) with its pretrained weights, or randomly
        initialised from the global RNG. UserError when the weights cannot be fetched."""

    @classmethod
    def weights_description(cls, model: nn.Module, name: str) -> str:
        """Where the pretrained weights of a model `build` made came from, for the report."""
        return "pretrained"

    @classmethod
    @abstractmethod
    def matches(cls, model: nn.Module) -> bool:
        """True if an instantiated model belongs to this family."""

    @classmethod
    def prepare(cls, model: nn.Module) -> nn.Module:
        """The module the pipeline works on for a model of this family (an images -> tensor
        module; e.g. a wrapper around a model whose forward returns a richer object). The
        default is the model itself; must be idempotent."""
        return model

    @classmethod
    def default_name(cls, model: nn.Module) -> str:
        """The name of a model given in memory (Python API), used to rebuild it from a pruned
        checkpoint: timm's architecture name when the model carries one, else its class."""
        return getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__

    # -- the instantiated model ------------------------------------------------------------
    @property
    @abstractmethod
    def num_classes(self) -> int:
        """Outputs of the classifier."""

    @abstractmethod
    def blocks(self) -> list[BlockSite]:
        """Every prunable block, in forward order."""

    @abstractmethod
    def stage_of(self, module_name: str) -> int | None:
        """Stage index a non-block module belongs to (for per-stage reports), None if global."""

    def set_num_heads(self, site: AttentionSite, num_heads: int) -> None:
        """Update the attention module's bookkeeping after heads were cut. The default sets
        `num_heads`, all that attention needs when its forward infers the head width from qkv
        and its scale (or per-head temperature) is not derived from the head count."""
        site.module.num_heads = num_heads

    def remove_attention(self, site: AttentionSite) -> None:
        """After every head of `site` was cut: its module's forward becomes the branch's constant
        output (`HeadlessAttention`). The default suits an attention module that applies its own
        output projection `proj` and returns a tensor shaped like its input."""
        make_headless(site.module)

    def residual_sites(self) -> list[ResidualSite]:
        """Residual channel groups per stage, for `--prune-embed`. Families that do not
        declare them cannot prune residual channels."""
        raise NotImplementedError(f"{self.family} does not support residual-channel pruning yet")

    def set_residual_width(self, stage: int, width: int) -> None:
        """Update bookkeeping attributes (dims, num_features) after a stage's stream was cut."""

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a checkpoint in the family's other published layouts to this model's keys."""
        return state_dict

    block_key: ClassVar[str | None] = None
    r"""Regex matching one state-dict key per block, with groups (stage, block), e.g.
    `r"layers\.(\d+)\.blocks\.(\d+)\.norm1\.weight$"`; `describe_state_dict` counts them."""
    width_key: ClassVar[str | None] = None
    """The state-dict key whose first dimension is the embedding width."""

    @classmethod
    def describe_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> str | None:
        """The architecture a state dict holds, in words ('depths (2, 2, 6, 2), width 96'), to
        explain a checkpoint that does not fit; None if the keys are not this family's."""
        if cls.block_key is None:
            return None
        stages: dict[int, set[int]] = {}
        for key in state_dict:
            found = re.search(cls.block_key, key)
            if found:
                stages.setdefault(int(found[1]), set()).add(int(found[2]))
        if not stages:
            return None
        text = f"depths {tuple(len(stages[s]) for s in sorted(stages))}"
        width = state_dict.get(cls.width_key) if cls.width_key else None
        return text if width is None else f"{text}, width {width.shape[0]}"

    @abstractmethod
    def data_config(self) -> dict:
        """Preprocessing in timm's format (input_size, mean, std, interpolation, crop_pct,
        crop_mode)."""

    def build_kwargs(self) -> dict:
        """Extra keyword arguments to recreate a model like this one (e.g. num_classes)."""
        return {}

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters fine-tuning leaves undecayed besides 1-D ones: the position
        terms (bias tables, Swin v2's logit_scale and position-bias MLP). The default is the
        model's own `no_weight_decay()` (timm's convention), else none."""
        own = getattr(self.model, "no_weight_decay", None)
        return set(own()) if callable(own) else set()

    def lean_spec(self, input_size: tuple[int, int, int]):
        """The model as a `models.lean.LeanSpec` for images of `input_size` (C, H, W), the
        modules shared with the model. Raises `models.lean.LeanUnsupported` when the family or
        this size has no lean form."""
        raise LeanUnsupported(f"{self.family} has no lean export")


def parameters_named(model: nn.Module, keys: tuple[str, ...]) -> set[str]:
    """Names of `model`'s parameters that contain any of `keys` (for `no_weight_decay`)."""
    return {name for name, _ in model.named_parameters() if any(key in name for key in keys)}


_REGISTRY: list[type[FamilyAdapter]] = []


def register_adapter(cls: type[FamilyAdapter]) -> type[FamilyAdapter]:
    """Add a family; a subclass of a registered family goes before it (it is the narrower one)."""
    position = next((i for i, other in enumerate(_REGISTRY) if issubclass(cls, other)), len(_REGISTRY))
    _REGISTRY.insert(position, cls)
    return cls


def supported_families() -> str:
    return ", ".join(cls.family for cls in _REGISTRY)


def fetch_error(name: str, err: Exception) -> UserError:
    """One line for a failed download of pretrained weights, naming the ways around it."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    first = first.split(". ")[0].rstrip(".")  # first sentence: the Hub's messages run long
    return UserError(f"could not fetch pretrained weights for '{name}' ({first[:200]}); "
                     "use --checkpoint PATH for local weights or --no-pretrained for random init")


def family_for_name(name: str) -> tuple[type[FamilyAdapter], str] | None:
    """The family that claims `name`, and the canonical name; None if no family does."""
    for cls in _REGISTRY:
        canonical = cls.resolve_name(name)
        if canonical is not None:
            return cls, canonical
    return None


def suggestions(name: str) -> list[str]:
    """Known names close to `name`, over every family."""
    known = [n for cls in _REGISTRY for n in cls.known_names()]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    # a family's own spelling of the same base name (e.g. torchvision:swin_v2_t for swin_v2_t)
    prefixed = [n for n in known if n.endswith(":" + name) and n not in close]
    return prefixed + close


def is_foreign_name(name: str) -> bool:
    return any(cls.foreign_name(name) for cls in _REGISTRY)


def adapter_for_model(model: nn.Module) -> FamilyAdapter | None:
    """The adapter of `model`'s family, wrapping `cls.prepare(model)` (its `.model` is the
    module to work on), or None for an unsupported model."""
    cls = next((cls for cls in _REGISTRY if cls.matches(model)), None)
    return cls(cls.prepare(model)) if cls else None
