"""Recover: knowledge-distillation fine-tuning after pruning (single process or torchrun DDP)."""
