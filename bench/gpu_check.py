"""The GPU path, measured (issue #14): fine-tuning throughput, auto micro-batch, validation generation and
`radgpt impress` on one GPU, with random-weight models of the shipped 135M and of a 7B Llama shape.

    bash bench/gpu_check.sh                 # on a CUDA machine (the entry: offline env, wheels, then this)
    python bench/gpu_check.py --tiny        # anywhere: a 2-layer, 64-wide shape on CPU, end to end

What it does, per shape:
  1. builds the model from a LlamaConfig with random weights (AutoModelForCausalLM.from_config) and saves
     it as a Hugging Face folder beside the shipped tokenizer (models/radgpt-smollm2-135m: 49,152 tokens);
  2. runs `radgpt finetune` in this process (so torch.cuda.max_memory_allocated is readable) for a few
     optimizer steps: the 135M shape with the default recipe (configs/smollm2-135m-cpu.yaml), the 7B shape
     with the paper recipe (configs/radiology-gpt-alpaca7b.yaml), both with train.micro_batch_size=auto, on
     the bundled OpenI pairs, then the end-of-run validation generation of the 341 OpenI validate findings;
  3. runs `radgpt impress --backend transformers --device cuda` on those 341 findings, as a user would.
Then ONE table: samples/s and tokens/s of training (the first, warm-up step left out), peak GPU memory,
model FLOPs utilisation (6 · parameters · tokens/s ÷ the device's peak dense bf16 FLOP/s, --peak-tflops),
the micro-batch `auto` chose, validation generation and impress rates, and the projected time of one epoch
of a MIMIC-CXR-size training set (--pairs, default 125,000) at the measured samples/s.

Random weights never emit the end token, so every generation runs to its max_new_tokens: the generation
figures are the worst case of that length. Nothing is downloaded: HF offline mode is set before transformers
is imported, and every model is a local folder.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "models/radgpt-smollm2-135m"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
TRAIN = REPO / "data/openi/clin-summ/train.jsonl"
VALIDATE = REPO / "data/openi/clin-summ/validate.jsonl"

# LlamaConfig fields of each shape. The 7B is Llama-1/2-7B's (vocab 32,000 there); every shape here takes the
# shipped tokenizer's 49,152-token vocabulary instead (no 32k tokenizer ships with radgpt, and nothing may be
# downloaded): +140M parameters (2%) of embeddings and output layer, in the parameter count and so in the MFU.
SHAPES = {
    "135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 intermediate_size=1536, tie_word_embeddings=True, max_position_embeddings=8192),
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
               intermediate_size=11008, tie_word_embeddings=False, max_position_embeddings=2048),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, tie_word_embeddings=True, max_position_embeddings=2048),
}
# (label, shape, recipe, optimizer steps, validation/impress findings, new tokens) for each row of the table.
# Step counts keep the whole check under 8 minutes on one H200 (the 7B paper recipe: ~1.5 s a step at the
# issue's 88.9 samples/s); the tiny shape keeps it to a few minutes on a laptop CPU.
GPU_RUNS = [("135M · default recipe", "135m", "configs/smollm2-135m-cpu.yaml", 20, 341, 64),
            ("7B · paper recipe", "7b", "configs/radiology-gpt-alpaca7b.yaml", 6, 341, 64)]
TINY_RUNS = [("tiny · default recipe", "tiny", "configs/smollm2-135m-cpu.yaml", 3, 24, 16),
             ("tiny · paper recipe", "tiny", "configs/radiology-gpt-alpaca7b.yaml", 3, 24, 16)]


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def steady_rates(rows: list[dict], batch_size: int) -> dict:
    """Training samples/s and tokens/s between the first and the last logged step: the first step (CUDA
    context, kernel selection, allocator warm-up) is left out. `tokens` in train_log.csv is cumulative and
    counts the non-padding tokens of the prompts and responses."""
    if len(rows) < 2:
        raise ValueError("need at least 2 logged steps for a rate without the warm-up step")
    first, last = rows[0], rows[-1]
    secs = float(last["elapsed_s"]) - float(first["elapsed_s"])
    steps = int(last["step"]) - int(first["step"])
    if secs <= 0:
        raise ValueError(f"steps {first['step']}..{last['step']} took no measurable time")
    return {"samples_per_s": round(batch_size * steps / secs, 2),
            "tokens_per_s": round((int(last["tokens"]) - int(first["tokens"])) / secs, 1), "steps": steps}


def mfu(params: float, tokens_per_s: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation by the usual convention: 6 FLOPs per parameter per token (forward 2, backward
    4). A LoRA step does less (no weight gradients for the frozen base: ~4 per parameter), so this is the
    conventional figure, comparable with published ones, not the share of the tensor cores kept busy."""
    return 6 * params * tokens_per_s / (peak_tflops * 1e12)


