"""`radgpt finetune`: LoRA/QLoRA instruction tuning (data → training loop → validation → run folder)."""
