"""`radgpt export`: a finetune run → a CTranslate2 folder for fast CPU inference (int8 by default).

    radgpt export models/radgpt-smollm2-135m                 # → the radgpt cache; impress/serve find it
    radgpt export runs/my-run --out exports/my-run-int8      # or a folder of your choice
    radgpt export runs/my-run --check-vllm                   # can vLLM serve this adapter (--lora-modules)?

The LoRA adapter is merged into its base, the merged model is converted with CTranslate2's
TransformersConverter, and the run's prompt template, config, tokenizer and retrieval cases are copied
next to it, so the export folder is self-describing (`radgpt impress --model EXPORT_DIR` works alone).
`radgpt_export.json` records the source run, base, adapter sha256 and quantization. Exports in the cache
are keyed by adapter hash + base + quantization: `impress`/`serve` with `--backend auto` use one when it
matches the run exactly, so a retrained adapter is never served through a stale export.

Why CTranslate2 and not llama.cpp: measured on the 2-core CPU here (bench/bench_impress.py), CT2 int8 is
well ahead of transformers, installs as a wheel (llama-cpp-python compiles for ~3.5 min), and converts a
merged HF folder directly (no GGUF round trip for the merged adapter).

Sharing. A run folder holds report text: `retrieval_cases.jsonl` is the training reports' findings and
impressions verbatim, with their ids, and `val_predictions.jsonl` the validation references. To hand an adapter
to someone else:

    radgpt export runs/my-run --format adapter --without-cases --out share/my-run   # no report text
    radgpt export runs/my-run --format adapter --pseudonymize-ids --id-map my-run-ids.json --out share/my-run

`--format adapter` copies what inference needs (adapter or full weights, adapter_config.json, prompt template,
tokenizer, config.yaml, model card) and the numbers-only training records, never val_predictions.jsonl,
checkpoints or unknown files; config.yaml loses its data paths (out, data.train, data.validate,
lora.init_from), which can name hospital folders; `SHARED.json` lists what was kept and left out, and the
model card's "What this folder contains" section is rewritten for the shared folder. `--without-cases` leaves
the cases out (the recipient passes `--cases FILE.jsonl` with their own prior reports: impress and serve stop
with that advice and never fall back to other reports); `--pseudonymize-ids` keeps them with each id replaced
by HMAC-SHA256 under a random key that is not stored anywhere (`--id-map FILE` writes original → pseudonym
for you, outside the shared folder). Both also work for the engine formats (CTranslate2 / GGUF) with --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from radgpt.common.errors import FatalError
from radgpt.export.engines import QUANTIZATIONS, export_run
from radgpt.export.gguf import GGUF_QUANTIZATIONS
from radgpt.export.share import share_run
from radgpt.export.vllm import VLLM_RANKS, vllm_compat_problems
from radgpt.runs.folders import CASES_FILE


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a finetune run folder")
    p.add_argument("--out", help="output folder (default: the radgpt cache, where impress/serve find it)")
    p.add_argument("--format", default="engine", choices=["engine", "adapter"],
                   help="engine (default): a merged model for fast inference (CTranslate2 or GGUF, by "
                        "--quantization); adapter: the run's weights as they are, to share (no validation "
                        "predictions, no data paths; see --without-cases)")
    p.add_argument("--quantization", default="int8", choices=QUANTIZATIONS + tuple(GGUF_QUANTIZATIONS),
                   help="CTranslate2: int8 (default: fastest on CPU, same quality here), float32, ...; "
                        "GGUF for llama.cpp: q8_0, f16, f32")
    cases = p.add_mutually_exclusive_group()
    cases.add_argument("--without-cases", action="store_true",
                       help=f"leave out {CASES_FILE} (the training reports, verbatim): the recipient passes "
                            "--cases with their own prior reports")
    cases.add_argument("--pseudonymize-ids", action="store_true",
                       help="keep the cases but replace each id by a keyed hash (HMAC-SHA256, random key, not kept)")
    p.add_argument("--id-map", metavar="FILE", help="with --pseudonymize-ids: write original id → pseudonym here "
                   "(JSON; keep it outside the shared folder)")
    p.add_argument("--force", action="store_true", help="replace an existing export in --out")
    p.add_argument("--check-vllm", action="store_true", help="only check that vLLM --lora-modules can serve it")


def run(args: argparse.Namespace) -> int:
    cases = "omit" if args.without_cases else "pseudonymize" if args.pseudonymize_ids else "copy"
    if args.format == "adapter" and not args.check_vllm:
        if not args.out:
            raise FatalError("--format adapter makes a folder to share: name it with --out")
        if args.quantization != "int8":
            raise FatalError("--quantization is for --format engine (the adapter is shared as it is)")
        print(share_run(args.run, args.out, cases, args.id_map, args.force))
        return 0
    if args.check_vllm:
        problems = vllm_compat_problems(args.run)
        for line in problems:
            print(f"vLLM: {line}")
        notes = [p for p in problems if "max-lora-rank" in p or p.startswith("note:")]
        if len(notes) == len(problems):
            cfg = json.loads((Path(args.run) / "adapter_config.json").read_text())
            r = int(cfg.get("r", 8))
            rank = min(x for x in VLLM_RANKS if x >= max(r, 16))
            print(f"vLLM: ok — vllm serve {cfg.get('base_model_name_or_path') or 'BASE'} --enable-lora "
                  f"--max-lora-rank {rank} --lora-modules radgpt={Path(args.run).resolve()}")
            return 0
        return 1
    print(export_run(args.run, args.out, args.quantization, args.force, cases=cases, id_map=args.id_map))
    return 0
