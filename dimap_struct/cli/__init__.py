"""The four commands: dimap-compress, dimap-eval, dimap-finetune, dimap-bench."""
