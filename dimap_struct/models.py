"""Stage 1, load: resolve a model name, build it with timm (or torchvision, for names
'torchvision:NAME') and load its weights.

Weights come from (a) timm / the Hugging Face Hub (default; its cache and HF_HUB_OFFLINE are
honoured; for torchvision names, torchvision's DEFAULT weights through the torch hub cache),
(b) a local checkpoint (`.pth`, `.pt`, `.safetensors`; a bare state dict or one under a
`model` / `state_dict` key, as in the official Swin release), or (c) a seeded random
initialisation.
"""
from __future__ import annotations

import difflib
import os
import socket
import sys
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import timm
import torch
import torchvision
from torch import nn

from .adapters import FamilyAdapter, adapter_for_model, adapter_for_name, supported_families
from .adapters.torchvision_swin import PREFIX as TORCHVISION
from .errors import UserError
from .reference import sha256_file

ALIASES = {
    "swin_t": "swin_tiny_patch4_window7_224",
    "swin_s": "swin_small_patch4_window7_224",
    "swin_b": "swin_base_patch4_window7_224",
    "swin_l": "swin_large_patch4_window7_224",
}


@dataclass
class LoadedModel:
    """A model in eval mode, its family adapter and where its weights came from."""

    model: nn.Module
    adapter: FamilyAdapter
    name: str
    """timm name as given (pretrained tag kept), after alias resolution."""
    weights: str
    """Human-readable provenance, e.g. 'random init (seed 0)'."""
    pretrained: bool
    data_config: dict
    """Preprocessing in timm's format: input_size, mean, std, interpolation, crop_pct
    (`FamilyAdapter.data_config`)."""
    model_kwargs: dict = field(default_factory=dict)
    """Constructor options that, with `name`, rebuild the architecture (pruned checkpoints)."""

    @property
    def random_init(self) -> bool:
        """Weights are a random initialisation (accuracy figures mean nothing)."""
        return self.weights.startswith("random init")


def _build_reference(pretrained: bool, seed: int, **kwargs) -> nn.Module:
    from .reference import build_reference

    if kwargs:
        raise UserError(f"the reference model takes no model options ({', '.join(kwargs)})")
    return build_reference(pretrained=pretrained, seed=seed)


LOCAL_MODELS = {"reference": _build_reference}
"""Models this package ships itself: name -> builder(pretrained, seed, **kwargs)."""


def resolve_name(name: str) -> str:
    """Alias -> timm name; 'torchvision:NAME' stays as it is. Raises UserError for unknown
    names (with close suggestions) and for models outside every supported family."""
    if name in LOCAL_MODELS:
        return name
    if name.startswith(TORCHVISION):
        return _resolve_torchvision(name)
    name = ALIASES.get(name, name)
    base, _tag = timm.models.split_model_name_tag(name)
    if not timm.is_model(base):
        known = list(LOCAL_MODELS) + list(ALIASES) + timm.list_models()
        close = difflib.get_close_matches(base, known, n=3, cutoff=0.6)
        if adapter_for_name(TORCHVISION + base) is not None:
            close.insert(0, TORCHVISION + base)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown model '{name}'{hint}")
    if adapter_for_name(base) is None:
        raise _unsupported(base)
    return name


def _resolve_torchvision(name: str) -> str:
    base = name[len(TORCHVISION):]
    known = torchvision.models.list_models(module=torchvision.models)  # the classifiers
    if base not in known:
        close = difflib.get_close_matches(base, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(TORCHVISION + c for c in close)}?" if close else ""
        raise UserError(f"unknown model '{name}'{hint}")
    if adapter_for_name(name) is None:
        raise _unsupported(name)
    return name


def load_model(
    name: str,
    *,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = True,
    seed: int = 0,
    **model_kwargs,
) -> LoadedModel:
    """Build `name` (a timm name, optionally with a pretrained tag, an alias such as 'swin_t',
    or 'torchvision:NAME') and load weights: `checkpoint` if given, else pretrained weights if
    `pretrained`, else random initialisation seeded by `seed`. `model_kwargs` go to
    `timm.create_model` (e.g. `img_size=`, `num_classes=`) or `torchvision.models.get_model`."""
    name = resolve_name(name)
    state_dict = read_state_dict(checkpoint) if checkpoint is not None else None  # fail fast on bad files
    fetch = checkpoint is None and pretrained
    torch.manual_seed(seed)
    if name in LOCAL_MODELS:
        model = LOCAL_MODELS[name](fetch, seed, **model_kwargs)
    elif name.startswith(TORCHVISION):
        model = _build_torchvision(name, fetch, model_kwargs)
    elif fetch:
        model = _fetch_pretrained(name, model_kwargs)
    else:
        model = timm.create_model(name, pretrained=False, **model_kwargs)
    adapter = _adapter(model, name)
    if state_dict is not None:
        _load_into(model, adapter, state_dict, checkpoint)
        weights = f"checkpoint {Path(checkpoint).name} (sha256 {sha256_file(checkpoint)[:12]})"
    elif fetch and name in LOCAL_MODELS:
        weights = "trained reference (dimap_struct/weights, see its recipe)"
    elif fetch and name.startswith(TORCHVISION):
        weights = f"pretrained ({_torchvision_default(name)}, via torchvision)"
    elif fetch:
        tag = getattr(model, "pretrained_cfg", {}).get("tag") or "default"
        weights = f"pretrained ({tag}, via timm / Hugging Face Hub)"
    else:
        weights = f"random init (seed {seed}): NOT pretrained"
    model.eval()
    kwargs = model_kwargs if name in LOCAL_MODELS else {**adapter.build_kwargs(), **model_kwargs}
    return LoadedModel(model, adapter, name, weights, fetch, adapter.data_config(), kwargs)


