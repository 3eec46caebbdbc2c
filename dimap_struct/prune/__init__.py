"""Stages 2-6, prune: costs, scores (criteria), selection to a budget, the cut and its
verification; `unstructured` is the paper's own weight granularity."""
