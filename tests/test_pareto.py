"""benchmarks/pareto.py's readings: the front and the interpolation the floors rule uses."""
import itertools
import random

from benchmarks.pareto import frontier, interpolated


def test_the_front_is_every_point_nothing_beats():
    rng = random.Random(0)
    points = [(round(rng.uniform(1, 3), 2), round(rng.uniform(20, 80), 1)) for _ in range(40)]
    dominated = {p for p, q in itertools.permutations(points, 2)
                 if q[0] >= p[0] and q[1] >= p[1] and q != p}
    assert set(frontier(points)) == set(points) - dominated


def _cell(plan, speed, refit, sequential):
    return {"plan": plan, "speedup": {"8": speed}, "top1": {"refit": refit, "sequential": sequential}}


def test_interpolation_between_the_bracketing_budgets():
    cells = [_cell("a", 1.2, 80.0, 79.0), _cell("a", 1.6, 70.0, 74.0), _cell("a", 2.0, 60.0, 50.0),
             _cell("b", 1.1, 90.0, 90.0)]
    assert interpolated(cells, "a", 1.4) == 77.0  # halfway from 80 to 74 (the better way of each cell)
    assert interpolated(cells, "a", 2.0) == 60.0
    assert interpolated(cells, "a", 2.1) is None  # not reached
    assert interpolated(cells, "b", 1.5) is None
