"""Prune: costs, scores (criteria, and the calibration statistics some of them read), selection
to a budget, the cut, its verification and its replay (pruned checkpoints); `unstructured` is
the paper's own weight granularity."""
