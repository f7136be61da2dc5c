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
import copy
import hashlib
import hmac
import json
import re
import secrets
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from radgpt.backends import EXPORT_INFO, export_meta
from radgpt.errors import FatalError
from radgpt.export_gguf import GGUF_FILE, GGUF_QUANTIZATIONS, base_gguf, write_gguf
from radgpt.retrieval import CASES_FILE

QUANTIZATIONS = ("int8", "int8_float32", "int8_bfloat16", "int16", "float32", "bfloat16", "float16")
COPY_FILES = ("prompt_template.json", "config.yaml", "retrieval_cases.jsonl")
TOKENIZER_PREFIXES = ("tokenizer", "special_tokens", "vocab", "merges", "added_tokens", "chat_template")
CASES = ("copy", "omit", "pseudonymize")  # what an export does with retrieval_cases.jsonl
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
               log=print, cases: str = "copy", id_map: str | Path | None = None) -> Path:
    """quantization: a CTranslate2 one (QUANTIZATIONS) → a CT2 folder; a GGUF one (q8_0, f16, f32) → GGUF.
    cases: copy the run's retrieval cases (default), omit them or pseudonymize their ids (see share_run)."""
    from radgpt.impress import adapter_hash
    from radgpt.models import load_run

    run = Path(run)
    gguf = quantization in GGUF_QUANTIZATIONS
    if quantization not in QUANTIZATIONS and not gguf:
        raise FatalError(f"unknown quantization '{quantization}' (CTranslate2: {', '.join(QUANTIZATIONS)}; "
                         f"GGUF: {', '.join(GGUF_QUANTIZATIONS)})")
    if not (run / "config.yaml").exists():
        raise FatalError(f"{run}: not a radgpt run folder (no config.yaml)")
    _check_cases_args(cases, id_map, out)
    if cases != "copy" and out is None:
        raise FatalError("--without-cases / --pseudonymize-ids make a folder to share: name it with --out")
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    base = str((cfg.get("model") or {}).get("base"))
    source_gguf = base_gguf(base) if gguf else None  # fails early, before the merge, for an HF base
    digest = adapter_hash(run)
    out = Path(out) if out else cache_export_dir(run, digest, quantization)
    if export_model_file(out) is not None and not force:
        meta = export_meta(out)
        if meta.get("adapter_sha256") == digest and meta.get("quantization") == quantization and cases == "copy" \
                and not (out / SHARE_MANIFEST).exists():
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
            if name.name.startswith(TOKENIZER_PREFIXES + ("generation_config",)):
                shutil.copy2(name, target / name.name)
        import ctranslate2

        engine = {"format": "ctranslate2", "ctranslate2": ctranslate2.__version__}
    if cases == "copy":
        for name in COPY_FILES:
            if (run / name).exists():
                shutil.copy2(run / name, target / name)
    else:  # a folder to share: no data paths, the cases left out or pseudonymised, a manifest
        if (run / "prompt_template.json").exists():
            shutil.copy2(run / "prompt_template.json", target / "prompt_template.json")
        scrubbed = _write_shared_config(run, target, cfg)
        kept = _share_cases(run, target, cases, id_map, log)
    (target / EXPORT_INFO).write_text(json.dumps({
        "source_run": str(run.resolve()) if cases == "copy" else run.resolve().name,
        "base": (cfg.get("model") or {}).get("base"), "adapter_sha256": digest,
        "quantization": quantization, **engine, "created": datetime.now(UTC).isoformat(timespec="seconds")},
        indent=2))
    if cases != "copy":
        _write_manifest(run, target, cases, kept, scrubbed, f"radgpt export --quantization {quantization}")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    target.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    log(f"exported {run} → {out} ({quantization}, {time.perf_counter() - t0:.1f} s)")
    return out


