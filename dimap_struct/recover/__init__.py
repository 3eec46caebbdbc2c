"""Recover: one-shot recovery from calibration statistics, and knowledge-distillation fine-tuning
after pruning (single process or torchrun DDP)."""