def _fetch_pretrained(name: str, model_kwargs: dict) -> nn.Module:
    try:
        with _hub_session():
            return timm.create_model(name, pretrained=True, **model_kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        raise _fetch_error(name, err) from err


@contextmanager
def _hub_session() -> Iterator[None]:
    """Fetch through huggingface_hub without its retry noise: it logs every retry on stderr and
    backs off for about 25 s per file before giving up, so when the Hub's host does not even
    resolve (no network) use its offline mode (local cache only) for this fetch; the failure
    then becomes our one-line error at once."""
    import logging

    from huggingface_hub import constants

    hub_logger = logging.getLogger("huggingface_hub")
    level, offline = hub_logger.level, constants.HF_HUB_OFFLINE
    hub_logger.setLevel(logging.ERROR)
    if not offline and not _resolves(urlparse(constants.ENDPOINT).hostname):
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_logger.setLevel(level)
        constants.HF_HUB_OFFLINE = offline


def _resolves(host: str | None) -> bool:
    try:
        socket.getaddrinfo(host, 443)
    except (OSError, UnicodeError):
        return False
    return True


def _build_torchvision(name: str, fetch: bool, model_kwargs: dict) -> nn.Module:
    """torchvision builder; pretrained means its DEFAULT weights (torch hub cache or download)."""
    base = name[len(TORCHVISION):]
    if not fetch:
        return torchvision.models.get_model(base, weights=None, **model_kwargs)
    try:
        with redirect_stdout(sys.stderr):  # torch.hub announces downloads on stdout, which --json owns
            return torchvision.models.get_model(base, weights="DEFAULT", **model_kwargs)
    except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError
        raise _fetch_error(name, err) from err


def _torchvision_default(name: str) -> str:
    return str(torchvision.models.get_model_weights(name[len(TORCHVISION):]).DEFAULT)


def _fetch_error(name: str, err: Exception) -> UserError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    first = first.split(". ")[0].rstrip(".")  # first sentence: the Hub's messages run long
    return UserError(
        f"could not fetch pretrained weights for '{name}' ({first[:200]}); "
        "use --checkpoint PATH for local weights or --no-pretrained for random init"
    )


def wrap_model(model: nn.Module, name: str | None = None) -> LoadedModel:
    """Wrap an already-built model (Python API) with its adapter. Its name defaults to timm's
    architecture name when the model carries one (so pruned checkpoints can rebuild it)."""
    name = name or getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    adapter = _adapter(model, name)
    model.eval()
    return LoadedModel(model, adapter, name, "given in memory", False, adapter.data_config(),
                       adapter.build_kwargs())


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors / .pth / .pt, unwrapping `model` / `state_dict`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if not os.access(path, os.R_OK):
        raise UserError(f"checkpoint not readable: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt files raise many types (pickle, zip, safetensors, EOF)
        raise UserError(f"cannot read checkpoint {path}: {type(err).__name__}: {str(err)[:160]}") from err
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {path} holds no state dict of tensors")
    return state


def _adapter(model: nn.Module, name: str) -> FamilyAdapter:
    adapter = adapter_for_model(model)
    if adapter is None:
        raise _unsupported(name)
    return adapter


def _unsupported(name: str) -> UserError:
    return UserError(f"'{name}' is not a supported model yet; supported families: {supported_families()}")


def _load_into(model: nn.Module, adapter: FamilyAdapter, state_dict: dict, path) -> None:
    try:
        state_dict = adapter.convert_state_dict(state_dict)
    except Exception as err:
        raise UserError(f"checkpoint {path} does not fit this architecture: {err}") from err
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: {tuple(state_dict[k].shape)} "
                         f"in file, {tuple(own[k].shape)} in model)")
        raise UserError(f"checkpoint {path} is not a {type(model).__name__} of this size: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)
