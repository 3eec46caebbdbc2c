"""The orchestration layer: the only code that runs the stages of the other packages in order.

`compress` (`compression`) prunes once and exports: the API behind `dimap-compress`.
`finetune` (`finetuning`) prunes like it, recovers accuracy by knowledge distillation,
evaluates and exports: the API behind `dimap-finetune`, its `--steps K` rounds
(`rounds.prune_in_rounds`) included.
"""
from .compression import CompressionResult, Steps, check_outputs, compress, compress_to, input_files, make_options
from .finetuning import FinetuneResult, finetune
from .rounds import prune_in_rounds, schedule

__all__ = ["CompressionResult", "FinetuneResult", "Steps", "check_outputs", "compress", "compress_to", "finetune",
           "input_files", "make_options", "prune_in_rounds", "schedule"]
