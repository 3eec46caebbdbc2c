"""Score: DIMAP importance, per weight (the paper) and per structured group (ours).

The paper's score of the weight at magnitude rank j (largest first) in one layer is

    Imp(w_(j)) = w_(j)^2 / sum_{i <= j} w_(i)^2

`relative_energy_scores` computes exactly this for any 1-D vector of non-negative energies:
with energies = w^2 it is the paper's per-weight score; with energies = per-group sums of w^2
it is group-level DIMAP (option A, docs/method.md section 2).
"""
from __future__ import annotations

import torch

from ..models.adapters import AttentionSite, MlpSite


def relative_energy_scores(energy: torch.Tensor) -> torch.Tensor:
    """Score e_j / sum_{i: rank(i) <= rank(j)} e_i, ranking by energy, largest first.

    Ties are broken by position (a stable sort), so equal energies get a deterministic order:
    the earlier element ranks as larger. The largest element scores 1; an element of zero
    energy scores 0. Computed in float64, returned in float64, same shape as `energy`.
    """
    flat = energy.detach().reshape(-1).to(torch.float64)
    sorted_energy, order = torch.sort(flat, descending=True, stable=True)
    running = torch.cumsum(sorted_energy, 0)
    sorted_scores = torch.where(running > 0, sorted_energy / running.clamp_min(1e-300), torch.zeros_like(running))
    scores = torch.empty_like(flat)
    scores[order] = sorted_scores
    return scores.reshape(energy.shape)


def dimap_weight_scores(weight: torch.Tensor) -> torch.Tensor:
    """The paper's per-weight DIMAP score of every element of one layer's weight."""
    return relative_energy_scores(weight.detach().to(torch.float64) ** 2)


# Views of a layer's weight as (groups, weights-of-that-group) for heads and MLP channels.

def _qkv_by_head(site: AttentionSite, w: torch.Tensor) -> torch.Tensor:
    # qkv rows are (3, H, d), columns are input channels -> (H, 3*d*C)
    return w.reshape(3, site.num_heads, site.head_dim, -1).transpose(0, 1).reshape(site.num_heads, -1)


def _proj_by_head(site: AttentionSite, w: torch.Tensor) -> torch.Tensor:
    # proj columns are (H, d), rows are output channels -> (H, C*d)
    return w.reshape(w.shape[0], site.num_heads, site.head_dim).transpose(0, 1).reshape(site.num_heads, -1)


def _tensor(layer: torch.nn.Linear, grad: bool) -> torch.Tensor:
    return layer.weight.grad if grad else layer.weight.detach()


def head_weight_views(site: AttentionSite, grad: bool = False) -> list[torch.Tensor]:
    """Per-layer (heads, n) views of the weights a head owns: [qkv rows, proj columns]
    (with `grad`, the same views of the weights' gradients)."""
    return [_qkv_by_head(site, site.qkv_tensor(grad)), _proj_by_head(site, _tensor(site.proj, grad))]


def channel_weight_views(site: MlpSite, grad: bool = False) -> list[torch.Tensor]:
    """Per-layer (channels, n) views of the weights an MLP channel owns: [fc1 row, fc2 column]."""
    return [_tensor(site.fc1, grad), _tensor(site.fc2, grad).t()]


def group_scores(views: list[torch.Tensor], mode: str = "group") -> torch.Tensor:
    """DIMAP score per group, from per-layer (groups, n) weight views of one block.

    mode "group" (option A, default): in each layer, E_g = sum of w^2 over the group's weights;
        Imp_layer(g) = E_g / sum_{g': E_g' >= E_g} E_g'; score = mean over layers of Imp_layer(g).
    mode "weight" (option B): the paper's per-weight Imp(w) in each layer, then the mean over
        all weights of the group in all its layers (sum of per-weight scores / weight count).
    Biases are not scored (the paper scores weights), but they are removed with their group.
    """
    if mode == "group":
        per_layer = [relative_energy_scores((v.to(torch.float64) ** 2).sum(1)) for v in views]
        return torch.stack(per_layer).mean(0)
    if mode == "weight":
        total = sum(dimap_weight_scores(v).sum(1) for v in views)
        count = sum(v.shape[1] for v in views)
        return total / count
    raise ValueError(f"unknown score mode {mode!r}; expected 'group' or 'weight'")


def energy_fractions(views: list[torch.Tensor]) -> torch.Tensor:
    """Share of its layers' weight energy each group owns, pooled over the group's layers:
    f_g = sum_l E_{g,l} / sum_l ||W_l||_F^2, with E_{g,l} the sum of w^2 over group g's weights
    in layer l (float64). Removing a set S of the groups leaves the pooled layers with a relative
    Frobenius distortion of sqrt(sum_{g in S} f_g): the quantity DIMAP's bound adds up
    (docs/method.md section 4)."""
    energy = sum((v.to(torch.float64) ** 2).sum(1) for v in views)
    total = float(energy.sum())
    return energy / total if total > 0 else torch.zeros_like(energy)