class Stage:
    """Prints each stage's wall time, and the running total, as it ends."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        stage = self

        class _Timer:
            def __enter__(self):
                self.t = time.perf_counter()
                print(f"\n== {name}", flush=True)

            def __exit__(self, *exc):
                secs = time.perf_counter() - self.t
                stage.times[name] = round(secs, 1)
                print(f"== {name}: {secs:.1f} s (total {time.perf_counter() - stage.t0:.1f} s)", flush=True)

        return _Timer()


def build_model(shape: str, folder: Path, device: str) -> int:
    """A random-weight Llama of `shape`, in an HF folder with the shipped tokenizer; returns its size."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (TOKENIZER / name).exists():
            shutil.copy2(TOKENIZER / name, folder / name)
    tok = AutoTokenizer.from_pretrained(folder)
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **SHAPES[shape])
    torch.manual_seed(0)
    # built on the device in bf16 (a 7B initialised in fp32 on the CPU takes minutes and 27 GB)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return n


def validate_file(n: int, work: Path) -> Path:
    """The first `n` OpenI validate pairs (all 341 on a GPU): finetune's validation set, impress's input."""
    path = work / f"validate-{n}.jsonl"
    if not path.exists():
        lines = VALIDATE.read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        path.write_text("".join(lines), encoding="utf-8")
    return path


