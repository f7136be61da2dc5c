"""`radgpt finetune`: LoRA / QLoRA / full instruction tuning of a causal LM, readable top to bottom.

    radgpt finetune --config configs/smollm2-135m-cpu.yaml
    radgpt finetune --config configs/radiology-gpt-alpaca7b.yaml model.base=/models/llama-7b
    radgpt finetune --config configs/smollm2-135m-cpu.yaml data.train=out/inhouse \
        lora.init_from=models/radgpt-smollm2-135m out=runs/inhouse train.epochs=1   # adapt the shipped model
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m radgpt finetune --config ...
    radgpt finetune --config ... --resume          # continue from the last checkpoint in `out`

The run folder is the contract that `impress`, `serve`, `merge` and `export` reload:
    adapter_model.safetensors + adapter_config.json   the LoRA adapter (PEFT format)
    config.yaml                                       the resolved config (base model reference included)
    prompt_template.json                              the exact prompt the model was trained on
    tokenizer files                                   saved from the base, so the run is self-describing
    retrieval_cases.jsonl                             cases for retrieved examples (when data.retrieval_k > 0)
    train_log.csv, loss.png                           one row per optimizer step (cumulative across --resume)
    val_metrics.json, val_predictions.jsonl           on the validation set, at the end
    README.md                                         the model card: base, data, recipe, figures, licence
    checkpoints/step-NNNNNN/                          every train.save_every steps and at the end
    best/                                             the adapter with the lowest validation loss (train.eval_every)
    runs/                                             TensorBoard event files (`tensorboard --logdir RUN/runs`)

The loop itself, and why it is hand-written rather than transformers.Trainer: radgpt/finetune/train.py.
Multi-GPU and multi-node go through accelerate (FSDP / DeepSpeed configs in configs/accelerate/).
"""

from __future__ import annotations

import argparse
import functools
import os

from radgpt.common.config import config_help, load_config
from radgpt.common.errors import FatalError
from radgpt.finetune.train import finetune
from radgpt.runs.config import FinetuneConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = config_help(FinetuneConfig()) + """

examples:
  radgpt finetune --config configs/smollm2-135m-cpu.yaml train.eval_every=50 train.early_stopping_patience=3
  radgpt finetune --config configs/smollm2-135m-cpu.yaml data.train=out/inhouse \\
      lora.init_from=models/radgpt-smollm2-135m out=runs/inhouse train.epochs=1   # adapt the shipped model
  tensorboard --logdir runs/inhouse/runs                                          # watch a run"""
    p.add_argument("--config", help="YAML config (see configs/); key=value overrides follow")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in the run folder (a finished run: nothing is retrained; "
                        "only end-of-run steps a kill left undone are run)")
    p.add_argument("inputs", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=1")


def run(args: argparse.Namespace) -> int:
    bad = [x for x in args.inputs if "=" not in x]
    if bad:
        raise FatalError(f"expected key=value overrides, got {bad}")
    cfg = load_config(FinetuneConfig, args.config, args.inputs)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    finetune(cfg, resume=args.resume, log=functools.partial(print, flush=True))
    return 0
