"""`radgpt merge`: fold a run's LoRA adapter into its base model → a plain HF model folder.

    radgpt merge runs/smollm2-135m-radgpt --out out/merged

The merged folder loads with `AutoModelForCausalLM.from_pretrained` anywhere (no peft needed), is the
input of `radgpt export` and of servers that take plain HF folders, and keeps the run's prompt
template, retrieval cases and config beside the weights, so it is still a radgpt run folder.
"""

from __future__ import annotations

import argparse
import copy
import shutil
from pathlib import Path

from radgpt.common.config import write_resolved
from radgpt.common.errors import FatalError
from radgpt.runs.config import MergedFrom
from radgpt.runs.folders import CASES_FILE, CONFIG_FILE, MODEL_CARD, TEMPLATE_FILE, VAL_METRICS

CARRIED = (TEMPLATE_FILE, CASES_FILE, VAL_METRICS, MODEL_CARD)


def merge(run_dir: str | Path, out: str | Path, dtype: str = "fp32") -> Path:
    import torch

    from radgpt.runs.run import RunFolder

    run, out = Path(run_dir), Path(out)
    if out.resolve() == run.resolve():
        raise FatalError("--out must differ from the run folder")
    loaded = RunFolder(run).load(merge=True)
    if loaded.adapter is None:
        raise FatalError(f"{run}: has no LoRA adapter to merge (a full fine-tune is already a plain model)")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise FatalError(f"unknown --dtype '{dtype}' (fp32, bf16, fp16)")
    out.mkdir(parents=True, exist_ok=True)
    loaded.model.to(torch_dtype).save_pretrained(out, safe_serialization=True)
    loaded.tokenizer.save_pretrained(out)
    for name in CARRIED:
        if (run / name).exists():
            shutil.copy2(run / name, out / name)
    cfg = copy.deepcopy(loaded.config)
    cfg.merged_from = MergedFrom(run=str(run), base=loaded.base)
    write_resolved(cfg, out, CONFIG_FILE)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a finetune run folder (adapter + config.yaml + prompt_template.json)")
    p.add_argument("--out", required=True, help="folder for the merged model")
    p.add_argument("--dtype", default="fp32", help="fp32 (default), bf16 or fp16")


def run(args: argparse.Namespace) -> int:
    out = merge(args.run, args.out, args.dtype)
    print(f"merged {args.run} → {out}")
    return 0
