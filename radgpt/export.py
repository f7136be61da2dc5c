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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from datetime import UTC, datetime, timezone
from pathlib import Path

from radgpt.backends import EXPORT_INFO, export_meta
from radgpt.errors import FatalError
from radgpt.export_gguf import GGUF_FILE, GGUF_QUANTIZATIONS, base_gguf, write_gguf

QUANTIZATIONS = ("int8", "int8_float32", "int8_bfloat16", "int16", "float32", "bfloat16", "float16")
COPY_FILES = ("prompt_template.json", "config.yaml", "retrieval_cases.jsonl")
# vLLM's LoRA support (vllm/lora): adapters on these projections of Llama-family models; rank up to
# --max-lora-rank (one of VLLM_RANKS, default 16); no DoRA, no modules_to_save, no bias.
VLLM_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj",
                "gate_up_proj", "embed_tokens", "lm_head"}
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def export_key(run: Path, digest: str | None, quantization: str) -> str:
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
    base = str((cfg.get("model") or {}).get("base"))
    return hashlib.sha256(f"{digest}|{base}|{quantization}".encode()).hexdigest()[:16]


def cache_export_dir(run: Path, digest: str | None, quantization: str = "int8") -> Path:
    from radgpt.models import cache_dir

    return cache_dir() / "exports" / f"{run.resolve().name}-{quantization}-{export_key(run, digest, quantization)}"


def find_export(run: str | Path, digest: str | None = None, quantization: str = "int8") -> Path | None:
    """The cached export of exactly this run (same adapter bytes, base and quantization), if any."""
    from radgpt.impress import adapter_hash

    run = Path(run)
    digest = digest or adapter_hash(run)
    if digest is None:
        return None
    d = cache_export_dir(run, digest, quantization)
    return d if export_model_file(d) is not None and (d / EXPORT_INFO).exists() else None


def export_model_file(folder: Path) -> Path | None:
    """The engine file of an export folder: CTranslate2's model.bin or llama.cpp's model.gguf."""
    for name in ("model.bin", GGUF_FILE):
        if (folder / name).exists():
            return folder / name
    return None


def export_run(run: str | Path, out: str | Path | None = None, quantization: str = "int8", force: bool = False,
               log=print) -> Path:
    """quantization: a CTranslate2 one (QUANTIZATIONS) → a CT2 folder; a GGUF one (q8_0, f16, f32) → GGUF."""
    from radgpt.impress import adapter_hash
    from radgpt.models import load_run

    run = Path(run)
    gguf = quantization in GGUF_QUANTIZATIONS
    if quantization not in QUANTIZATIONS and not gguf:
        raise FatalError(f"unknown quantization '{quantization}' (CTranslate2: {', '.join(QUANTIZATIONS)}; "
                         f"GGUF: {', '.join(GGUF_QUANTIZATIONS)})")
    if not (run / "config.yaml").exists():
        raise FatalError(f"{run}: not a radgpt run folder (no config.yaml)")
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    base = str((cfg.get("model") or {}).get("base"))
    source_gguf = base_gguf(base) if gguf else None  # fails early, before the merge, for an HF base
    digest = adapter_hash(run)
    out = Path(out) if out else cache_export_dir(run, digest, quantization)
    if export_model_file(out) is not None and not force:
        meta = export_meta(out)
        if meta.get("adapter_sha256") == digest and meta.get("quantization") == quantization:
            log(f"{out}: up to date")
            return out
        raise FatalError(f"{out}: holds another export; pass --force to replace it")
    t0 = time.perf_counter()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = load_run(run, merge=True)
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    target = work / "export"
    if gguf:
        target.mkdir(parents=True)
        write_gguf(loaded.model, source_gguf, target / GGUF_FILE, quantization, {"adapter_sha256": digest})
        loaded.tokenizer.save_pretrained(target)  # the same tokenizer, for radgpt's own token counting
        del loaded
        engine = {"format": "gguf"}
    else:
        from ctranslate2.converters import TransformersConverter

        merged = work / "merged"
        loaded.model.save_pretrained(merged, safe_serialization=True)
        loaded.tokenizer.save_pretrained(merged)
        del loaded
        TransformersConverter(str(merged), low_cpu_mem_usage=True).convert(str(target), quantization=quantization,
                                                                            force=True)
        for name in merged.iterdir():  # tokenizer files, so the export folder needs nothing else
            if name.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "added_tokens",
                                     "generation_config", "chat_template")):
                shutil.copy2(name, target / name.name)
        import ctranslate2

        engine = {"format": "ctranslate2", "ctranslate2": ctranslate2.__version__}
    for name in COPY_FILES:
        if (run / name).exists():
            shutil.copy2(run / name, target / name)
    (target / EXPORT_INFO).write_text(json.dumps({
        "source_run": str(run.resolve()), "base": (cfg.get("model") or {}).get("base"), "adapter_sha256": digest,
        "quantization": quantization, **engine, "created": datetime.now(UTC).isoformat(timespec="seconds")},
        indent=2))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    target.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    log(f"exported {run} → {out} ({quantization}, {time.perf_counter() - t0:.1f} s)")
    return out


