"""A run folder → an engine folder: CTranslate2 (int8 by default) or GGUF for llama.cpp, merged weights plus
everything inference needs (template, config, tokenizer, cases), so the folder describes itself."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from radgpt.common.errors import FatalError
from radgpt.export.gguf import GGUF_QUANTIZATIONS, base_gguf, write_gguf
from radgpt.export.share import check_cases_args, share_cases, write_manifest, write_shared_config
from radgpt.runs.folders import (
    CASES_FILE,
    CONFIG_FILE,
    EXPORT_INFO,
    GGUF_FILE,
    SHARE_MANIFEST,
    TEMPLATE_FILE,
    TOKENIZER_PREFIXES,
    engine_file,
    export_meta,
)
from radgpt.runs.run import RunFolder

QUANTIZATIONS = ("int8", "int8_float32", "int8_bfloat16", "int16", "float32", "bfloat16", "float16")
COPY_FILES = (TEMPLATE_FILE, CONFIG_FILE, CASES_FILE)


def export_key(run: RunFolder, quantization: str) -> str:
    """Cache key of an export: the adapter's bytes, the base it is merged into, the quantization."""
    return hashlib.sha256(f"{run.adapter_sha256}|{run.base}|{quantization}".encode()).hexdigest()[:16]


def cache_export_dir(run: RunFolder | str | Path, quantization: str = "int8") -> Path:
    from radgpt.runs.base_models import cache_dir

    run = run if isinstance(run, RunFolder) else RunFolder(run)
    return cache_dir() / "exports" / f"{run.name}-{quantization}-{export_key(run, quantization)}"


def find_export(run: RunFolder | str | Path, quantization: str = "int8") -> Path | None:
    """The cached export of exactly this run (same adapter bytes, base and quantization), if any."""
    run = run if isinstance(run, RunFolder) else RunFolder(run)
    if run.adapter_sha256 is None:
        return None
    d = cache_export_dir(run, quantization)
    return d if engine_file(d) is not None and (d / EXPORT_INFO).exists() else None


def export_run(run: str | Path, out: str | Path | None = None, quantization: str = "int8", force: bool = False,
               log=print, cases: str = "copy", id_map: str | Path | None = None) -> Path:
    """quantization: a CTranslate2 one (QUANTIZATIONS) → a CT2 folder; a GGUF one (q8_0, f16, f32) → GGUF.
    cases: copy the run's retrieval cases (default), omit them or pseudonymize their ids (see share_run)."""
    gguf = quantization in GGUF_QUANTIZATIONS
    if quantization not in QUANTIZATIONS and not gguf:
        raise FatalError(f"unknown quantization '{quantization}' (CTranslate2: {', '.join(QUANTIZATIONS)}; "
                         f"GGUF: {', '.join(GGUF_QUANTIZATIONS)})")
    folder = RunFolder(run)
    run = folder.path
    check_cases_args(cases, id_map, out)
    if cases != "copy" and out is None:
        raise FatalError("--without-cases / --pseudonymize-ids make a folder to share: name it with --out")
    source_gguf = base_gguf(folder.base) if gguf else None  # fails early, before the merge, for an HF base
    digest = folder.adapter_sha256
    out = Path(out) if out else cache_export_dir(folder, quantization)
    if engine_file(out) is not None and not force:
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
        loaded = folder.load(merge=True)
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
        if (run / TEMPLATE_FILE).exists():
            shutil.copy2(run / TEMPLATE_FILE, target / TEMPLATE_FILE)
        scrubbed = write_shared_config(run, target)
        kept = share_cases(run, target, cases, id_map, log)
    (target / EXPORT_INFO).write_text(json.dumps({
        "source_run": str(run.resolve()) if cases == "copy" else run.resolve().name,
        "base": folder.base, "adapter_sha256": digest,
        "quantization": quantization, **engine, "created": datetime.now(UTC).isoformat(timespec="seconds")},
        indent=2))
    if cases != "copy":
        write_manifest(run, target, cases, kept, scrubbed, f"radgpt export --quantization {quantization}")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    target.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    log(f"exported {run} → {out} ({quantization}, {time.perf_counter() - t0:.1f} s)")
    return out