# ---------------------------------------------------------------------------------------- sharing
SHARE_MANIFEST = "SHARED.json"
# What each file of a run or shared folder is, and whether it holds report text. The model card section
# "What this folder contains" and SHARED.json are written from this table.
FILE_NOTES = {
    "adapter_model.safetensors": ("the LoRA adapter weights", ("no (weights trained on the reports: a model can, "
                                  "rarely, reproduce a phrase it was trained on)")),
    "adapter_model.bin": ("the LoRA adapter weights (pickle format)", "no (weights, as above)"),
    "adapter_config.json": ("PEFT's adapter settings (rank, target modules, base name)", "no"),
    "model.safetensors": ("the full model weights (a full fine-tune or merged model)", "no (weights, as above)"),
    "model.safetensors.index.json": ("the index of sharded full-model weights", "no"),
    "config.json": ("the full model's architecture", "no"),
    "generation_config.json": ("the full model's generation defaults", "no"),
    "config.yaml": ("the resolved training config (base model, LoRA, prompt, retrieval_k)", ("no (data paths: in "
                    "a run folder they name the training files; a shared folder has them removed)")),
    "prompt_template.json": ("the exact prompt format the model was trained on", "no"),
    "chat_template.jinja": ("the tokenizer's chat template", "no"),
    "README.md": ("this model card", "no, unless its author pasted report text into it"),
    "val_metrics.json": ("validation scores and training counts", "no (numbers only)"),
    "train_log.csv": ("loss, learning rate and throughput per optimizer step", "no (numbers only)"),
    "loss.png": ("the training loss curve", "no"),
    CASES_FILE: (("the prior cases retrieved into each prompt: the training reports' findings and impressions "
                 "with their ids"), "YES, verbatim"),
    "val_predictions.jsonl": ("the model's validation impressions beside the reference impressions, with ids",
                              "YES, the validation references verbatim"),
    "checkpoints/": ("mid-training states (trainable weights, optimizer)", "no (weights and numbers)"),
    SHARE_MANIFEST: ("what radgpt export shared and left out", "no"),
    EXPORT_INFO: ("what radgpt export made this folder from", "no"),
    "model.bin": ("the CTranslate2 model (merged weights)", "no (weights, as above)"),
    GGUF_FILE: ("the llama.cpp model (merged weights)", "no (weights, as above)"),
    "tokenizer files": ("the tokenizer, saved from the base model", "no"),
}
# kept in a shared folder, besides tokenizer files: what inference needs, the model card, numbers-only records
SHARE_KEEP = ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json", "model.safetensors",
              "model.safetensors.index.json", "config.json", "generation_config.json", "config.yaml",
              "prompt_template.json", "README.md", "val_metrics.json", "train_log.csv", "loss.png")
# config.yaml entries that name files of the training machine (removed in a shared folder)
CONFIG_PATHS = (("out",), ("data", "train"), ("data", "validate"), ("lora", "init_from"), ("merged_from", "run"))
CARD_SECTION = "## What this folder contains"


def _check_cases_args(cases: str, id_map, out) -> None:
    if cases not in CASES:
        raise FatalError(f"unknown cases mode '{cases}' ({', '.join(CASES)})")
    if id_map and cases != "pseudonymize":
        raise FatalError("--id-map goes with --pseudonymize-ids")
    if id_map and out and Path(out).resolve() in Path(id_map).resolve().parents:
        raise FatalError("--id-map must be outside the shared folder (it links pseudonyms to the original ids)")


def _is_local_path(value) -> bool:
    return isinstance(value, str) and bool(re.match(r"^(/|~|\.{1,2}/|[A-Za-z]:[\\/]|\\\\)", value))


def _kept(name: str) -> bool:
    return name in SHARE_KEEP or name.startswith(TOKENIZER_PREFIXES) or bool(
        re.fullmatch(r"model-\d+-of-\d+\.safetensors", name))


