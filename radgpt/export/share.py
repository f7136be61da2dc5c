"""A run folder → a folder to give to someone else (`radgpt export --format adapter`): weights and what
inference needs, no validation predictions, no data paths; the training cases copied, left out or pseudonymised."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path

import yaml

from radgpt.common.errors import FatalError
from radgpt.runs.folders import (
    CARD_SECTION,
    CASES_FILE,
    CONFIG_FILE,
    FILE_NOTES,
    MODEL_CARD,
    SHARE_MANIFEST,
    TEMPLATE_FILE,
    TOKENIZER_PREFIXES,
    TRAIN_LOG,
    VAL_METRICS,
    VAL_PREDICTIONS,
    describe,
)
from radgpt.runs.run import RunFolder

CASES = ("copy", "omit", "pseudonymize")  # what an export does with retrieval_cases.jsonl
# kept in a shared folder, besides tokenizer files: what inference needs, the model card, numbers-only records
SHARE_KEEP = ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json", "model.safetensors",
              "model.safetensors.index.json", "config.json", "generation_config.json", CONFIG_FILE,
              TEMPLATE_FILE, MODEL_CARD, VAL_METRICS, TRAIN_LOG, "loss.png")
# config.yaml entries that name files of the training machine (removed in a shared folder)
CONFIG_PATHS = (("out",), ("data", "train"), ("data", "validate"), ("lora", "init_from"), ("merged_from", "run"))

def check_cases_args(cases: str, id_map, out) -> None:
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


def write_shared_config(run: Path, target: Path) -> list[str]:
    """config.yaml without the entries naming files of the training machine; returns those entries."""

    # the raw file, not the typed config: what is written back is the run's own text minus its local paths
    cfg = yaml.safe_load((run / CONFIG_FILE).read_text(encoding="utf-8")) or {}
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
        data["template"] = TEMPLATE_FILE  # the run's template is that file in the folder
        removed.append("data.template")
    (target / CONFIG_FILE).write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return removed


def pseudonym(key: bytes, case_id: str) -> str:
    """A case id under a keyed hash: stable for one key, not computable (nor invertible) without it."""
    return hmac.new(key, str(case_id).encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def share_cases(run: Path, target: Path, cases: str, id_map, log) -> int:
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
    src = run / MODEL_CARD
    text = src.read_text(encoding="utf-8") if src.exists() else f"# {run.resolve().name}\n\nA radgpt run folder.\n"
    (target / MODEL_CARD).write_text(text, encoding="utf-8")  # listed by describe() below
    section = card_section(target, cases, n_cases)
    lines = text.splitlines(keepends=True)
    start = next((i for i, x in enumerate(lines) if x.strip() == CARD_SECTION), None)
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        text = "".join(lines[:start]) + section + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    (target / MODEL_CARD).write_text(text, encoding="utf-8")


def write_manifest(run: Path, target: Path, cases: str, n_cases: int, scrubbed: list[str], how: str,
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


def share_run(run: str | Path, out: str | Path, cases: str = "copy", id_map: str | Path | None = None,
              force: bool = False, log=print) -> Path:
    """A copy of a run folder to give to someone else (`radgpt export --format adapter`): the weights and what
    inference needs, no conversion. cases: copy | omit (--without-cases) | pseudonymize (--pseudonymize-ids)."""
    folder = RunFolder(run)
    run, out = folder.path, Path(out)
    check_cases_args(cases, id_map, out)
    if not any((run / n).exists() for n in ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors",
                                            "model.safetensors.index.json")):
        raise FatalError(f"{run}: no adapter or model weights to share")
    if out.resolve() == run.resolve() or run.resolve() in out.resolve().parents:
        raise FatalError("--out must be a folder outside the run folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise FatalError(f"{out}: not empty; pass --force to replace it")
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    left_out = {}
    for p in sorted(run.iterdir()):
        if p.name in (CONFIG_FILE, MODEL_CARD, CASES_FILE, SHARE_MANIFEST):
            continue  # written below
        if p.is_file() and _kept(p.name):
            shutil.copy2(p, work / p.name)
        else:
            name = p.name + ("/" if p.is_dir() else "")
            left_out[name] = ("report text" if name in (VAL_PREDICTIONS,) else
                              "not needed for inference" if name in FILE_NOTES else
                              "not a file radgpt knows (shared folders keep only known files)")
    if cases == "omit" and (run / CASES_FILE).exists():
        left_out[CASES_FILE] = "report text (--without-cases)"
    scrubbed = write_shared_config(run, work)
    adapter_cfg = work / "adapter_config.json"
    if adapter_cfg.exists():  # PEFT records the base it was trained on, often a local path
        acfg = json.loads(adapter_cfg.read_text())
        base_path = acfg.get("base_model_name_or_path")
        if _is_local_path(base_path):
            base = folder.base
            acfg["base_model_name_or_path"] = base if base and not _is_local_path(base) else Path(base_path).name
            adapter_cfg.write_text(json.dumps(acfg, indent=2) + "\n")
            scrubbed.append("adapter_config.json base_model_name_or_path")
    n_cases = share_cases(run, work, cases, id_map, log)
    (work / SHARE_MANIFEST).write_text("{}")  # so that the model card lists it
    _write_card(run, work, cases, n_cases)
    write_manifest(run, work, cases, n_cases, scrubbed, "radgpt export --format adapter", left_out)
    base = folder.base
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


