"""--sched: the learning rate of every step comes from timm's scheduler, checked against the
closed forms of a linear warm-up followed by a cosine or a linear decay."""
import math

import pytest
import torch
from types import SimpleNamespace

from dimap_struct.recover.finetune import lr_schedule


def _rates(sched: str, total: int, lr: float = 1e-3, min_lr: float = 1e-5, warmup: float = 0.1) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=lr)
    schedule = lr_schedule(optimizer, total, SimpleNamespace(warmup_fraction=warmup, lr=lr, min_lr=min_lr,
                                                             sched=sched))
    rates = []
    for step in range(total):
        schedule.step(step)
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


@pytest.mark.parametrize("sched, decay", [
    ("cosine", lambda f: 0.5 * (1 + math.cos(math.pi * f))),
    ("linear", lambda f: 1 - f),
])
def test_warm_up_then_decay(sched, decay):
    total, lr, min_lr, warm = 120, 1e-3, 1e-5, 12
    for step, rate in enumerate(_rates(sched, total, lr, min_lr)):
        if step < warm:
            expected = lr / warm + step * (lr - lr / warm) / warm
        else:
            expected = min_lr + (lr - min_lr) * decay((step - warm) / (total - warm))
        assert rate == pytest.approx(expected, rel=1e-9, abs=1e-12), step


def test_the_rate_depends_on_the_step_alone():
    """A resumed run rebuilds the scheduler and asks for step t: the same rate as an unbroken run."""
    whole = _rates("tanh", 50)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    schedule = lr_schedule(optimizer, 50, SimpleNamespace(warmup_fraction=0.1, lr=1e-3, min_lr=1e-5, sched="tanh"))
    schedule.step(37)
    assert optimizer.param_groups[0]["lr"] == whole[37]
