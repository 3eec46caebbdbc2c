"""Report: the typed compression report, its tables and its per-block plot."""
from .schema import Report

__all__ = ["Report"]
