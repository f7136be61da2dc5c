"""`radgpt impress`: findings in, impressions out — one at a time, or a batch with provenance.

    radgpt impress "Heart size normal. Lungs are clear. No effusion."
    echo "Heart size normal. Lungs are clear." | radgpt impress -
    radgpt impress findings.txt --out impressions.jsonl          # one findings per line
    radgpt impress reports.jsonl --field findings --out out.jsonl # or inputs / input
    radgpt impress reports.csv --column findings --out out.jsonl
    radgpt impress reports.jsonl --model runs/my-run --backend transformers --preset paper-demo
    radgpt impress reports.jsonl --model baseline:nearest         # baselines answer through the same interface
    radgpt impress reports.jsonl --model packaged:smollm2-135m-instruct --shots 3   # the base model, 3-shot
    radgpt impress reports.jsonl --endpoint http://127.0.0.1:8000/v1 --model radgpt   # vLLM, llama.cpp, ...
    radgpt impress --config configs/impress-batch.yaml out=out/run2.jsonl   # settings in a YAML file

Every flag is also a config key (ImpressConfig below; `--help` lists them): defaults ← --config YAML ← flags ←
key=value overrides, later wins.

A model is an `ImpressionModel`: `impress(findings_list, decoding, similar=3) -> [Impression]`, each with
the impression, the similar prior cases it leans on (returned to the user; the `shots` most similar also go
into the prompt when the run was trained with them) and token counts. Kinds, via `load_model(spec)`:
  a run folder            finetune's output (base + PEFT adapter + prompt template + retrieval cases);
                          backend auto = CTranslate2 int8 when `radgpt export` made one; a run on a packaged
                          base (the default model) is exported so once, on first use (~25 s); else transformers
  an export folder        `radgpt export`'s CTranslate2 folder (self-describing: template and cases inside)
  a base model            packaged:smollm2-135m-instruct, a Hugging Face model folder, or a .gguf file: the
                          general instruction model with no adapter, prompted with the paper's instruction in
                          its own chat template, zero-shot (default) or with --shots k retrieved examples
                          (from --cases, default the bundled OpenI train file); backend auto = its CTranslate2
                          copy when `--backend ct2` made one, else transformers
  baseline:NAME           normal | nearest | last-sentence (radgpt/impress/baselines.py)
  NAME with --endpoint    a model behind any OpenAI-compatible server
Each output line carries provenance: model, backend, adapter sha256, prompt template, decoding, the
retrieved case ids, time. A bad input line is reported by file:line and skipped; the rest is processed
(exit status 1 then, 0 when every line was fine, 2 on a fatal misuse).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from radgpt.common.config import add_config_flags, config_help, flag_values, load_config, split_overrides
from radgpt.common.errors import FatalError
from radgpt.impress.inputs import Bad, FindingsInput, is_file, read_inputs
from radgpt.impress.load import BACKENDS, load_model
from radgpt.runs.decoding import PRESETS


@dataclass
class ImpressConfig:
    """`radgpt impress`'s settings: a --config YAML, the flags (each field's name with dashes) and key=value
    overrides, later wins. `field` is a field name here, so `field(...)` is used above it only."""

    # findings text, .txt (one per line) / .jsonl / .csv files, or - for stdin; given on the command line, the
    # positional arguments replace it; none at all: stdin
    inputs: list[str] = field(default_factory=list)
    # run folder, export folder, a base model with no adapter (packaged:smollm2-135m-instruct, a Hugging Face
    # folder, a .gguf file; zero-shot unless shots), baseline:normal|nearest|last-sentence, or the model name
    # at the endpoint (default: the shipped models/radgpt-smollm2-135m)
    model: str | None = None
    # auto: the CTranslate2 export of this run if `radgpt export` made one (fastest for batches), else its
    # GGUF export (llama.cpp), else — for a run on a packaged base like the default model — a CTranslate2
    # export made once now (~25 s), else transformers
    backend: str = "auto"
    device: str = "cpu"  # cpu | cuda | auto
    threads: int = 0  # CPU threads (0 = all cores)
    preset: str = "greedy"  # decoding preset (greedy: deterministic; paper-demo: the paper's beam search)
    max_new_tokens: int | None = None  # replaces the preset's max new tokens
    # retrieved examples in each prompt (default: what the run trained with; 0 for a base model)
    shots: int | None = None
    similar: int = 3  # similar prior cases returned with each impression
    # false (--no-repair): the model's text as generated — no removal of sentences stating findings the
    # findings do not state, no adding of a stated critical/major finding it left out (consistency flags shown
    # either way)
    repair: bool = True
    # JSONL of prior cases for retrieval (default: the run's own; for a base model the bundled OpenI
    # train file)
    cases: str | None = None
    # prompt template (default: the run's own); with endpoint, the run folder whose adapter the endpoint
    # serves (its template, instruction, shots, cases), or a template name
    template: str | None = None
    endpoint: str | None = None  # base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1
    endpoint_chat: bool = False  # use the endpoint's /chat/completions (general chat models)
    input_format: Literal["auto", "txt", "jsonl", "csv"] = "auto"  # auto: by the file's suffix; stdin: txt
    field: str | None = None  # JSONL field holding the findings (default: findings, inputs, input, text)
    column: str | None = None  # CSV column holding the findings (default: findings)
    id_field: str | None = None  # JSONL field / CSV column with the record id
    out: str | None = None  # write JSONL here (default: stdout)
    # auto: text for findings typed on a terminal, else JSONL
    format: Literal["auto", "text", "jsonl"] = "auto"
    with_findings: bool = False  # copy the findings into each output line
    # findings per generation call (progress advances per call). The text does not depend on it: CTranslate2
    # batches only prompts of equal token length, so larger calls find more of them (OpenI validate: 5.1
    # impressions/s at 512, 4.0 at 128)
    batch_size: int = 512


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="FINDINGS|FILE|-|key=value",
                   help="findings text, a .txt (one per line) / .jsonl / .csv file, or - for stdin; items of the "
                        "form key=value are config overrides, e.g. shots=3 batch_size=128")
    p.add_argument("--config", help="YAML config (ImpressConfig keys, e.g. configs/impress-batch.yaml)")
    flags = add_config_flags(p, ImpressConfig, flags={
        "inputs": None, "backend": {"choices": list(BACKENDS)}, "preset": {"choices": sorted(PRESETS)},
        "max_new_tokens": {"metavar": "N"}, "shots": {"metavar": "K"}, "similar": {"metavar": "N"},
        "threads": {"metavar": "N"}, "batch_size": {"metavar": "N"}})
    # a secret, not a setting: kept out of config files (which get copied and shared); env vars work too
    p.add_argument("--api-key", help="key for --endpoint (or env RADGPT_ENDPOINT_KEY / OPENAI_API_KEY)")
    p.epilog = lambda: config_help(ImpressConfig(), flags=flags) + """

