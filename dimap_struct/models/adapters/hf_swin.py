"""Adapter for Hugging Face transformers' Swin and Swin v2 (`SwinModel`,
`SwinForImageClassification`, `Swinv2Model`, `Swinv2ForImageClassification`), named
'hf:<hub id>' (from the Hugging Face cache; HF_HUB_OFFLINE honoured) or 'hf:<directory>' (a
`save_pretrained` directory); an in-memory transformers model goes through the Python API.

The pipeline needs an image -> tensor module, so the transformers model is wrapped in
`HfImageModel` (`.hf` is the transformers model itself, whose own forward runs the pruned
weights). Layout (transformers 5): `<backbone>.embeddings` (patch projection Conv2d, LayerNorm,
optional absolute position embeddings), `<backbone>.encoder.layers[s]` with `blocks` and, at the
*end* of every stage but the last, a `downsample` (patch merging, 2x2 neighbours in the order
(0,0), (1,0), (0,1), (1,1)); `<backbone>.layernorm`, then mean pooling and `classifier`.

- Swin (`SwinLayer`): pre-norm; `attention.q_proj / k_proj / v_proj` (separate Linear layers,
  rows (H, d) each), `attention.o_proj`, `attention.relative_position_bias.
  relative_position_bias_table` ((2W-1)^2, H); `mlp.fc1 / fc2`. Older transformers (4.x) keep
  `attention.self.query / key / value`, `attention.output.dense`, `intermediate.dense`,
  `output.dense`; both layouts are read.
- Swin v2 (`Swinv2Layer`): post-norm; `attention.self.query / key (no bias) / value`,
  `logit_scale` (H, 1, 1), `continuous_position_bias_mlp` (its last Linear has one row per head);
  `attention.output.dense`; `intermediate.dense`, `output.dense`; merging is reduction then norm.

Head bookkeeping: `num_attention_heads` and `all_head_size` are updated after a cut (the v2
forward reshapes with them), so transformers' own forward runs the pruned model at any batch.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from torch import nn

from ...errors import UserError
from ...untrusted import check_tensors
from ..lean import LeanAttention, LeanBlockSpec, LeanMergeSpec, LeanSpec, LeanStageSpec, LeanUnsupported, headless
from .base import (MAX_LOGIT_SCALE, AttentionSite, BlockSite, FamilyAdapter, HeadlessAttention, MlpSite,
                   PerHeadTensor, ResidualSite, head_width, is_headless, make_headless, parameters_named,
                   register_adapter)
from .hub import hub_session

PREFIX = "hf:"
CLASSES = ("SwinModel", "SwinForImageClassification", "Swinv2Model", "Swinv2ForImageClassification")
INSTALL = "pip install 'dimap-struct[hf]' (or pip install transformers)"
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _transformers():
    try:  # deferred: an optional dependency (the hf extra), loaded only for hf: models
        import transformers
    except ImportError:
        raise UserError(f"hf: models need the transformers package: {INSTALL}") from None
    return transformers


class HfImageModel(nn.Module):
    """A transformers Swin as images (B, C, H, W) -> logits (classification) or the pooled
    features (base models). `preprocessing` holds the image processor's settings, if known."""

    def __init__(self, hf: nn.Module, preprocessing: dict | None = None):
        super().__init__()
        self.hf = hf
        self.preprocessing = preprocessing or {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.hf(pixel_values=x)
        if getattr(out, "logits", None) is not None:
            return out.logits
        if out.pooler_output is not None:
            return out.pooler_output.flatten(1)
        return out.last_hidden_state.mean(dim=1)


def _is_hf_swin(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.") and type(model).__name__ in CLASSES


@register_adapter
class HfSwinAdapter(FamilyAdapter):
    family = "Hugging Face Swin / Swin v2 (hf:<hub id or save_pretrained directory>: " + ", ".join(CLASSES) + ")"
    block_key = r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.weight$"
    width_key = "embeddings.patch_embeddings.projection.weight"

    # -- names and building -------------------------------------------------------------------
    @classmethod
    def resolve_name(cls, name: str) -> str | None:
        return name if name.startswith(PREFIX) and len(name) > len(PREFIX) else None

    @classmethod
    def build(cls, name: str, *, pretrained: bool, hf_config: dict | None = None, hf_class: str | None = None,
              **model_kwargs) -> nn.Module:
        """From a config dict (`hf_config`, rebuilding a saved architecture), else from the hub
        id or directory in `name`: its weights if `pretrained`, else a random initialisation."""
        transformers = _transformers()
        if hf_config is not None:
            config_class = transformers.AutoConfig.for_model(hf_config["model_type"]).__class__
            config = config_class.from_dict(hf_config)
            return HfImageModel(getattr(transformers, hf_class or _class_for(config))(config))
        target = name[len(PREFIX):]
        config = _read_config(transformers, target)
        model_class = getattr(transformers, _class_for(config))
        with hub_session():
            try:
                hf = model_class.from_pretrained(target) if pretrained else model_class(config)
            except OSError as err:
                raise _fetch_error(target, err) from err
            except Exception as err:  # a damaged weights file: safetensors and torch raise their own types
                if not Path(target).exists():
                    raise
                raise _fetch_error(target, err) from err
        if pretrained:
            check_tensors(hf.state_dict(), f"the weights in {target}")
        return HfImageModel(hf, _preprocessing(transformers, target))

    @classmethod
    def weights_description(cls, model: nn.Module, name: str) -> str:
        return f"pretrained ({name[len(PREFIX):]}, via transformers)"

    def no_weight_decay(self) -> set[str]:
        return parameters_named(self.model, ("relative_position_bias_table", "logit_scale",
                                             "continuous_position_bias_mlp"))

    @classmethod
    def prepare(cls, model: nn.Module) -> nn.Module:
        return model if isinstance(model, HfImageModel) else HfImageModel(model)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return _is_hf_swin(model.hf if isinstance(model, HfImageModel) else model)

    @classmethod
    def default_name(cls, model: nn.Module) -> str:
        hf = model.hf if isinstance(model, HfImageModel) else model
        return PREFIX + (getattr(hf.config, "_name_or_path", "") or type(hf).__name__)

    # -- the instantiated model ---------------------------------------------------------------
    @property
    def hf(self) -> nn.Module:
        return self.model.hf

    @property
    def backbone(self) -> nn.Module:
        hf = self.hf
        return getattr(hf, "swin", None) or getattr(hf, "swinv2", None) or hf

    @property
    def v2(self) -> bool:
        return self.hf.config.model_type == "swinv2"

    @property
    def num_classes(self) -> int | None:
        return self.hf.config.num_labels if hasattr(self.hf, "classifier") else None

    def _stages(self) -> nn.ModuleList:
        return self.backbone.encoder.layers

    def _prefix(self) -> str:
        return "hf." + ("" if self.backbone is self.hf else ("swinv2." if self.v2 else "swin."))

    def blocks(self) -> list[BlockSite]:
        sites = []
        for s, stage in enumerate(self._stages()):
            for b, layer in enumerate(stage.blocks):
                module, (q, k, v), out = _attention_parts(layer)
                heads = _heads(module)
                d = head_width(module, q.out_features, heads)
                if self.v2:
                    per_head = [PerHeadTensor(module, "logit_scale", axis=0)]
                    per_head_layers = [module.continuous_position_bias_mlp[-1]]
                else:
                    table = getattr(module, "relative_position_bias", module)
                    per_head = [PerHeadTensor(table, "relative_position_bias_table", axis=1)]
                    per_head_layers = []
                fc1, fc2 = _mlp_parts(layer)
                sites.append(BlockSite(
                    name=f"{self._prefix()}encoder.layers.{s}.blocks.{b}", stage=s,
                    attn=AttentionSite(module=module, qkv=None, proj=out, num_heads=heads, head_dim=d,
                                       window_area=_window(layer) ** 2, per_head=per_head,
                                       per_head_layers=per_head_layers, separate=(q, k, v)),
                    mlp=MlpSite(fc1=fc1, fc2=fc2)))
        return sites

    def remove_attention(self, site: AttentionSite) -> None:
        make_headless(site.module, _HeadlessHfAttention)

    def set_num_heads(self, site: AttentionSite, num_heads: int) -> None:
        module = site.module
        module.num_attention_heads = num_heads
        if hasattr(module, "all_head_size"):
            module.all_head_size = num_heads * module.attention_head_size

    def stage_of(self, module_name: str) -> int | None:
        if ".embeddings." in f".{module_name}.":
            return 0
        match = re.search(r"encoder\.layers\.(\d+)\.", module_name)
        return int(match.group(1)) if match else None

    def residual_sites(self) -> list[ResidualSite]:
        # Stage s's stream is written by the patch projection (s = 0) or by stage s-1's merging,
        # which sits at the end of stage s-1 here; stage s's own merging reads it as 2x2
        # neighbours concatenated channel-last (input k*C + c is channel c).
        if not isinstance(getattr(self.hf, "classifier", None), nn.Linear):
            raise NotImplementedError(f"{type(self.hf).__name__} returns its last stage's features, whose width "
                                      "residual pruning would change; prune the *ForImageClassification model, or "
                                      "heads and MLP channels only")
        bb, sites = self.backbone, []
        stages = list(self._stages())
        for s, stage in enumerate(stages):
            producers = [bb.embeddings.patch_embeddings.projection] if s == 0 else [stages[s - 1].downsample.reduction]
            norms = [bb.embeddings.norm] if s == 0 else ([stages[s - 1].downsample.norm] if self.v2 else [])
            per_channel = []
            if s == 0:
                for name in ("position_embeddings", "mask_token"):
                    if getattr(bb.embeddings, name, None) is not None:
                        per_channel.append(PerHeadTensor(bb.embeddings, name, axis=2))
            consumers = []
            for layer in stage.blocks:
                _, (q, k, v), out = _attention_parts(layer)
                fc1, fc2 = _mlp_parts(layer)
                producers += [out, fc2]
                consumers += [q, k, v, fc1]
                norms += [layer.layernorm_before, layer.layernorm_after]
            interleaved = []
            if stage.downsample is not None:
                merging = stage.downsample
                interleaved = [(merging.reduction, 4)] if self.v2 else [(merging.norm, 4), (merging.reduction, 4)]
            else:
                norms.append(bb.layernorm)
                if hasattr(self.hf, "classifier") and isinstance(self.hf.classifier, nn.Linear):
                    consumers.append(self.hf.classifier)
            width = _attention_parts(stage.blocks[0])[1][0].in_features
            sites.append(ResidualSite(s, width, producers, consumers, norms, interleaved, per_channel))
        return sites

    def set_residual_width(self, stage: int, width: int) -> None:
        stages = self._stages()
        stages[stage].dim = width
        if stage == len(stages) - 1:
            self.backbone.num_features = width

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # a transformers checkpoint (save_pretrained's model.safetensors) has no wrapper prefix
        if any(key.startswith("hf.") for key in state_dict):
            return state_dict
        return {f"hf.{key}": value for key, value in state_dict.items()}

    def data_config(self) -> dict:
        """The image processor's mean, std, size and resampling when known (a hub id or a
        directory with preprocessor_config.json), else the config's image size with ImageNet's
        mean and std, bicubic, no crop."""
        config = self.hf.config
        pre = self.model.preprocessing
        size = pre.get("size") or (config.image_size, config.image_size)
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        return {"input_size": (config.num_channels, *size), "mean": tuple(pre.get("mean", IMAGENET[0])),
                "std": tuple(pre.get("std", IMAGENET[1])), "interpolation": pre.get("interpolation", "bicubic"),
                "crop_pct": pre.get("crop_pct", 1.0), "crop_mode": pre.get("crop_mode", "center")}

    def build_kwargs(self) -> dict:
        return {"hf_config": json.loads(self.hf.config.to_json_string()), "hf_class": type(self.hf).__name__}

    # -- lean export ----------------------------------------------------------------------------
    def lean_spec(self, input_size: tuple[int, int, int]):
        bb = self.backbone
        patch = bb.embeddings.patch_embeddings.patch_size
        patch = patch if isinstance(patch, (tuple, list)) else (patch, patch)
        grid = first = (input_size[1] // patch[0], input_size[2] // patch[1])
        if input_size[1] % patch[0] or input_size[2] % patch[1]:
            raise LeanUnsupported("the image size is not a multiple of the patch size: the model pads")
        stages, previous = [], None
        for stage in self._stages():
            merge = None
            if previous is not None and previous.downsample is not None:
                merging = previous.downsample
                merge = LeanMergeSpec(merging.norm, merging.reduction, norm_first=not self.v2)
                grid = (grid[0] // 2, grid[1] // 2)
            blocks = []
            for layer in stage.blocks:
                if tuple(layer.input_resolution) != grid:
                    raise LeanUnsupported(f"blocks built for a {tuple(layer.input_resolution)} token map; the input "
                                          f"gives {grid}")
                window, shift = _window(layer), layer.shift_size
                if min(grid) <= window:  # transformers drops the shift and shrinks the window
                    window, shift = min(grid), 0
                module, (q, k, v), out = _attention_parts(layer)
                site = AttentionSite(module, None, out, _heads(module), head_width(module, q.out_features, _heads(module)),
                                     window * window, separate=(q, k, v))
                fc1, fc2 = _mlp_parts(layer)
                mlp = layer.mlp if hasattr(layer, "mlp") else nn.Sequential(layer.intermediate, layer.output)
                blocks.append(LeanBlockSpec(self._lean_attention(module, site, window, out, LeanAttention),
                                            layer.layernorm_before, layer.layernorm_after, mlp, (window, window),
                                            (shift, shift), post_norm=self.v2))
            stages.append(LeanStageSpec(merge, blocks))
            previous = stage
        stem = _HfStem(bb.embeddings, first)
        classifier = self.hf.classifier if hasattr(self.hf, "classifier") else nn.Identity()
        return LeanSpec(stem, first, stages, bb.layernorm, classifier)

    def _lean_attention(self, module, site: AttentionSite, window: int, out, lean_attention):
        if is_headless(module):
            return headless(out)
        weight, bias = site.qkv_tensor(), site.qkv_bias()
        heads = site.num_heads
        if not self.v2:
            table = getattr(module, "relative_position_bias", None)
            if table is not None:
                position = table()[0]
            else:  # transformers 4.x layout
                n = window * window
                position = module.relative_position_bias_table[module.relative_position_index.view(-1)].view(
                    n, n, -1).permute(2, 0, 1)
            scale = getattr(module, "scaling", None) or site.head_dim ** -0.5
            return lean_attention(weight, bias, heads, position, out, scale=scale)
        n = window * window
        table = module.continuous_position_bias_mlp(module.relative_coords_table).view(-1, heads)
        position = table[module.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        # transformers' Swinv2SelfAttention adds the shift mask twice (-200 between regions): so do we
        return lean_attention(weight, bias, heads, 16 * torch.sigmoid(position), out,
                              temperature=torch.clamp(module.logit_scale, max=MAX_LOGIT_SCALE).exp().flatten(),
                              mask_scale=2.0)


class _HfStem(nn.Module):
    """transformers' embeddings (patch projection, norm, position embeddings) as (B, H, W, C)."""

    def __init__(self, embeddings: nn.Module, grid: tuple[int, int]):
        super().__init__()
        self.embeddings, self.grid = embeddings, grid
        self.width = embeddings.patch_embeddings.projection.out_channels  # static: no Shape node in the graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embeddings(x)[0].reshape(-1, self.grid[0], self.grid[1], self.width)


class _HeadlessHfAttention(HeadlessAttention):
    """transformers' attention returns a tuple: in version 5 the module holds the output
    projection `o_proj` and returns (output, weights); in 4.x `self` returns (context,) and the
    sibling output projection adds the bias."""

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if hasattr(self, "o_proj"):
            return self.o_proj(x[..., :0]), None
        return x[..., :0], None


def _attention_parts(layer: nn.Module) -> tuple[nn.Module, tuple[nn.Linear, nn.Linear, nn.Linear], nn.Linear]:
    """(module holding the heads' bookkeeping, (q, k, v), output projection) of one block."""
    attention = layer.attention
    if hasattr(attention, "q_proj"):  # transformers 5 Swin
        return attention, (attention.q_proj, attention.k_proj, attention.v_proj), attention.o_proj
    inner = attention.self
    return inner, (inner.query, inner.key, inner.value), attention.output.dense


def _mlp_parts(layer: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    if hasattr(layer, "mlp"):
        return layer.mlp.fc1, layer.mlp.fc2
    return layer.intermediate.dense, layer.output.dense


def _heads(module: nn.Module) -> int:
    return module.num_attention_heads


def _window(layer: nn.Module) -> int:
    window = layer.window_size
    return int(window[0] if isinstance(window, (tuple, list)) else window)


def _class_for(config) -> str:
    if config.model_type not in ("swin", "swinv2"):
        raise UserError(f"a transformers '{config.model_type}' model is not supported; supported classes: "
                        f"{', '.join(CLASSES)}")
    stem = "Swin" if config.model_type == "swin" else "Swinv2"
    architectures = getattr(config, "architectures", None) or []
    classify = any(a.endswith("ForImageClassification") for a in architectures) or (
        not architectures and getattr(config, "num_labels", 0) > 0 and config.id2label)
    for arch in architectures:
        if arch not in CLASSES:
            raise UserError(f"transformers architecture {arch} is not supported; supported classes: "
                            f"{', '.join(CLASSES)}")
    return stem + ("ForImageClassification" if classify else "Model")


def _read_config(transformers, target: str):
    path = Path(target)
    if not os.path.lexists(target):  # then a hub id: 'owner/name', at most 96 characters
        try:
            validate_repo_id(target)
        except HFValidationError as err:
            raise UserError(f"hf:{target[:60]}{'...' if len(target) > 60 else ''} is neither a directory nor a "
                            f"Hugging Face hub id ({str(err).splitlines()[0][:120]})") from None
    if path.is_dir() and not (path / "config.json").is_file():
        raise UserError(f"{path} has no config.json: give a directory written by save_pretrained, or a hub id")
    with hub_session():
        try:
            return transformers.AutoConfig.from_pretrained(target)
        except (OSError, ValueError) as err:
            raise _fetch_error(target, err) from err


def _fetch_error(target: str, err: Exception) -> UserError:
    if Path(target).exists():
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return UserError(f"cannot read the transformers model in {target}: {first[:160]}")
    # the user's setting, not the constant: `hub_session` turns it on itself when the Hub's host
    # does not resolve
    user_offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    why = "HF_HUB_OFFLINE is set" if user_offline else "the Hub cannot be reached"
    return UserError(f"'{target}' is not in the Hugging Face cache and {why}: "
                     f"download it once where there is network (huggingface-cli download {target}), or give a "
                     "save_pretrained directory")


def _preprocessing(transformers, target: str) -> dict:
    """mean, std, size and interpolation from the image processor's config, if there is one."""
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(target)
    except Exception:  # no preprocessor_config.json (or one we cannot read): the defaults stand
        return {}
    out = {}
    if getattr(processor, "image_mean", None) is not None:
        out["mean"], out["std"] = tuple(processor.image_mean), tuple(processor.image_std)
    size = getattr(processor, "size", None) or {}
    if "height" in size and "width" in size:  # resized straight to height x width, no crop
        out["size"], out["crop_mode"] = (size["height"], size["width"]), "squash"
    elif "shortest_edge" in size:
        out["size"] = (size["shortest_edge"], size["shortest_edge"])
    resample = getattr(processor, "resample", None)
    if resample is not None:
        out["interpolation"] = _RESAMPLE.get(int(resample), "bicubic")
    return out
