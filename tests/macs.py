"""An independent MAC count for the tests: PyTorch's own FLOP counter."""
import copy

import torch
from torch.utils.flop_counter import FlopCounterMode


def torch_counted_macs(model: torch.nn.Module, input_size) -> int:
    """MACs of one image from PyTorch's FLOP counter (mm/bmm/conv; 2 FLOPs per MAC), on a copy
    whose attention runs as explicit matmuls, so that q.k^T and attn.v are counted too."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *input_size))
    return counter.get_total_flops() // 2