examples:
  radgpt impress --config configs/impress-batch.yaml --model runs/my-run     # flags override the YAML
  radgpt impress reports.jsonl --preset paper-demo max_new_tokens=64         # key=value overrides all"""


def resolve_config(args: argparse.Namespace) -> ImpressConfig:
    """The settings of this call: defaults ← --config YAML ← flags ← key=value overrides, checked."""
    inputs, overrides = split_overrides(args.inputs, ImpressConfig)
    cfg = load_config(ImpressConfig, args.config, overrides, flags=flag_values(args))
    if inputs:
        cfg.inputs = inputs
    if cfg.backend not in BACKENDS:
        raise FatalError(f"backend '{cfg.backend}': choose from {', '.join(BACKENDS)}")
    if cfg.preset not in PRESETS:
        raise FatalError(f"preset '{cfg.preset}': choose from {', '.join(PRESETS)}")
    if cfg.max_new_tokens is not None and cfg.max_new_tokens < 1:
        raise FatalError("--max-new-tokens must be at least 1")
    if cfg.similar < 0 or (cfg.shots is not None and cfg.shots < 0) or cfg.batch_size < 1:
        raise FatalError("--similar and --shots must be >= 0, --batch-size >= 1")
    return cfg


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = resolve_config(args)
    decoding = PRESETS[cfg.preset]
    if cfg.max_new_tokens is not None:
        decoding = replace(decoding, max_new_tokens=cfg.max_new_tokens)
    records = read_inputs(cfg.inputs, cfg.input_format, cfg.field, cfg.column, cfg.id_field)
    err = lambda msg: print(msg, file=sys.stderr, flush=True)
    first = []  # read ahead until the first good record, so input errors show before the model loads
    for r in records:
        first.append(r)
        if isinstance(r, FindingsInput):
            break
    batch = not cfg.inputs or any(i == "-" or is_file(Path(i)) for i in cfg.inputs)
    model = load_model(cfg.model, backend=cfg.backend, device=cfg.device, endpoint=cfg.endpoint,
                       endpoint_chat=cfg.endpoint_chat, api_key=args.api_key, cases=cfg.cases,
                       template=cfg.template, shots=cfg.shots, threads=cfg.threads, batch=batch,
                       log=lambda m: err(f"radgpt impress: {m}"))
    text_mode = cfg.format == "text" or (cfg.format == "auto" and not cfg.out and sys.stdout.isatty()
                                          and all(not is_file(Path(i)) and i != "-" for i in cfg.inputs))
    prov = {**model.provenance(), "preset": cfg.preset, "decoding": decoding.to_dict(),
            "repair": bool(model.repair and cfg.repair)}  # evaluate tells repaired from raw runs apart
    out = open(cfg.out, "w", encoding="utf-8") if cfg.out else sys.stdout
    n_bad = n_done = 0
    bad_shown = 0

    def report_bad(b: Bad) -> None:
        nonlocal n_bad, bad_shown
        n_bad += 1
        if bad_shown < 20:
            err(f"radgpt impress: {b.where}: {b.message}; skipped")
            bad_shown += 1

    def flush(batch: list[FindingsInput], progress) -> None:
        nonlocal n_done
        if not batch:
            return
        t0 = time.perf_counter()
        results = model.impress([r.findings for r in batch], decoding, similar=cfg.similar,
                                repair=None if cfg.repair else False)
        per = (time.perf_counter() - t0) * 1000 / len(batch)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        for r, res in zip(batch, results):
            if text_mode:
                out.write(f"{res.impression}\n")
                for a in res.repairs:
                    if a["action"] == "added_from_findings":
                        out.write(f"  + added from the findings: {a['sentence']}\n")
                for f in res.flags:
                    out.write(f"  ! {f['severity']}: {f['message']}\n")
                if res.similar_cases:
                    out.write("\nSimilar prior cases:\n")
                    for c in res.similar_cases:
                        out.write(f"  [{c.id}] ({c.score:.2f}) {c.impression}\n")
                continue
            rec = {"id": r.id, "impression": res.impression}
            if cfg.with_findings:
                rec["findings"] = r.findings
            rec.update({"similar_cases": [{"id": c.id, "score": round(c.score, 4), "impression": c.impression}
                                          for c in res.similar_cases],
                        "retrieved_case_ids": [c.id for c in res.similar_cases], "shot_case_ids": res.shot_ids,
                        "consistency_flags": res.flags, "repairs": res.repairs,
                        "finish_reason": res.finish_reason, "time": now, "latency_ms": round(per, 1),
                        "provenance": prov})
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
        out.flush()
        n_done += len(batch)
        if progress is not None:
            progress.advance(0, len(batch))

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    t_start = time.perf_counter()
    with Progress(TextColumn("impressions"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[rate]}"), console=console, transient=True,
                  disable=not sys.stderr.isatty()) as progress:
        progress.add_task("impress", total=None, rate="")
        batch: list[FindingsInput] = []
        import itertools

        for r in itertools.chain(first, records):
            if isinstance(r, Bad):
                report_bad(r)
                continue
            batch.append(r)
            if len(batch) >= cfg.batch_size:
                flush(batch, progress)
                batch = []
                rate = n_done / max(time.perf_counter() - t_start, 1e-9)
                progress.update(0, rate=f"{rate:.1f}/s")
        flush(batch, progress)
    if out is not sys.stdout:
        out.close()
    secs = time.perf_counter() - t_start
    if n_bad > bad_shown:
        err(f"radgpt impress: ... and {n_bad - bad_shown} more bad lines")
    if n_done == 0 and n_bad:
        raise FatalError(f"no usable findings ({n_bad} bad line(s))")
    if n_done > 1 or cfg.out or n_bad:
        err(f"radgpt impress: {n_done} impressions in {secs:.1f} s ({n_done / max(secs, 1e-9):.1f}/s)"
            + (f", {n_bad} bad line(s) skipped" if n_bad else "") + (f" → {cfg.out}" if cfg.out else ""))
    model.close()
    return 1 if n_bad else 0
