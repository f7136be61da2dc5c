"""`radgpt prepare`: raw reports → clean records + instruction datasets, in one streaming pass.

    radgpt prepare data/openi/indiana_reports.csv --out out/openi
    radgpt prepare mimic-cxr-reports.zip --out out/mimic split.file=mimic-cxr-2.0.0-split.csv
    radgpt prepare exports/reports.jsonl --out out/inhouse columns.findings=FINDINGS_TXT columns.impression=IMPR

Writes into the output folder:
    records/{train,validate,test}.jsonl   normalised records (id, patient_id, study_id, source, sections, ...)
    alpaca/{split}.jsonl                  {id, task, instruction, input, output}
    chat/{split}.jsonl                    {id, task, messages: [user, assistant]}
    skipped.jsonl                         everything not used, with file/line and reason, and its data
    summary.json, config.yaml             counts and the resolved config

Memory stays flat in corpus size: records are written as they are read; the only state that grows is
one 8-byte hash per (findings, impression) pair, for de-duplication and leakage flags.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import resource
import statistics
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from radgpt.config import load_config, to_dict, write_resolved
from radgpt.errors import FatalError
from radgpt.reports.records import DEFAULT_PHI_TOKEN, Problem, Record
from radgpt.reports.sources import SOURCES, ColumnMap, ReadOptions, detect_source, read_source
from radgpt.reports.splits import SPLITS, hash_split, load_split_file
from radgpt.reports.tasks import TASKS, alpaca_example, chat_example


@dataclass
class SplitConfig:
    train: float = 0.8
    validate: float = 0.1
    test: float = 0.1
    seed: int = 42  # same seed + same patient ids = same split, on any machine
    file: str = ""  # CSV with `split` + study_id/id/subject_id (e.g. MIMIC's official split); overrides the hash
    drop_leaked: bool = False  # validate/test pairs also found in train are flagged; set true to drop them


@dataclass
class FilterConfig:
    # word limits on the findings→impression pair; 0 disables a limit
    min_findings_words: int = 1
    max_findings_words: int = 1000
    min_impression_words: int = 1
    max_impression_words: int = 500


@dataclass
class PrepareConfig:
    inputs: list[str] = field(default_factory=list)
    out: str = "out/prepared"
    source: str = "auto"  # auto | mimic | openi-xml | iu-csv | table | text
    phi_token: str = DEFAULT_PHI_TOKEN  # every PHI placeholder (___, XXXX, ____) becomes this
    columns: ColumnMap = field(default_factory=ColumnMap)
    split: SplitConfig = field(default_factory=SplitConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    tasks: list[str] = field(default_factory=lambda: ["findings_impression"])
    instruction: str = ""  # replaces the findings_impression instruction (default: the paper's)
    formats: list[str] = field(default_factory=lambda: ["alpaca", "chat"])
    show_problems: int = 3  # problems printed per kind as they happen; all are in skipped.jsonl


def _category(reason: str) -> str:
    """Group problem reasons for the summary ('row 7 has 3 fields' and 'row 9 ...' are one kind)."""
    head = reason.split(":")[0].split(" (")[0]
    return re.sub(r"(?<![\w-])\d+(?!\w)", "N", head).strip()


def _pair_hash(findings: str, impression: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{findings}\x00{impression}".encode(), digest_size=8).digest(), "big")


class _Writers:
    """One JSONL file per (kind, split), opened lazily."""

    def __init__(self, out: Path):
        self.out, self.files = out, {}

    def write(self, kind: str, split: str, obj: dict) -> None:
        key = (kind, split)
        f = self.files.get(key)
        if f is None:
            (self.out / kind).mkdir(parents=True, exist_ok=True)
            f = self.files[key] = open(self.out / kind / f"{split}.jsonl", "w", encoding="utf-8")
        f.write(json.dumps(obj, ensure_ascii=False) + "\n")

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _check_config(cfg: PrepareConfig) -> None:
    if not cfg.inputs:
        raise FatalError("no input given: radgpt prepare PATH [PATH ...] --out DIR")
    if cfg.source != "auto" and cfg.source not in SOURCES:
        raise FatalError(f"unknown source type '{cfg.source}' (choose from auto, {', '.join(SOURCES)})")
    for t in cfg.tasks:
        if t not in TASKS:
            raise FatalError(f"unknown task '{t}' (choose from {', '.join(TASKS)})")
    for fmt in cfg.formats:
        if fmt not in ("alpaca", "chat"):
            raise FatalError(f"unknown format '{fmt}' (choose from alpaca, chat)")
    fr = (cfg.split.train, cfg.split.validate, cfg.split.test)
    if min(fr) < 0 or abs(sum(fr) - 1) > 1e-6:
        raise FatalError(f"split fractions must be ≥ 0 and sum to 1, got {fr}")


def _prepare_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise FatalError(f"{out}: output folder is not writable ({e.strerror or e})") from None


def _length_stats(values: array) -> dict:
    if not values:
        return {"mean": 0, "median": 0, "p95": 0, "max": 0}
    s = sorted(values)
    return {"mean": round(sum(s) / len(s), 1), "median": statistics.median(s),
            "p95": s[min(len(s) - 1, int(0.95 * len(s)))], "max": s[-1]}


def prepare(cfg: PrepareConfig, console: Console | None = None) -> dict:
    """Run prepare with a resolved config; returns the summary dict (also written to summary.json)."""
    console = console or Console(stderr=True)
    _check_config(cfg)
    out = Path(cfg.out)
    inputs = [Path(p) for p in cfg.inputs]
    if not any(p.exists() for p in inputs):
        raise FatalError(f"no input found: {', '.join(map(str, inputs))} do(es) not exist")
    _prepare_out(out)
    write_resolved(cfg, out)

    split_map, split_key = ({}, "")
    if cfg.split.file:
        split_map, split_key = load_split_file(Path(cfg.split.file))
    fractions = (cfg.split.train, cfg.split.validate, cfg.split.test)
    opts = ReadOptions(phi_token=cfg.phi_token, columns=cfg.columns)
    instructions = {t: (cfg.instruction if (cfg.instruction and t == "findings_impression") else TASKS[t][0])
                    for t in cfg.tasks}

    t0 = time.perf_counter()
    writers = _Writers(out)
    skipped_f = open(out / "skipped.jsonl", "w", encoding="utf-8")
    counts: Counter = Counter()
    skip_reasons: Counter = Counter()
    per_input: list[dict] = []
    seen: dict[str, set[int]] = {s: set() for s in SPLITS}
    held_out_pairs: list[tuple[str, str, int]] = []  # (split, id, pair hash) for validate/test
    patients: dict[str, set[str]] = {s: set() for s in SPLITS}
    patient_split: dict[str, str] = {}
    patients_conflicting: set[str] = set()
    lengths = {s: (array("I"), array("I")) for s in SPLITS}
    examples: Counter = Counter()

    def skip(origin: str, reason: str, data: dict | None) -> None:
        kind = _category(reason)
        skip_reasons[kind] += 1
        skipped_f.write(json.dumps({"origin": origin, "reason": reason, "data": data}, ensure_ascii=False) + "\n")
        if skip_reasons[kind] <= cfg.show_problems:
            more = " (further ones of this kind: counted, in skipped.jsonl)" if skip_reasons[kind] == cfg.show_problems else ""
            console.print(f"skipped {origin}: {reason}{more}", highlight=False, markup=False, style="yellow")

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True)
    flt = cfg.filters
    with progress:
        for path in inputs:
            if not path.exists():
                skip(str(path), "no such file or folder", None)
                counts["inputs_missing"] += 1
                per_input.append({"path": str(path), "source": None, "items": 0})
                continue
            source = detect_source(path) if cfg.source == "auto" else cfg.source
            task_id = progress.add_task(f"{path.name} ({source})", total=None)
            n_items = 0
            for item in read_source(path, source, opts):
                n_items += 1
                counts["items_read"] += 1
                if n_items % 2000 == 0:
                    progress.update(task_id, completed=n_items)
                if isinstance(item, Problem):
                    counts["unreadable"] += 1
                    skip(item.origin, item.reason, item.data)
                    continue
                rec: Record = item
                counts["parsed"] += 1
                fw, iw = len(rec.findings.split()), len(rec.impression.split())
                reason = None
                if not rec.findings:
                    reason = "no findings section"
                elif not rec.impression:
                    reason = "no impression section"
                elif fw < flt.min_findings_words or (flt.max_findings_words and fw > flt.max_findings_words):
                    reason = f"findings length {fw} words outside [{flt.min_findings_words}, {flt.max_findings_words}]"
                elif iw < flt.min_impression_words or (flt.max_impression_words and iw > flt.max_impression_words):
                    reason = f"impression length {iw} words outside [{flt.min_impression_words}, {flt.max_impression_words}]"
                if reason:
                    skip(rec.origin, reason, rec.to_dict())
                    continue

                patient = rec.patient_id or rec.study_id or rec.id
                if split_map:
                    key = rec.study_id if split_key in ("study_id", "id") else rec.patient_id
                    split = split_map.get(key) or split_map.get(rec.id)
                    if split is None:
                        skip(rec.origin, f"id {rec.id} not in split file", rec.to_dict())
                        continue
                    prev = patient_split.setdefault(patient, split)
                    if prev != split:
                        patients_conflicting.add(patient)
                else:
                    split = hash_split(patient, cfg.split.seed, fractions)

                h = _pair_hash(rec.findings, rec.impression)
                if h in seen[split]:
                    counts[f"duplicates_{split}"] += 1
                    skip(rec.origin, f"duplicate (findings, impression) pair within {split}", rec.to_dict())
                    continue
                seen[split].add(h)
                if split != "train":
                    held_out_pairs.append((split, rec.id, h))

                counts[f"records_{split}"] += 1
                patients[split].add(patient)
                lengths[split][0].append(fw)
                lengths[split][1].append(iw)
                row = rec.to_dict()
                row["split"] = split
                writers.write("records", split, row)
                for task in cfg.tasks:
                    pair = TASKS[task][1](rec)
                    if pair is None:
                        continue
                    examples[(task, split)] += 1
                    for fmt in cfg.formats:
                        build = alpaca_example if fmt == "alpaca" else chat_example
                        writers.write(fmt, split, build(task, instructions[task], pair[0], pair[1], rec.id))
            progress.update(task_id, completed=n_items, total=n_items)
            per_input.append({"path": str(path), "source": source, "items": n_items})
    writers.close()
    skipped_f.close()

    # Flag (or drop) validate/test pairs that also occur in train: a model would have seen them.
    leaked = {(s, rid) for s, rid, h in held_out_pairs if h in seen["train"]}
    if leaked:
        _rewrite_leaked(out, leaked, cfg.split.drop_leaked, list(cfg.formats))
    for s, _ in leaked:
        counts[f"leaked_{s}"] += 1

    summary = {
        "inputs": per_input,
        "items_read": counts["items_read"],
        "unreadable": counts["unreadable"],
        "parsed": counts["parsed"],
        "skipped_by_reason": dict(skip_reasons.most_common()),
        "skipped_total": sum(skip_reasons.values()),
        "splits": {
            s: {
                "records": counts[f"records_{s}"] - (counts[f"leaked_{s}"] if cfg.split.drop_leaked else 0),
                "patients": len(patients[s]),
                "duplicates_removed": counts[f"duplicates_{s}"],
                "pairs_also_in_train": counts[f"leaked_{s}"] if s != "train" else 0,
                "findings_words": _length_stats(lengths[s][0]),
                "impression_words": _length_stats(lengths[s][1]),
            }
            for s in SPLITS
        },
        "examples": {f"{t}/{s}": n for (t, s), n in sorted(examples.items())},
        "patients_in_two_splits_in_split_file": len(patients_conflicting),
        "leaked_pairs": "dropped" if cfg.split.drop_leaked else "flagged with in_train=true",
        "seconds": round(time.perf_counter() - t0, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "config": to_dict(cfg),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    return summary


def _rewrite_leaked(out: Path, leaked: set[tuple[str, str]], drop: bool, formats: list[str]) -> None:
    for split in ("validate", "test"):
        ids = {rid for s, rid in leaked if s == split}
        if not ids:
            continue
        for kind in ["records", *formats]:
            path = out / kind / f"{split}.jsonl"
            if not path.exists():
                continue
            tmp = path.with_suffix(".jsonl.tmp")
            with open(path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
                for line in src:
                    obj = json.loads(line)
                    if obj.get("id") in ids:
                        if drop:
                            continue
                        obj["in_train"] = True
                        line = json.dumps(obj, ensure_ascii=False) + "\n"
                    dst.write(line)
            tmp.replace(path)


def print_summary(summary: dict, console: Console) -> None:
    t = Table(title="radgpt prepare — summary", show_header=False, title_justify="left")
    t.add_column("what")
    t.add_column("count", justify="right")
    for inp in summary["inputs"]:
        t.add_row(f"input {inp['path']} ({inp['source'] or 'missing'})", f"{inp['items']:,}")
    t.add_row("reports read", f"{summary['items_read']:,}")
    t.add_row("unreadable (file/line errors)", f"{summary['unreadable']:,}")
    t.add_row("parsed into records", f"{summary['parsed']:,}")
    for reason, n in summary["skipped_by_reason"].items():
        t.add_row(f"  skipped: {reason}", f"{n:,}")
    console.print(t)

    s = Table(title="splits (patient-level)", title_justify="left")
    for col in ("split", "records", "patients", "dups removed", "also in train",
                "findings words med/p95/max", "impression words med/p95/max"):
        s.add_column(col, justify="right")
    for name, d in summary["splits"].items():
        fw, iw = d["findings_words"], d["impression_words"]
        s.add_row(name, f"{d['records']:,}", f"{d['patients']:,}", f"{d['duplicates_removed']:,}",
                  f"{d['pairs_also_in_train']:,}" if name != "train" else "—",
                  f"{fw['median']:g}/{fw['p95']}/{fw['max']}", f"{iw['median']:g}/{iw['p95']}/{iw['max']}")
    console.print(s)
    if summary["patients_in_two_splits_in_split_file"]:
        console.print(f"[yellow]warning: the split file puts {summary['patients_in_two_splits_in_split_file']} "
                      "patient(s) in more than one split[/]")
    console.print(f"done in {summary['seconds']} s → {summary['config']['out']}", highlight=False)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="PATH|key=value",
                   help="report files or folders (MIMIC tree/zip, OpenI XML/tgz, CSV, JSONL, .txt); "
                        "items of the form key=value are config overrides, e.g. split.seed=7")
    p.add_argument("--out", help="output folder (default out/prepared)")
    p.add_argument("--source", help=f"source type: auto (default), {', '.join(SOURCES)}")
    p.add_argument("--split-file", help="CSV assigning ids to train/validate/test (e.g. MIMIC's official split)")
    p.add_argument("--config", help="YAML config (PrepareConfig); key=value overrides follow")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary table")


def run(args: argparse.Namespace) -> int:
    # positional inputs and key=value overrides share the command line: anything with '=' before a
    # path separator is an override
    inputs, overrides = [], []
    for item in args.inputs:
        (overrides if re.match(r"^[A-Za-z_][\w.]*=", item) else inputs).append(item)
    cfg = load_config(PrepareConfig, args.config, overrides)
    if inputs:
        cfg.inputs = inputs
    if args.out:
        cfg.out = args.out
    if args.source:
        cfg.source = args.source
    if args.split_file:
        cfg.split.file = args.split_file
    console = Console(stderr=True, quiet=args.quiet)
    summary = prepare(cfg, console)
    print_summary(summary, Console(quiet=args.quiet, width=max(120, Console().width)))
    if not any(d["records"] for d in summary["splits"].values()):
        print(f"radgpt prepare: error: no usable reports in {', '.join(cfg.inputs)} "
              f"(see {Path(cfg.out) / 'skipped.jsonl'})", file=sys.stderr)
        return 1
    return 0
