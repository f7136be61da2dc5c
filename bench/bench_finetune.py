"""Training throughput on CPU: radgpt's loop vs a plain transformers.Trainer + PEFT run.

    .venv/bin/python bench/bench_finetune.py                  # 96 samples each, default config
    .venv/bin/python bench/bench_finetune.py --samples 160

Same base model (the packaged SmolLM2-135M-Instruct), same training examples (the first N OpenI
train pairs rendered with the default config's prompt, retrieved cases included), same LoRA settings
(configs/smollm2-135m-cpu.yaml), same effective batch. Each trainer runs in its own process so its
peak RSS is its own. Trainer is run as a user would write it (fp32, DataCollatorForSeq2Seq padding),
and once more with bf16=True so the comparison is not only about precision.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "configs" / "smollm2-135m-cpu.yaml"


def _examples(cfg, n):
    from radgpt.finetune.data import attach_retrieval, read_examples, tokenize
    from radgpt.runs.base_models import load_tokenizer
    from radgpt.runs.prompts import PromptTemplate
    from radgpt.runs.retrieval import CaseIndex, PriorCase

    tok = load_tokenizer(cfg.model.base)
    train = read_examples(ROOT / cfg.data.train)
    if cfg.data.retrieval_k:
        index = CaseIndex([PriorCase(e.id, e.input, e.output) for e in train])
        attach_retrieval(train, index, cfg.data.retrieval_k, exclude_self=True)
    items, _ = tokenize(train[:n], tok, PromptTemplate.load(cfg.data.template), cfg.data.cutoff_len)
    return tok, train[:n], items


def run_radgpt(n: int, out: Path) -> dict:
    from radgpt.common.config import load_config
    from radgpt.finetune.train import finetune
    from radgpt.runs.config import FinetuneConfig

    cfg = load_config(FinetuneConfig, CONFIG, [f"out={out}", f"data.max_train_samples={n}", "data.validate=",
                                               "train.save_every=0", "train.epochs=1"])
    m = finetune(cfg, log=lambda *a: None)
    return {"samples": m["train_examples"], "seconds": m["train_seconds"]}


def run_trainer(n: int, out: Path, bf16: bool) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from radgpt.common.config import load_config
    from radgpt.runs.base_models import load_base_model
    from radgpt.runs.config import FinetuneConfig

    cfg = load_config(FinetuneConfig, CONFIG)
    tok, _, items = _examples(cfg, n)
    model = load_base_model(cfg.model.base)
    model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                             target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM"))
    data = [{"input_ids": t.input_ids, "attention_mask": [1] * len(t.input_ids), "labels": t.labels} for t in items]
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=cfg.train.micro_batch_size,
                             gradient_accumulation_steps=cfg.train.batch_size // cfg.train.micro_batch_size,
                             learning_rate=cfg.train.lr, num_train_epochs=1, logging_steps=1, save_strategy="no",
                             report_to=[], use_cpu=True, bf16=bf16, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    t0 = time.perf_counter()
    trainer.train()
    return {"samples": len(data), "seconds": time.perf_counter() - t0}


def child(kind: str, n: int, out: str) -> None:
    torch_threads = os.cpu_count()
    import torch

    torch.set_num_threads(torch_threads)
    from radgpt.runs.base_models import quiet_transformers

    quiet_transformers()
    res = run_radgpt(n, Path(out)) if kind == "radgpt" else run_trainer(n, Path(out), bf16=kind == "trainer-bf16")
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench/out/finetune"))
    ap.add_argument("--only", default="radgpt,trainer-fp32,trainer-bf16")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.samples, args.out)
        return 0
    results = {}
    for kind in args.only.split(","):
        out = Path(args.out) / kind
        if out.exists():
            import shutil

            shutil.rmtree(out)
        proc = subprocess.run([sys.executable, __file__, "--child", kind, "--samples", str(args.samples),
                               "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{kind} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results[kind] = json.loads(line[7:])
    load = os.getloadavg()[0]
    print(f"\nLoRA training throughput, SmolLM2-135M, {args.samples} OpenI examples, config {CONFIG.name} "
          f"({os.cpu_count()} cores, load avg {load:.1f} at the end)\n")
    print("| trainer | samples/s | seconds | peak RSS (MB) | speed-up vs Trainer fp32 |")
    print("|---|---:|---:|---:|---:|")
    ref = results.get("trainer-fp32")
    for kind, r in results.items():
        sps = r["samples"] / r["seconds"]
        gain = f"{sps / (ref['samples'] / ref['seconds']):.2f}×" if ref else "—"
        print(f"| {kind} | {sps:.2f} | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | {gain} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