def vllm_compat_problems(run: str | Path) -> list[str]:
    """Why vLLM's `--lora-modules name=RUN` would refuse this adapter ([] = it can serve it)."""
    run = Path(run)
    problems = []
    cfg_path = run / "adapter_config.json"
    if not cfg_path.exists():
        return [f"{run}: no adapter_config.json (a full fine-tune: serve the folder as a model, not a LoRA)"]
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {cfg.get('peft_type')}: vLLM serves LoRA adapters only")
    r = int(cfg.get("r", 0))
    if r < 1 or r > max(VLLM_RANKS):
        problems.append(f"rank {r}: vLLM serves ranks 1..{max(VLLM_RANKS)} (--max-lora-rank)")
    elif r > 16:
        need = min(x for x in VLLM_RANKS if x >= r)
        problems.append(f"rank {r} > vLLM's default --max-lora-rank 16: start vLLM with --max-lora-rank {need}")
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    bad = [t for t in targets if t.split(".")[-1] not in VLLM_TARGETS]
    if bad:
        problems.append(f"target modules {bad} are not LoRA-capable in vLLM")
    if cfg.get("use_dora"):
        problems.append("DoRA adapters are not supported by vLLM")
    if cfg.get("modules_to_save"):
        problems.append(f"modules_to_save {cfg['modules_to_save']} are not supported by vLLM")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias={cfg['bias']}: vLLM supports bias='none' only")
    if cfg.get("use_rslora"):
        pass  # supported: vLLM reads use_rslora
    weights = run / "adapter_model.safetensors"
    if not weights.exists():
        problems.append("no adapter_model.safetensors (vLLM loads safetensors or .bin; safetensors preferred)")
    else:
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            keys = list(f.keys())
        odd = [k for k in keys if not (k.startswith("base_model.model.") and
                                       (".lora_A." in k or ".lora_B." in k or "lora_embedding" in k))]
        if odd:
            problems.append(f"unexpected tensors in the adapter (vLLM expects base_model.model.*.lora_A/B): {odd[:3]}")
    base = cfg.get("base_model_name_or_path") or ""
    if base and Path(base).exists() and "/.cache/radgpt/" in base:
        problems.append(f"note: the adapter was trained on the dequantised packaged base in {base}; start vLLM "
                        "with that folder as the model (the hub checkpoint's weights differ from the packaged Q4_1)")
    return problems


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a finetune run folder")
    p.add_argument("--out", help="output folder (default: the radgpt cache, where impress/serve find it)")
    p.add_argument("--quantization", default="int8", choices=QUANTIZATIONS + tuple(GGUF_QUANTIZATIONS),
                   help="CTranslate2: int8 (default: fastest on CPU, same quality here), float32, ...; "
                        "GGUF for llama.cpp: q8_0, f16, f32")
    p.add_argument("--force", action="store_true", help="replace an existing export in --out")
    p.add_argument("--check-vllm", action="store_true", help="only check that vLLM --lora-modules can serve it")


def run(args: argparse.Namespace) -> int:
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
    print(export_run(args.run, args.out, args.quantization, args.force))
    return 0
