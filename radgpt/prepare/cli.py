"""`radgpt prepare`: raw reports → clean records + instruction datasets, in one streaming pass.

    radgpt prepare data/openi/indiana_reports.csv --out out/openi
    radgpt prepare mimic-cxr-reports.zip --out out/mimic split.file=mimic-cxr-2.0.0-split.csv
    radgpt prepare exports/reports.jsonl --out out/inhouse columns.findings=FINDINGS_TXT columns.impression=IMPR
    radgpt prepare exports/ris_export.csv --out out/ris        # AccessionNumber, PatientMRN, ReportText: detected
    radgpt prepare exports/new_reports.csv --out out/new --for-inference   # findings only, for `radgpt impress`

Writes into the output folder:
    records/{train,validate,test}.jsonl   normalised records (id, patient_id, study_id, source, sections, ...)
    alpaca/{split}.jsonl                  {id, task, instruction, input, output}
    chat/{split}.jsonl                    {id, task, messages: [user, assistant]}
    skipped.jsonl                         everything not used, with file/line and reason, and its data
    summary.json, config.yaml             counts, the column mapping used, and the resolved config
With --for-inference, instead of the splits: for_inference.jsonl {id, patient_id, findings, indication, ...}.
With pseudonymize=true, ids are keyed hashes and id_map.csv (keep it private) links them to the real ids.
An output folder that already holds prepared data is only replaced with --force.

Memory stays flat in corpus size: records are written as they are read; the only state that grows is
one 8-byte hash per (findings, impression) pair, for de-duplication and leakage flags.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import hmac
import json
import re
import resource
import secrets
import shutil
import statistics
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

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

from radgpt.common.config import config_help, load_config, to_dict, write_resolved
from radgpt.common.errors import FatalError
from radgpt.prepare.records import DEFAULT_PHI_TOKEN, Problem, Record
from radgpt.prepare.sources import (
    SOURCES,
    ColumnMap,
    ReadOptions,
    detect_source,
    read_source,
    resolve_columns,
    table_header,
)
from radgpt.prepare.splits import SPLITS, hash_split, load_split_file
from radgpt.prepare.tasks import TASKS, alpaca_example, chat_example


@dataclass
class SplitConfig:
    train: float = 0.8
    validate: float = 0.1
    test: float = 0.1
    seed: int = 42  # same seed + same patient ids = same split, on any machine
    file: str = ""  # CSV with `split` + study_id/id/subject_id (e.g. MIMIC's official split); overrides the hash
    drop_leaked: bool = False  # validate/test pairs also found in train are flagged; set true to drop them
    # patient: a patient's reports stay in one split; report: each report on its own (leaks when patients have
    # several reports, so a table with no patient column stops rather than do it silently)
    by: str = "patient"


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
    out: str = "out/prepared"  # output folder; on the command line --out DIR (out=DIR is the same setting)
    source: str = "auto"  # auto | mimic | openi-xml | iu-csv | table | text
    phi_token: str = DEFAULT_PHI_TOKEN  # every PHI placeholder (___, XXXX, ____) becomes this
    columns: ColumnMap = field(default_factory=ColumnMap)
    encoding: str = "auto"  # auto: UTF-8, rows that are not read as cp1252 (each noted); or one codec, e.g. cp1252
    for_inference: bool = False  # findings only, no split: for_inference.jsonl for `radgpt impress`
    pseudonymize: bool = False  # ids and patient ids → keyed hashes; id_map.csv links them back (keep it private)
    workers: int = 0  # processes parsing report text when an input holds over 2,048 reports; 0 = one per core
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


_JSON = json.JSONEncoder(ensure_ascii=False)  # one encoder for the ~3 lines written per report


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
        f.write(_JSON.encode(obj) + "\n")

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
    if cfg.split.by not in ("patient", "report"):
        raise FatalError(f"split.by must be patient or report, got {cfg.split.by!r}")
    fr = (cfg.split.train, cfg.split.validate, cfg.split.test)
    if min(fr) < 0 or abs(sum(fr) - 1) > 1e-6:
        raise FatalError(f"split fractions must be ≥ 0 and sum to 1, got {fr}")


# What prepare writes into its folder: only these are replaced by --force, nothing else the folder holds.
OUTPUTS = ("records", "alpaca", "chat", "skipped.jsonl", "summary.json", "config.yaml", "for_inference.jsonl",
           "id_map.csv")


def _prepare_out(out: Path, force: bool) -> None:
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not force:
        raise FatalError(f"{out} already holds prepared data ({', '.join(existing)}); pass --force to replace it, "
                         "or choose another --out")
    try:
        for name in existing:
            shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise FatalError(f"{out}: output folder is not writable ({e.strerror or e})") from None


def _plan_inputs(cfg: PrepareConfig, inputs: list[Path], opts: ReadOptions, console: Console) -> list[dict]:
    """Source type and column mapping of every input, checked before anything is written: a table whose
    report column cannot be found, or whose patients cannot be told apart, stops the run here."""
    plans = []
    for path in inputs:
        if not path.exists():
            plans.append({"source": None, "columns": None})
            continue
        source = detect_source(path) if cfg.source == "auto" else cfg.source
        columns, header = None, None
        if source == "table":
            header = table_header(path, opts.encoding)
            if isinstance(header, Problem):  # empty or unreadable: the reader reports it, the other inputs go on
                plans.append({"source": source, "columns": None})
                continue
            columns = resolve_columns(header, cfg.columns, str(path))
            if isinstance(columns, Problem):
                raise FatalError(f"{columns.origin}: {columns.reason}")
            given = {k for k, v in vars(cfg.columns).items() if v}
            shown = ", ".join(f"{k}={v}" + ("" if k in given else " (detected)") for k, v in columns.items())
            console.print(f"{path}: columns {shown}", highlight=False, markup=False)
        patient_level = source in ("mimic", "openi-xml", "iu-csv") or (columns is not None and "patient_id" in columns)
        if not patient_level and not cfg.for_inference and not cfg.split.file and cfg.split.by == "patient":
            where = f"no patient column among {header}" if source == "table" else "free-text files name no patient"
            raise FatalError(f"{path}: {where}, so the split would not be by patient (one patient's reports could "
                             "land in train and test): map it with columns.patient_id=NAME, or accept a split by "
                             "report with split.by=report")
        plans.append({"source": source, "columns": columns})
    return plans


class _Pseudonyms:
    """Keyed hashes for ids (HMAC-SHA256, a fresh random key per run, never written): the same id gets the
    same pseudonym within a run; id_map.csv, the only link back, is written for the user to keep private."""

    def __init__(self, path: Path):
        self.key = secrets.token_bytes(32)
        self.seen: dict[tuple[str, str], str] = {}
        self.f = open(path, "w", newline="", encoding="utf-8")
        self.w = csv.writer(self.f)
        self.w.writerow(["kind", "original", "pseudonym"])

    def __call__(self, kind: str, value: str) -> str:
        if not value:
            return value
        key = (kind, value)
        if key not in self.seen:
            digest = hmac.new(self.key, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()[:16]
            self.seen[key] = f"{kind[0]}-{digest}"
            self.w.writerow([kind, value, self.seen[key]])
        return self.seen[key]

    def record(self, row: dict) -> dict:
        row["id"] = self("report", row["id"])
        row["study_id"] = self("report", row["study_id"])
        row["patient_id"] = self("patient", row["patient_id"])
        for name in ("preamble", "metadata", "signature"):  # free text around the report: names, numbers
            row["sections"].pop(name, None)
        return row

    def close(self) -> None:
        self.f.close()


def _length_stats(values: array) -> dict:
    if not values:
        return {"mean": 0, "median": 0, "p95": 0, "max": 0}
    s = sorted(values)
    return {"mean": round(sum(s) / len(s), 1), "median": statistics.median(s),
            "p95": s[min(len(s) - 1, int(0.95 * len(s)))], "max": s[-1]}


def prepare(cfg: PrepareConfig, console: Console | None = None, force: bool = False) -> dict:
    """Run prepare with a resolved config; returns the summary dict (also written to summary.json).
    force: replace what an earlier prepare wrote into the output folder."""
    console = console or Console(stderr=True)
    _check_config(cfg)
    out = Path(cfg.out)
    inputs = [Path(p) for p in cfg.inputs]
    if not any(p.exists() for p in inputs):
        raise FatalError(f"no input found: {', '.join(map(str, inputs))} do(es) not exist")
    opts = ReadOptions(phi_token=cfg.phi_token, columns=cfg.columns, encoding=cfg.encoding, workers=cfg.workers)
    plans = _plan_inputs(cfg, inputs, opts, console)
    _prepare_out(out, force)
    write_resolved(cfg, out)

    split_map, split_key = ({}, "")
    if cfg.split.file:
        split_map, split_key = load_split_file(Path(cfg.split.file))
    fractions = (cfg.split.train, cfg.split.validate, cfg.split.test)
    instructions = {t: (cfg.instruction if (cfg.instruction and t == "findings_impression") else TASKS[t][0])
                    for t in cfg.tasks}

    t0 = time.perf_counter()
    writers = _Writers(out)
    skipped_f = open(out / "skipped.jsonl", "w", encoding="utf-8")
    inference_f = open(out / "for_inference.jsonl", "w", encoding="utf-8") if cfg.for_inference else None
    pseudonym = _Pseudonyms(out / "id_map.csv") if cfg.pseudonymize else None
    notes_shown: Counter = Counter()
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
        for path, plan in zip(inputs, plans):
            if not path.exists():
                skip(str(path), "no such file or folder", None)
                counts["inputs_missing"] += 1
                per_input.append({"path": str(path), "source": None, "items": 0})
                continue
            source = plan["source"]
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
                for note in rec.notes:
                    if "read as cp1252" in note:
                        counts["read_as_cp1252"] += 1
                        notes_shown["cp1252"] += 1
                        if notes_shown["cp1252"] <= cfg.show_problems:
                            console.print(f"note {rec.origin}: {note}", highlight=False, markup=False, style="yellow")
                fw, iw = len(rec.findings.split()), len(rec.impression.split())
                reason = None
                if not rec.findings:
                    reason = "no findings section"
                elif cfg.for_inference:
                    if flt.max_findings_words and fw > flt.max_findings_words:
                        reason = f"findings length {fw} words over {flt.max_findings_words}"
                elif not rec.impression:
                    reason = "no impression section"
                elif fw < flt.min_findings_words or (flt.max_findings_words and fw > flt.max_findings_words):
                    reason = f"findings length {fw} words outside [{flt.min_findings_words}, {flt.max_findings_words}]"
                elif iw < flt.min_impression_words or (flt.max_impression_words and iw > flt.max_impression_words):
                    reason = f"impression length {iw} words outside [{flt.min_impression_words}, {flt.max_impression_words}]"
                row = rec.to_dict()
                if pseudonym:
                    row = pseudonym.record(row)
                if reason:
                    skip(rec.origin, reason, row)
                    continue
                if inference_f is not None:
                    keep = ("id", "patient_id", "findings", "indication", "comparison", "impression", "origin")
                    inference_f.write(_JSON.encode({k: row[k] for k in keep}) + "\n")
                    counts["for_inference"] += 1
                    continue

                if not rec.patient_id:
                    counts["no_patient_id"] += 1
                patient = rec.id if cfg.split.by == "report" else (rec.patient_id or rec.study_id or rec.id)
                if split_map:
                    key = rec.study_id if split_key in ("study_id", "id") else rec.patient_id
                    split = split_map.get(key) or split_map.get(rec.id)
                    if split is None:
                        skip(rec.origin, f"id {rec.id} not in split file", row)
                        continue
                    prev = patient_split.setdefault(patient, split)
                    if prev != split:
                        patients_conflicting.add(patient)
                else:
                    split = hash_split(patient, cfg.split.seed, fractions)

                h = _pair_hash(rec.findings, rec.impression)
                if h in seen[split]:
                    counts[f"duplicates_{split}"] += 1
                    skip(rec.origin, f"duplicate (findings, impression) pair within {split}", row)
                    continue
                seen[split].add(h)
                if split != "train":
                    held_out_pairs.append((split, row["id"], h))

                counts[f"records_{split}"] += 1
                patients[split].add(patient)
                lengths[split][0].append(fw)
                lengths[split][1].append(iw)
                row["split"] = split
                writers.write("records", split, row)
                for task in cfg.tasks:
                    pair = TASKS[task][1](rec)
                    if pair is None:
                        continue
                    examples[(task, split)] += 1
                    for fmt in cfg.formats:
                        build = alpaca_example if fmt == "alpaca" else chat_example
                        writers.write(fmt, split, build(task, instructions[task], pair[0], pair[1], row["id"]))
            progress.update(task_id, completed=n_items, total=n_items)
            per_input.append({"path": str(path), "source": source, "items": n_items, "columns": plan["columns"]})
    writers.close()
    skipped_f.close()
    if inference_f is not None:
        inference_f.close()
    if pseudonym:
        pseudonym.close()

    # Flag (or drop) validate/test pairs that also occur in train: a model would have seen them.
    leaked = {(s, rid) for s, rid, h in held_out_pairs if h in seen["train"]}
    if leaked:
        _rewrite_leaked(out, leaked, cfg.split.drop_leaked, list(cfg.formats))
    for s, _ in leaked:
        counts[f"leaked_{s}"] += 1

    written = {s: counts[f"records_{s}"] - (counts[f"leaked_{s}"] if cfg.split.drop_leaked else 0) for s in SPLITS}
    summary = {
        "inputs": per_input,
        "items_read": counts["items_read"],
        "unreadable": counts["unreadable"],
        "parsed": counts["parsed"],
        "read_as_cp1252": counts["read_as_cp1252"],
        "skipped_by_reason": dict(skip_reasons.most_common()),
        "skipped_total": sum(skip_reasons.values()),
        "written": counts["for_inference"] if cfg.for_inference else sum(written.values()),
        "for_inference": cfg.for_inference,
        "split_by": ("split file" if cfg.split.file else "patient" if cfg.split.by == "patient" else "report"),
        "reports_without_patient_id": counts["no_patient_id"],
        "pseudonymized": cfg.pseudonymize,
        "splits": {
            s: {
                "records": written[s],
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
        "peak_rss_worker_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
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
        if inp.get("columns"):
            t.add_row("  columns", ", ".join(f"{k}={v}" for k, v in inp["columns"].items()))
    t.add_row("rows/files read", f"{summary['items_read']:,}")
    t.add_row("  not read (empty, undecodable or malformed)", f"{summary['unreadable']:,}")
    t.add_row("  parsed into sections", f"{summary['parsed']:,}")
    if summary["read_as_cp1252"]:
        t.add_row("    of which read as cp1252 (not UTF-8; noted per record)", f"{summary['read_as_cp1252']:,}")
    for reason, n in summary["skipped_by_reason"].items():
        t.add_row(f"  skipped: {reason}", f"{n:,}")
    where = "for_inference.jsonl" if summary["for_inference"] else "records/ (all splits)"
    t.add_row(f"written to {where}", f"{summary['written']:,}")
    console.print(t)
    if summary["for_inference"]:
        console.print(f"done in {summary['seconds']} s → {Path(summary['config']['out']) / 'for_inference.jsonl'} "
                      "(radgpt impress FILE --out impressions.jsonl)", highlight=False)
        return

    title = {"patient": "splits (by patient: a patient's reports stay in one split)",
             "report": "splits (by report: split.by=report — a patient's reports can be in two splits)",
             "split file": "splits (from the split file)"}[summary["split_by"]]
    s = Table(title=title, title_justify="left")
    for col in ("split", "records", "patients", "dups removed", "also in train",
                "findings words med/p95/max", "impression words med/p95/max"):
        s.add_column(col, justify="right")
    for name, d in summary["splits"].items():
        fw, iw = d["findings_words"], d["impression_words"]
        s.add_row(name, f"{d['records']:,}", f"{d['patients']:,}", f"{d['duplicates_removed']:,}",
                  f"{d['pairs_also_in_train']:,}" if name != "train" else "—",
                  f"{fw['median']:g}/{fw['p95']}/{fw['max']}", f"{iw['median']:g}/{iw['p95']}/{iw['max']}")
    console.print(s)
    if summary["split_by"] == "patient" and summary["reports_without_patient_id"]:
        console.print(f"[yellow]warning: {summary['reports_without_patient_id']:,} report(s) have an empty patient id "
                      "and were split by their report id[/]")
    if summary["pseudonymized"]:
        console.print("[yellow]ids are pseudonyms; id_map.csv links them to the real ids: keep it private, do not "
                      "share it with the data[/]")
    if summary["patients_in_two_splits_in_split_file"]:
        console.print(f"[yellow]warning: the split file puts {summary['patients_in_two_splits_in_split_file']} "
                      "patient(s) in more than one split[/]")
    console.print(f"done in {summary['seconds']} s → {summary['config']['out']}", highlight=False)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = config_help(PrepareConfig()) + """

