"""`radgpt evaluate`: score predictions against references and compare models.

    radgpt evaluate --refs validate.jsonl --pred lora=preds_lora.jsonl --pred tfidf=preds_tfidf.jsonl --out out/eval

writes report.md, report.html (self-contained), report.json, per_sample.jsonl and the paper table
(table.tex, booktabs; table.csv) into --out, and prints the score table. The reports say what produced the
numbers (provenance: each input file's sha256, and the model, adapter sha256, backend and decoding read
from the prediction lines) and list the worst cases side by side. Field names: see radgpt/evaluate/io.py
(or docs/evaluate.md). Every flag is also a config key (EvaluateConfig): defaults ← --config YAML ← flags ←
key=value overrides, later wins.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from radgpt.common.config import add_config_flags, config_help, flag_values, load_config
from radgpt.common.errors import FatalError


@dataclass
class EvaluateConfig:
    """`radgpt evaluate`'s settings: a --config YAML, the flags (each field's name with dashes) and key=value
    overrides, later wins."""

    # reference JSONL ({id, findings, impression} or clin-summ {idx, inputs, target}); required
    refs: str = ""
    # a model's predictions JSONL as NAME=FILE (NAME defaults to the file name); repeat --pred to compare
    # models; given as flags, they replace the YAML's list
    pred: list[str] = field(default_factory=list)
    out: str = "out/evaluate"  # output folder
    # metric groups or names: rouge, rouge_stem, bleu, embedding, clinical, radgraph, chexbert; offline = all
    # but the optional plugins (a comma list on the command line, a list in YAML)
    metrics: list[str] = field(default_factory=lambda: ["all"])
    ref_field: str | None = None  # reference text field (default: impression, target or reference)
    findings_field: str | None = None  # findings field in the references (default: findings or inputs)
    # prediction text field (default: impression, prediction, output, generated or text)
    pred_field: str | None = None
    # id field in both files (default: id, idx, uid or study_id; none: line order)
    id_field: str | None = None
    bootstrap: int = 1000  # bootstrap resamples for the CIs
    permutations: int = 1000  # shuffles per paired test
    seed: int = 0  # drives the bootstrap and the permutations: the same seed gives the same CIs and p-values
    # the model the others are tested against in the paper table (default: the first pred)
    reference: str | None = None
    # list the N worst cases side by side (missed abnormal, then largest loss; 0: none)
    worst: int = 10
    html: bool = True  # false (--no-html): skip the HTML report and its plots


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (EvaluateConfig keys); key=value overrides follow")
    flags = add_config_flags(parser, EvaluateConfig, flags={
        "pred": {"metavar": "NAME=FILE"}, "metrics": {"action": "store", "metavar": "A,B"},
        "reference": {"metavar": "NAME"}, "worst": {"metavar": "N"}, "bootstrap": {"metavar": "N"},
        "permutations": {"metavar": "N"}, "seed": {"metavar": "N"}})
    parser.add_argument("inputs", nargs="*", metavar="key=value", help="config overrides, e.g. bootstrap=200")
    parser.epilog = lambda: config_help(EvaluateConfig(), flags=flags)


def resolve_config(args: argparse.Namespace) -> EvaluateConfig:
    """The settings of this call: defaults ← --config YAML ← flags ← key=value overrides, checked."""
    bad = [x for x in args.inputs if "=" not in x]
    if bad:
        raise FatalError(f"expected key=value overrides after the options, got {' '.join(bad)}")
    cfg = load_config(EvaluateConfig, args.config, args.inputs, flags=flag_values(args))
    if not cfg.refs:
        raise FatalError("no references: pass --refs FILE (or refs: in the --config YAML)")
    if not cfg.pred:
        raise FatalError("no predictions: pass --pred NAME=FILE, once per model (or pred: in the --config "
                         "YAML)")
    if cfg.bootstrap < 1 or cfg.permutations < 1:
        raise FatalError("--bootstrap and --permutations must be at least 1")
    if cfg.worst < 0:
        raise FatalError("--worst must be 0 or more")
    return cfg


def _parse_pred(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep:
        return Path(spec).stem, Path(spec)
    if not name or not path:
        raise FatalError(f"--pred {spec!r}: expected NAME=FILE")
    return name, Path(path)


def _provenance(cfg: EvaluateConfig, metric_names: list[str], refs: dict, preds: dict[str, dict]) -> dict:
    """What produced the numbers: radgpt's version and settings, each input file's sha256, and per model
    what the prediction lines say produced them."""
    from datetime import UTC, datetime

    from radgpt import __version__

    return {"radgpt_version": __version__, "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": {"metrics": metric_names, "bootstrap": cfg.bootstrap, "permutations": cfg.permutations,
                         "seed": cfg.seed, "reference": cfg.reference, "worst": cfg.worst},
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

    cfg = resolve_config(args)
    refs, refs_have_ids, refs_prov = io.read_references(cfg.refs, cfg.ref_field, cfg.id_field, cfg.findings_field)
    predictions: dict[str, list[str]] = {}
    pred_prov: dict[str, dict] = {}
    for spec in cfg.pred:
        name, path = _parse_pred(spec)
        if name in predictions:
            raise FatalError(f"--pred: model name '{name}' given twice")
        preds, preds_have_ids, pred_prov[name] = io.read_predictions(path, cfg.pred_field, cfg.id_field)
        predictions[name] = io.align(refs, refs_have_ids, preds, preds_have_ids, name, path)
    if cfg.reference is not None and cfg.reference not in predictions:
        raise FatalError(f"--reference {cfg.reference!r}: not one of the --pred names ({', '.join(predictions)})")
    metric_names = [m.strip() for m in cfg.metrics if m.strip()]
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

        result = compare(refs, predictions, metric_names, cfg.bootstrap, cfg.permutations, cfg.seed,
                         progress=step, reference=cfg.reference, worst=cfg.worst)
        result["provenance"] = _provenance(cfg, metric_names, refs_prov, pred_prov)
        step("writing the report")
        paths = report.write(result, cfg.out, html_report=cfg.html)

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
