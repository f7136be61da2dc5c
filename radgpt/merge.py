"""`radgpt merge`: fold a run's LoRA adapter into its base model → a plain HF model folder.

    radgpt merge runs/smollm2-135m-radgpt --out out/merged

The merged folder loads with `AutoModelForCausalLM.from_pretrained` anywhere (no peft needed), is the
input of `radgpt export` and of servers that take plain HF folders, and keeps the run's prompt
template, retrieval cases and config beside the weights, so it is still a radgpt run folder.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import yaml

from radgpt.errors import FatalError

CARRIED = ("prompt_template.json", "retrieval_cases.jsonl", "val_metrics.json", "README.md")


def merge(run_dir: str | Path, out: str | Path, dtype: str = "fp32") -> Path:
    import torch

    from radgpt.models import load_run

    run, out = Path(run_dir), Path(out)
    if out.resolve() == run.resolve():
        raise FatalError("--out must differ from the run folder")
    loaded = load_run(run, merge=True)
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
    cfg = dict(loaded.run_config)
    cfg["merged_from"] = {"run": str(run), "base": loaded.base}
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a finetune run folder (adapter + config.yaml + prompt_template.json)")
    p.add_argument("--out", required=True, help="folder for the merged model")
    p.add_argument("--dtype", default="fp32", help="fp32 (default), bf16 or fp16")


def run(args: argparse.Namespace) -> int:
    out = merge(args.run, args.out, args.dtype)
    print(f"merged {args.run} → {out}")
    return 0