def _write_shared_config(run: Path, target: Path, cfg: dict) -> list[str]:
    """config.yaml without the entries naming files of the training machine; returns those entries."""
    import yaml

    cfg = copy.deepcopy(cfg)
    removed = []
    for keys in CONFIG_PATHS:
        d = cfg
        for k in keys[:-1]:
            d = d.get(k) if isinstance(d, dict) else None
        if isinstance(d, dict) and d.get(keys[-1]):
            d[keys[-1]] = None
            removed.append(".".join(keys))
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    if _is_local_path(data.get("template")) or str(data.get("template", "")).endswith(".json"):
        data["template"] = "prompt_template.json"  # the run's template is that file in the folder
        removed.append("data.template")
    (target / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return removed


def pseudonym(key: bytes, case_id: str) -> str:
    """A case id under a keyed hash: stable for one key, not computable (nor invertible) without it."""
    return hmac.new(key, str(case_id).encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def _share_cases(run: Path, target: Path, cases: str, id_map, log) -> int:
    """Copy, pseudonymise or leave out the run's retrieval cases; returns how many the folder holds."""
    src = run / CASES_FILE
    if cases == "omit" or not src.exists():
        return 0
    lines = [x for x in src.read_text(encoding="utf-8").splitlines() if x.strip()]
    if cases == "copy":
        shutil.copy2(src, target / CASES_FILE)
        log(f"note: {CASES_FILE} holds {len(lines)} training reports verbatim (findings, impression, id); "
            "pass --without-cases to share the model without them")
        return len(lines)
    key = secrets.token_bytes(32)  # never written: without it the pseudonyms cannot be recomputed
    mapping: dict[str, str] = {}
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            r = json.loads(line)
            old = str(r["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise FatalError(f"{src}:{n}: expected a JSON object with an id") from None
        r["id"] = mapping.setdefault(old, pseudonym(key, old))
        rows.append(json.dumps(r, ensure_ascii=False))
    if len(set(mapping.values())) != len(mapping):  # 64-bit pseudonyms: practically never
        raise FatalError("two case ids got the same pseudonym; run the export again (a new key)")
    (target / CASES_FILE).write_text("\n".join(rows) + "\n", encoding="utf-8")
    log(f"note: {CASES_FILE} holds {len(rows)} training reports (findings and impressions verbatim; ids "
        "pseudonymised): pseudonymised ids do not de-identify the text")
    if id_map:
        Path(id_map).parent.mkdir(parents=True, exist_ok=True)
        Path(id_map).write_text(json.dumps(mapping, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        log(f"{id_map}: original id → pseudonym for {len(mapping)} cases (keep it; do not share it)")
    return len(rows)


def describe(folder: Path) -> list[tuple[str, str, str]]:
    """(file, what it is, holds report text?) for each file of a run, shared or export folder."""
    rows, tokenizer = [], []
    for p in sorted(folder.iterdir()):
        name = p.name + ("/" if p.is_dir() else "")
        if name.startswith(TOKENIZER_PREFIXES) and name not in FILE_NOTES:
            tokenizer.append(name)
        elif name in FILE_NOTES:
            rows.append((name, *FILE_NOTES[name]))
        elif re.fullmatch(r"model-\d+-of-\d+\.safetensors", name):
            rows.append((name, "a shard of the full model weights", "no (weights)"))
        else:
            rows.append((name, "not written by radgpt", "unknown: check it"))
    if tokenizer:
        rows.append((", ".join(tokenizer), *FILE_NOTES["tokenizer files"][:1], "no"))
    return rows


def card_section(folder: Path, cases: str, n_cases: int) -> str:
    how = {"omit": "The training reports were left out (`--without-cases`): the model wants retrieved prior "
                   "cases, so `radgpt impress` / `serve` need `--cases FILE.jsonl` with your own prior reports "
                   "(one JSON object per line: id, findings, impression; radgpt prepare's records work).",
           "pseudonymize": f"`{CASES_FILE}` holds {n_cases} training reports, findings and impressions verbatim; "
                           "their ids are replaced by keyed hashes (the key was not kept).",
           "copy": f"`{CASES_FILE}` holds {n_cases} training reports verbatim, with their ids."}[cases]
    lines = [CARD_SECTION, "",
             (f"Shared with `radgpt export --format adapter` on {datetime.now(UTC).date()}. {how} "
             "Validation predictions, checkpoints and the training machine's data paths were left out "
             f"(`{SHARE_MANIFEST}` lists them)."), "",
             "| file | what it is | holds report text |", "|---|---|---|"]
    lines += [f"| `{n}` | {what} | {text} |" for n, what, text in describe(folder)]
    return "\n".join(lines) + "\n"


def _write_card(run: Path, target: Path, cases: str, n_cases: int) -> None:
    """The run's model card with its "What this folder contains" section rewritten for the shared folder."""
    src = run / "README.md"
    text = src.read_text(encoding="utf-8") if src.exists() else f"# {run.resolve().name}\n\nA radgpt run folder.\n"
    (target / "README.md").write_text(text, encoding="utf-8")  # listed by describe() below
    section = card_section(target, cases, n_cases)
    lines = text.splitlines(keepends=True)
    start = next((i for i, x in enumerate(lines) if x.strip() == CARD_SECTION), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        text = "".join(lines[:start]) + section + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    (target / "README.md").write_text(text, encoding="utf-8")


def _write_manifest(run: Path, target: Path, cases: str, n_cases: int, scrubbed: list[str], how: str,
                    left_out: dict | None = None) -> None:
    (target / SHARE_MANIFEST).write_text("{}")  # listed by describe() below
    manifest = {
        "shared_by": how, "source_run": run.resolve().name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "cases": {"omit": "left out", "pseudonymize": "ids pseudonymised", "copy": "included"}[cases],
        "cases_in_folder": n_cases,
        "cases_note": ("the model wants retrieved prior cases: pass --cases FILE.jsonl (your own prior reports)"
                       if cases == "omit" else "findings and impressions verbatim"),
        "paths_removed": scrubbed,  # config.yaml entries (and adapter_config.json's base) naming local files
        "left_out": left_out or {},
        "files": {n: {"what": w, "report_text": t} for names, w, t in describe(target) for n in names.split(", ")},
    }
    (target / SHARE_MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")


def shared_without_cases(folder: str | Path) -> bool:
    """Whether `folder` was shared with its cases left out (impress must then not look for reports elsewhere)."""
    try:
        return json.loads((Path(folder) / SHARE_MANIFEST).read_text()).get("cases") == "left out"
    except (OSError, ValueError, AttributeError):
        return False


def share_run(run: str | Path, out: str | Path, cases: str = "copy", id_map: str | Path | None = None,
              force: bool = False, log=print) -> Path:
    """A copy of a run folder to give to someone else (`radgpt export --format adapter`): the weights and what
    inference needs, no conversion. cases: copy | omit (--without-cases) | pseudonymize (--pseudonymize-ids)."""
    import yaml

    run, out = Path(run), Path(out)
    if not (run / "config.yaml").exists():
        raise FatalError(f"{run}: not a radgpt run folder (no config.yaml)")
    _check_cases_args(cases, id_map, out)
    if not any((run / n).exists() for n in ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors",
                                            "model.safetensors.index.json")):
        raise FatalError(f"{run}: no adapter or model weights to share")
    if out.resolve() == run.resolve() or run.resolve() in out.resolve().parents:
        raise FatalError("--out must be a folder outside the run folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise FatalError(f"{out}: not empty; pass --force to replace it")
    cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    left_out = {}
    for p in sorted(run.iterdir()):
        if p.name in ("config.yaml", "README.md", CASES_FILE, SHARE_MANIFEST):
            continue  # written below
        if p.is_file() and _kept(p.name):
            shutil.copy2(p, work / p.name)
        else:
            name = p.name + ("/" if p.is_dir() else "")
            left_out[name] = ("report text" if name in ("val_predictions.jsonl",) else
                              "not needed for inference" if name in FILE_NOTES else
                              "not a file radgpt knows (shared folders keep only known files)")
    if cases == "omit" and (run / CASES_FILE).exists():
        left_out[CASES_FILE] = "report text (--without-cases)"
    scrubbed = _write_shared_config(run, work, cfg)
    adapter_cfg = work / "adapter_config.json"
    if adapter_cfg.exists():  # PEFT records the base it was trained on, often a local path
        acfg = json.loads(adapter_cfg.read_text())
        base_path = acfg.get("base_model_name_or_path")
        if _is_local_path(base_path):
            base = (cfg.get("model") or {}).get("base")
            acfg["base_model_name_or_path"] = base if base and not _is_local_path(base) else Path(base_path).name
            adapter_cfg.write_text(json.dumps(acfg, indent=2) + "\n")
            scrubbed.append("adapter_config.json base_model_name_or_path")
    n_cases = _share_cases(run, work, cases, id_map, log)
    (work / SHARE_MANIFEST).write_text("{}")  # so that the model card lists it
    _write_card(run, work, cases, n_cases)
    _write_manifest(run, work, cases, n_cases, scrubbed, "radgpt export --format adapter", left_out)
    base = (cfg.get("model") or {}).get("base")
    if _is_local_path(base):
        log(f"note: config.yaml keeps model.base = {base} (a folder on this machine; the recipient needs that "
            "base model, at that path or with model.base edited)")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work.rename(out)
    log(f"shared {run} → {out} ({'no cases' if cases == 'omit' else f'{n_cases} cases'}; left out: "
        f"{', '.join(left_out) or 'nothing'}; removed from config: {', '.join(scrubbed) or 'nothing'})")
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