def finetune_run(recipe: str, base: Path, out: Path, steps: int, validate: Path, new_tokens: int, device: str
                 ) -> dict:
    """`radgpt finetune --config RECIPE ...overrides` in this process; timings and GPU memory per phase."""
    import torch

    from radgpt.common.config import load_config
    from radgpt.finetune.train import finetune
    from radgpt.runs.config import FinetuneConfig

    overrides = [f"model.base={base}", f"out={out}", f"model.device={device}", f"data.train={TRAIN}",
                 f"data.validate={validate}", f"train.max_steps={steps}", "train.micro_batch_size=auto",
                 "train.save_every=0", "train.tensorboard=false", "train.log_every=1", "train.warmup_steps=0",
                 "eval.generate=true", "eval.max_samples=0", f"eval.max_new_tokens={new_tokens}",
                 "eval.batch_size=auto"]
    cfg = load_config(FinetuneConfig, REPO / recipe, overrides)
    cuda = device == "cuda"
    seen: dict = {"step_t": {}}
    t0 = time.perf_counter()

    def log(*parts) -> None:
        line = " ".join(map(str, parts))
        now = time.perf_counter() - t0
        print(f"  [{now:7.1f}s] {line}", flush=True)
        m = re.match(r"step (\d+)/", line)
        if m:
            seen["step_t"][int(m.group(1))] = now
        if line.startswith("validation: greedy generation") and cuda:
            # training's peak (the probe reset the counter after itself), then generation's own
            seen["train_peak"] = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    metrics = finetune(cfg, log=log)
    resolved = load_config(FinetuneConfig, out / "config.yaml")
    with open(out / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:  # the log lines' clock: elapsed_s in the CSV is rounded to 0.1 s
        r["elapsed_s"] = seen["step_t"].get(int(r["step"]), r["elapsed_s"])
    result = {"micro_batch": resolved.train.micro_batch_size,
              "accum": resolved.train.batch_size // resolved.train.micro_batch_size,
              "batch_size": resolved.train.batch_size, **steady_rates(rows, resolved.train.batch_size),
              "val_generated": metrics.get("val_generated"), "eval_batch": resolved.eval.batch_size,
              "val_generate_seconds": metrics.get("val_generate_seconds"), "new_tokens": new_tokens}
    if cuda:
        result["train_peak_gib"] = round(seen.get("train_peak", torch.cuda.max_memory_allocated()) / 2**30, 1)
        result["generate_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return result


def impress_run(run: Path, findings: Path, new_tokens: int, device: str, batch: int, work: Path) -> dict:
    """`radgpt impress FILE --backend transformers --device DEVICE` as a user runs it (its own process)."""
    out = work / f"impress-{run.name}.jsonl"
    cmd = [sys.executable, "-m", "radgpt", "impress", str(findings), "--model", str(run), "--backend",
           "transformers", "--device", device, "--max-new-tokens", str(new_tokens),
           "--batch-size", str(batch), "--out", str(out)]
    print("  $ " + " ".join(cmd), flush=True)
    # radgpt need not be installed: the checkout is on the path
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"radgpt impress failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines() if x.strip()]
    m = re.search(r"(\d+) impressions in ([\d.]+) s", proc.stderr)  # generation only: after the model loaded
    gen = float(m.group(2)) if m else sum(x.get("latency_ms", 0) for x in lines) / 1000
    return {"impressions": len(lines), "impress_seconds": round(gen, 1), "impress_batch": batch,
            "impress_wall_seconds": round(wall, 1)}


def table(results: list[dict], pairs: int, peak_tflops: float, device_name: str) -> str:
    head = ["run", "params", "auto micro-batch (× accum)", "train samples/s", "train tokens/s",
            "peak GPU mem, train", f"MFU (6N, {peak_tflops:g} TFLOP/s peak)", "validation generation",
            "peak GPU mem, generation", "impress --backend transformers", f"epoch of {pairs:,} pairs"]
    na = "n/a (CPU)"
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        gpu = "train_peak_gib" in r
        val_rate = r["val_generated"] / max(r["val_generate_seconds"], 1e-9)
        val = (f"{r['val_generated']} × {r['new_tokens']} tok in {r['val_generate_seconds']} s "
               f"(batch {r['eval_batch']}; {val_rate:.1f}/s)")
        imp_rate = r["impressions"] / max(r["impress_seconds"], 1e-9)
        imp = (f"{r['impressions']} × {r['new_tokens']} tok in {r['impress_seconds']} s "
               f"({imp_rate:.1f}/s; {r['impress_wall_seconds']} s with load)")
        cells = [r["label"], f"{r['params'] / 1e6:,.1f}M", f"{r['micro_batch']} (× {r['accum']})",
                 f"{r['samples_per_s']:,}", f"{r['tokens_per_s']:,.0f}",
                 f"{r['train_peak_gib']} GiB" if gpu else na,
                 f"{100 * mfu(r['params'], r['tokens_per_s'], peak_tflops):.1f}%" if gpu else na, val,
                 f"{r['generate_peak_gib']} GiB" if gpu else na, imp, hms(pairs / r["samples_per_s"])]
        out.append("| " + " | ".join(cells) + " |")
    out.append(f"\n{device_name}; rates over the optimizer steps after the first; random weights "
               "(generations run to their max new tokens); the epoch projection assumes MIMIC-CXR pairs as "
               "long as OpenI's.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="the tiny shape on CPU (automatic without a CUDA GPU)")
    p.add_argument("--work", default=str(REPO / "bench/out/gpu_check"),
                   help="models, runs and outputs go here (emptied first; a folder this script made, or new)")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="the device's peak dense bf16 TFLOP/s for the MFU (default: H100/H200 SXM, 989)")
    p.add_argument("--pairs", type=int, default=125_000,
                   help="training pairs of the projected epoch (MIMIC-CXR: ~125k)")
    p.add_argument("--impress-batch", type=int, default=64,
                   help="impress --batch-size (findings per generate call)")
    p.add_argument("--steps", type=int,
                   help="optimizer steps per run (default: 20 for 135M, 6 for 7B, 3 for the tiny shape)")
    p.add_argument("--only", choices=["135m", "7b"], help="one shape only")
    args = p.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available() and not args.tiny
    device = "cuda" if cuda else "cpu"
    runs = GPU_RUNS if cuda else TINY_RUNS
    if args.only and cuda:  # the tiny shape stands in for both
        runs = [r for r in runs if r[1] == args.only]
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores), tiny shape"
    import peft
    import transformers

    print(f"gpu_check: {device_name}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"peft {peft.__version__}", flush=True)
    if not cuda and not args.tiny:
        print("gpu_check: no CUDA GPU visible: the tiny shape on CPU (--tiny)", flush=True)
    work = Path(args.work).resolve()
    marker = work / ".gpu_check"  # only a folder this script made is emptied
    if work.exists() and any(work.iterdir()) and not marker.exists():
        raise SystemExit(f"gpu_check: --work {work} holds files this script did not write; give a new folder")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    marker.touch()
    stage = Stage()
    results, params = [], {}
    for label, shape, recipe, steps, n_val, new_tokens in runs:
        folder = work / "models" / shape
        if shape not in params:
            with stage(f"build {shape} (random weights) → {folder}"):
                params[shape] = build_model(shape, folder, device)
                print(f"  {params[shape]:,} parameters", flush=True)
        run = work / "runs" / f"{shape}-{Path(recipe).stem}"
        with stage(f"finetune {label}: {recipe}, {args.steps or steps} steps"):
            r = finetune_run(recipe, folder, run, args.steps or steps, validate_file(n_val, work), new_tokens,
                             device)
        gc.collect()  # the run's model and optimizer, before the next one is measured
        if cuda:
            torch.cuda.empty_cache()
        with stage(f"impress {label}: {n_val} findings"):
            findings = validate_file(n_val, work)
            r.update(impress_run(run, findings, new_tokens, device, args.impress_batch, work))
        results.append({"label": label, "params": params[shape], "recipe": recipe, **r})
    text = table(results, args.pairs, args.peak_tflops, device_name)
    summary = {"device": device_name, "torch": torch.__version__, "transformers": transformers.__version__,
               "peft": peft.__version__, "stage_seconds": stage.times, "results": results,
               "total_seconds": round(time.perf_counter() - stage.t0, 1)}
    (work / "results.json").write_text(json.dumps(summary, indent=2))
    (work / "table.md").write_text(text + "\n")
    print("\n" + text + f"\n\ntotal {summary['total_seconds']} s; {work / 'results.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