columns.* not given are detected by name, ignoring case, spaces and _ (ReportText, Report Text, report_text);
a table with no patient column stops unless split.by=report.
precedence: defaults ← --config YAML ← flags (--out, --source, --split-file, --for-inference) ← key=value."""
    p.add_argument("inputs", nargs="*", metavar="PATH|key=value",
                   help="report files or folders (MIMIC tree/zip, OpenI XML/tgz, CSV/TSV, Excel .xlsx, JSONL, .txt); "
                        "items of the form key=value are config overrides, e.g. split.seed=7 columns.text=ReportText")
    p.add_argument("--out", help="output folder (default out/prepared; out=DIR and the YAML's out: are the "
                                 "same setting: --out wins over the YAML, and must agree with out=)")
    p.add_argument("--force", action="store_true", help="replace what an earlier prepare wrote into --out")
    p.add_argument("--for-inference", action="store_true",
                   help="findings only (impression not needed), no split: writes for_inference.jsonl for "
                        "`radgpt impress`, ids kept")
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
    # one precedence for every verb: defaults ← YAML ← flags ← key=value overrides
    flags = {key: value for key, value in (("out", args.out), ("source", args.source), ("split.file", args.split_file),
                                           ("for_inference", True if args.for_inference else None)) if value}
    cfg = load_config(PrepareConfig, args.config, overrides, flags=flags)
    if inputs:
        cfg.inputs = inputs
    # --out is the documented spelling; out=DIR is the config key, accepted too, but the two must not name
    # different folders (which one would win is not something to guess about an output folder)
    if args.out and any(o.split("=", 1)[0].strip() == "out" for o in overrides) and Path(cfg.out) != Path(args.out):
        raise FatalError(f"--out {args.out} and out={cfg.out} name different output folders; give it "
                         "once, as --out DIR")
    console = Console(stderr=True, quiet=args.quiet)
    summary = prepare(cfg, console, force=args.force)
    print_summary(summary, Console(quiet=args.quiet, width=max(120, Console().width)))
    if not summary["written"]:
        print(f"radgpt prepare: error: no usable reports in {', '.join(cfg.inputs)} "
              f"(see {Path(cfg.out) / 'skipped.jsonl'})", file=sys.stderr)
        return 1
    return 0
