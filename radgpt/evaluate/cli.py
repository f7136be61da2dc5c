"""`radgpt evaluate`: score predictions against references and compare models.

    radgpt evaluate --refs validate.jsonl --pred lora=preds_lora.jsonl --pred tfidf=preds_tfidf.jsonl --out out/eval

writes report.md, report.html (self-contained), report.json, per_sample.jsonl and the paper table
(table.tex, booktabs; table.csv) into --out, and prints the score table. The reports say what produced the
numbers (provenance: each input file's sha256, and the model, adapter sha256, backend and decoding read
from the prediction lines) and list the worst cases side by side. Field names: see radgpt/evaluate/io.py
(or docs/evaluate.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from radgpt.common.errors import FatalError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--refs", required=True, help="reference JSONL ({id, findings, impression} or clin-summ {idx, inputs, target})")
    parser.add_argument("--pred", action="append", required=True, metavar="NAME=FILE",
                        help="a model's predictions JSONL; repeat to compare models (NAME defaults to the file name)")
    parser.add_argument("--out", default="out/evaluate", help="output folder (default: out/evaluate)")
    parser.add_argument("--metrics", default="all",
                        help="comma list of metric groups or names: rouge, rouge_stem, bleu, embedding, clinical, "
                             "radgraph, chexbert; 'offline' = all but the optional plugins (default: all)")
    parser.add_argument("--ref-field", help="reference text field (default: impression, target or reference)")
    parser.add_argument("--findings-field", help="findings field in the references (default: findings or inputs)")
    parser.add_argument("--pred-field", help="prediction text field (default: impression, prediction, output, "
                                             "generated or text)")
    parser.add_argument("--id-field", help="id field in both files (default: id, idx, uid or study_id; none: line order)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    parser.add_argument("--permutations", type=int, default=1000, help="shuffles per paired test (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", metavar="NAME",
                        help="the model the others are tested against in the paper table (default: the first --pred)")
    parser.add_argument("--worst", type=int, default=10, metavar="N",
                        help="list the N worst cases side by side (missed abnormal, then largest loss; default 10, 0: none)")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML report and its plots")


def _parse_pred(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep:
        return Path(spec).stem, Path(spec)
    if not name or not path:
        raise FatalError(f"--pred {spec!r}: expected NAME=FILE")
    return name, Path(path)


def _provenance(args: argparse.Namespace, metric_names: list[str], refs: dict, preds: dict[str, dict]) -> dict:
    """What produced the numbers: radgpt's version and settings, each input file's sha256, and per model
    what the prediction lines say produced them."""
    from datetime import UTC, datetime

    from radgpt import __version__

    return {"radgpt_version": __version__, "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": {"metrics": metric_names, "bootstrap": args.bootstrap, "permutations": args.permutations,
                         "seed": args.seed, "reference": args.reference, "worst": args.worst},
            "references": refs, "predictions": preds}


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    from radgpt.evaluate import io, report
    from radgpt.evaluate.compare import compare

    if args.bootstrap < 1 or args.permutations < 1:
        raise FatalError("--bootstrap and --permutations must be at least 1")
    if args.worst < 0:
        raise FatalError("--worst must be 0 or more")
    refs, refs_have_ids, refs_prov = io.read_references(args.refs, args.ref_field, args.id_field, args.findings_field)
    predictions: dict[str, list[str]] = {}
    pred_prov: dict[str, dict] = {}
    for spec in args.pred:
        name, path = _parse_pred(spec)
        if name in predictions:
            raise FatalError(f"--pred: model name '{name}' given twice")
        preds, preds_have_ids, pred_prov[name] = io.read_predictions(path, args.pred_field, args.id_field)
        predictions[name] = io.align(refs, refs_have_ids, preds, preds_have_ids, name, path)
    if args.reference is not None and args.reference not in predictions:
        raise FatalError(f"--reference {args.reference!r}: not one of the --pred names ({', '.join(predictions)})")
    metric_names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    from radgpt.evaluate.metrics import resolve

    resolve(metric_names)  # fail on a typo before any work

    err = Console(stderr=True)
    # one step per (model, metric group), then CIs, tests, subgroups and the report
    steps = len(resolve(metric_names)) * len(predictions) + 4
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task("evaluating", total=steps)

        def step(msg: str) -> None:
            progress.update(task, description=msg, advance=1)

        result = compare(refs, predictions, metric_names, args.bootstrap, args.permutations, args.seed,
                         progress=step, reference=args.reference, worst=args.worst)
        result["provenance"] = _provenance(args, metric_names, refs_prov, pred_prov)
        step("writing the report")
        paths = report.write(result, args.out, html_report=not args.no_html)

    for msg in result["skipped"].values():
        print(msg, file=sys.stderr)  # one line each, never wrapped
    for name, m in result["models"].items():
        if m["empty_predictions"]:
            print(f"{name}: {m['empty_predictions']} empty predictions (scored 0)", file=sys.stderr)
    dropped = result["duplicates_dropped"]
    if dropped:
        print(f"not shown, identical here: {', '.join(f'{d} = {t}' for d, t in dropped.items())} "
              "(see the metric notes)", file=sys.stderr)
    for metric in ("clinical_f1_pos_macro", "clinical_f1_macro"):
        if metric in result["metric_notes"]:
            print(f"{metric}: {result['metric_notes'][metric]}", file=sys.stderr)
    table = Table(title=f"{result['n']} references (95% bootstrap CI)")
    # metric names are never cut ("clinical_f1_pos_…"): the value columns wrap at the CI instead
    table.add_column("metric", no_wrap=True, min_width=max((len(m) for m in result["metrics"]), default=6))
    for name in result["models"]:
        table.add_column(name, justify="right", overflow="fold")
    for metric in result["metrics"]:
        table.add_row(metric, *[f"{s['value']:.1f} [{s['ci_low']:.1f}, {s['ci_high']:.1f}]"
                                for s in (result["models"][n]["scores"][metric] for n in result["models"])])
    Console().print(table)
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0
