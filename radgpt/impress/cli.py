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

A model is an `ImpressionModel`: `impress(findings_list, decoding, similar=3) -> [Impression]`, each with
the impression, the similar prior cases it leans on (returned to the user; the `shots` most similar also go
into the prompt when the run was trained with them) and token counts. Kinds, via `load_model(spec)`:
  a run folder            finetune's output (base + PEFT adapter + prompt template + retrieval cases);
                          backend auto = CTranslate2 int8 when `radgpt export` made one, else transformers
  an export folder        `radgpt export`'s CTranslate2 folder (self-describing: template and cases inside)
  a base model            packaged:smollm2-135m-instruct, a Hugging Face model folder, or a .gguf file: the
                          general instruction model with no adapter, prompted with the paper's instruction in
                          its own chat template, zero-shot (default) or with --shots k retrieved examples
                          (from --cases, default the bundled OpenI train file); backend auto = its CTranslate2
                          copy when `--backend ct2` made one, else transformers
  baseline:NAME           normal | nearest | last-sentence (radgpt/baselines.py)
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
from datetime import UTC, datetime
from pathlib import Path

from radgpt.common.errors import FatalError
from radgpt.impress.inputs import Bad, Record, read_inputs
from radgpt.impress.load import BACKENDS, DEFAULT_CASES, DEFAULT_MODEL, load_model
from radgpt.runs.decoding import PRESETS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="FINDINGS|FILE|-",
                   help="findings text, a .txt (one per line) / .jsonl / .csv file, or - for stdin")
    p.add_argument("--model", help="run folder, export folder, a base model with no adapter "
                   "(packaged:smollm2-135m-instruct, a Hugging Face folder, a .gguf file; zero-shot unless --shots), "
                   f"baseline:normal|nearest|last-sentence, or the model name at --endpoint (default: {DEFAULT_MODEL})")

    p.add_argument("--backend", default="auto", choices=list(BACKENDS),
                   help="auto: the CTranslate2 export of this run if `radgpt export` made one (fastest for "
                        "batches), else its GGUF export (llama.cpp: fastest single impressions), else transformers")
    p.add_argument("--endpoint", help="base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--endpoint-chat", action="store_true", help="use /chat/completions (general chat models)")
    p.add_argument("--api-key", help="key for --endpoint (or env RADGPT_ENDPOINT_KEY / OPENAI_API_KEY)")
    p.add_argument("--preset", default="greedy", choices=sorted(PRESETS), help="decoding preset (default greedy)")
    p.add_argument("--max-new-tokens", type=int, help="override the preset's max new tokens")
    p.add_argument("--shots", type=int, help="retrieved examples in each prompt (default: what the run trained with; "
                   "0 for a base model)")
    p.add_argument("--similar", type=int, default=3, help="similar prior cases returned with each impression")
    p.add_argument("--no-repair", action="store_true",
                   help="the model's text as generated: no removal of sentences stating findings the findings do "
                        "not state, no adding of a stated critical/major finding it left out (flags still shown)")
    p.add_argument("--cases", help="JSONL of prior cases for retrieval (default: the run's own; for a base model the "
                   f"bundled {DEFAULT_CASES})")
    p.add_argument("--template", help="prompt template (default: the run's own); with --endpoint, the run folder "
                   "whose adapter the endpoint serves (its template, instruction, shots, cases), or a template name")
    p.add_argument("--input-format", default="auto", choices=["auto", "txt", "jsonl", "csv"])
    p.add_argument("--field", help="JSONL field holding the findings (default: findings, inputs, input, text)")
    p.add_argument("--column", help="CSV column holding the findings (default: findings)")
    p.add_argument("--id-field", help="JSONL field / CSV column with the record id")
    p.add_argument("--out", help="write JSONL here (default: stdout)")
    p.add_argument("--format", default="auto", choices=["auto", "text", "jsonl"],
                   help="auto: text for findings typed on a terminal, JSONL otherwise")
    p.add_argument("--with-findings", action="store_true", help="copy the findings into each output line")
    p.add_argument("--batch-size", type=int, default=512,
                   help="findings per generation call (progress advances per call). The text does not depend on it: "
                        "CTranslate2 batches only prompts of equal token length, so larger calls find more of them "
                        "(OpenI validate: 5.1 impressions/s at 512, 4.0 at 128)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    decoding = PRESETS[args.preset]
    if args.max_new_tokens is not None:
        if args.max_new_tokens < 1:
            raise FatalError("--max-new-tokens must be at least 1")
        decoding = replace(decoding, max_new_tokens=args.max_new_tokens)
    if args.similar < 0 or (args.shots is not None and args.shots < 0) or args.batch_size < 1:
        raise FatalError("--similar and --shots must be >= 0, --batch-size >= 1")
    records = read_inputs(args.inputs, args.input_format, args.field, args.column, args.id_field)
    err = lambda msg: print(msg, file=sys.stderr, flush=True)
    first = []  # read ahead until the first good record, so input errors show before the model loads
    for r in records:
        first.append(r)
        if isinstance(r, Record):
            break
    batch = not args.inputs or any(i == "-" or Path(i).is_file() for i in args.inputs)
    model = load_model(args.model, backend=args.backend, device=args.device, endpoint=args.endpoint,
                       endpoint_chat=args.endpoint_chat, api_key=args.api_key, cases=args.cases,
                       template=args.template, shots=args.shots, threads=args.threads, batch=batch,
                       log=lambda m: err(f"radgpt impress: {m}"))
    text_mode = args.format == "text" or (args.format == "auto" and not args.out and sys.stdout.isatty()
                                          and all(not Path(i).is_file() and i != "-" for i in args.inputs))
    prov = {**model.provenance(), "preset": args.preset, "decoding": decoding.to_dict(),
            "repair": bool(model.repair and not args.no_repair)}  # evaluate tells repaired from raw runs apart
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    n_bad = n_done = 0
    bad_shown = 0

    def report_bad(b: Bad) -> None:
        nonlocal n_bad, bad_shown
        n_bad += 1
        if bad_shown < 20:
            err(f"radgpt impress: {b.where}: {b.message}; skipped")
            bad_shown += 1

    def flush(batch: list[Record], progress) -> None:
        nonlocal n_done
        if not batch:
            return
        t0 = time.perf_counter()
        results = model.impress([r.findings for r in batch], decoding, similar=args.similar,
                                repair=False if args.no_repair else None)
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
            if args.with_findings:
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
        batch: list[Record] = []
        import itertools

        for r in itertools.chain(first, records):
            if isinstance(r, Bad):
                report_bad(r)
                continue
            batch.append(r)
            if len(batch) >= args.batch_size:
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
    if n_done > 1 or args.out or n_bad:
        err(f"radgpt impress: {n_done} impressions in {secs:.1f} s ({n_done / max(secs, 1e-9):.1f}/s)"
            + (f", {n_bad} bad line(s) skipped" if n_bad else "") + (f" → {args.out}" if args.out else ""))
    model.close()
    return 1 if n_bad else 0
