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
import csv
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from radgpt.errors import FatalError
from radgpt.generate import PRESETS, Decoding
from radgpt.prompts import clean_placeholders

DEFAULT_MODEL = "models/radgpt-smollm2-135m"
BACKENDS = ("auto", "transformers", "ct2", "llama.cpp")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_CASES = "data/openi/clin-summ/train.jsonl"  # shipped with the repo (CC BY-NC-ND, see data/)
# A generation is cut at these (a model that runs on into another example); never part of an impression.
STOP_STRINGS = ("\n###", "\nFindings:", "\nImpression:", "\n\n\n")


@dataclass
class SimilarCase:
    id: str
    findings: str
    impression: str
    score: float

    def to_dict(self) -> dict:
        return {"id": self.id, "score": round(self.score, 4), "findings": self.findings,
                "impression": self.impression}


@dataclass
class Impression:
    impression: str
    similar_cases: list[SimilarCase] = field(default_factory=list)
    shot_ids: list[str] = field(default_factory=list)  # the cases put into the prompt, in prompt order
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # disagreements with the findings (radgpt.evaluate.faithfulness.consistency_flags), most severe first
    flags: list[dict] = field(default_factory=list)
    # what the faithfulness repair changed: {"action": "removed" | "added_from_findings", "sentence"}
    repairs: list[dict] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def adapter_hash(run: Path) -> str | None:
    for name in ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin"):
        if (run / name).exists():
            return sha256_file(run / name)
    return None


def finish(findings: str, text: str, hits: list, repair: bool) -> tuple[str, list[dict], list[dict]]:
    """A generated impression as shown to a reader: (text, repairs, flags). With `repair`, sentences stating a
    finding the findings do not state are dropped and a stated critical or major finding the model left out
    is added in the findings' own words (radgpt.evaluate.faithfulness.repair); the flags are those of the
    final text, checked against the findings and the prior cases retrieved for it. On OpenI validate it took missed-abnormal from 35% to 11% (transformers; README)."""
    from radgpt.evaluate.faithfulness import consistency_flags
    from radgpt.evaluate.faithfulness import repair as repair_text

    repairs: list[dict] = []
    if repair:
        text, repairs = repair_text(findings, text)
        if repairs:  # added sentences are the findings' words, de-identification placeholders included
            text = clean_placeholders(text)
            repairs = [{**a, "sentence": clean_placeholders(a["sentence"])} for a in repairs]
    return text, repairs, consistency_flags(findings, text, [(c.id, c.impression) for c, _ in hits])


def load_cases(path: str | Path):
    """(id, findings, impression) cases from JSONL: radgpt's {id, findings, impression} or clin-summ's
    {idx, inputs, target}."""
    from radgpt.retrieval import Case

    path = Path(path)
    if not path.is_file():
        raise FatalError(f"{path}: cases file not found")
    cases = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            cid = next(str(r[k]) for k in ("id", "idx", "uid") if k in r)
            f = next(r[k] for k in ("findings", "inputs", "input") if k in r)
            i = next(r[k] for k in ("impression", "target", "output") if k in r)
        except (json.JSONDecodeError, StopIteration, TypeError):
            raise FatalError(f"{path}:{n}: expected a JSON object with id, findings and impression") from None
        cases.append(Case(cid, f, i))
    if not cases:
        raise FatalError(f"{path}: no cases")
    return cases


class ImpressionModel:
    """Findings → impression. Subclasses: LMModel (a backend + prompt template) and the baselines."""

    name = "model"
    kind = "model"
    shots = 0  # retrieved cases put into each prompt
    repair = False  # faithfulness repair of the generated text (see `finish`)
    index = None  # radgpt.retrieval.CaseIndex, or None when there are no prior cases to show
    tokenizer = None

    def prompt(self, findings: str, shots: list) -> str:
        return findings

    def generate(self, prompts: list[str], decoding: Decoding, max_tokens=None, on_delta=None, should_stop=None):
        raise NotImplementedError

    def provenance(self) -> dict:
        return {"model": self.name, "kind": self.kind}

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def retrieve(self, findings: list[str], k: int) -> list[list]:
        if self.index is None or k <= 0 or not findings:
            return [[] for _ in findings]
        return self.index.search_many(findings, k)

    def prepare(self, findings: list[str], similar: int = 3) -> tuple[list[str], list[list], list[list[str]]]:
        """Prompts, retrieved (case, score) hits and shot ids for each findings text."""
        hits = self.retrieve(findings, max(self.shots, similar))
        prompts, shot_ids = [], []
        for f, h in zip(findings, hits):
            shots = list(reversed(h[: self.shots]))  # most similar last, as in training (instruct_data)
            prompts.append(self.prompt(f, shots))
            shot_ids.append([c.id for c, _ in shots])
        return prompts, hits, shot_ids

    @staticmethod
    def similar_cases(hits: list, similar: int) -> list[SimilarCase]:
        return [SimilarCase(c.id, c.findings, c.impression, s) for c, s in hits[:similar]]

    def impress(self, findings: list[str], decoding: Decoding = PRESETS["greedy"], similar: int = 3,
                max_tokens: list[int] | None = None, on_delta=None, repair: bool | None = None) -> list[Impression]:
        """repair: make each impression state what its findings state and nothing else (`finish`); default:
        the model's own setting (on for language models, off for baselines)."""
        prompts, hits, shot_ids = self.prepare(findings, similar)
        gens = self.generate(prompts, decoding, max_tokens=max_tokens, on_delta=on_delta)
        out = []
        for f, g, h, s in zip(findings, gens, hits, shot_ids):
            text, repairs, flags = finish(f, g.text, h, self.repair if repair is None else repair)
            out.append(Impression(text, self.similar_cases(h, similar), s, g.finish_reason, g.prompt_tokens,
                                  g.completion_tokens, flags, repairs))
        return out

    def close(self) -> None:
        pass


class LMModel(ImpressionModel):
    """A language model behind a Backend, prompted with the run's own template (and retrieved shots)."""

    repair = True

    def __init__(self, backend, template, instruction: str, name: str, index=None, shots: int = 0,
                 source: dict | None = None):
        self.backend, self.template, self.instruction = backend, template, instruction
        self.name, self.index, self.shots = name, index, shots
        self.tokenizer = getattr(backend, "tokenizer", None)
        self.source = source or {}
        # the text all prompts share: rendered for two different inputs (and shots), their common start
        a = template.render(instruction, "Alpha.", [("a", "b")] * shots)
        b = template.render(instruction, "Zulu.", [("y", "z")] * shots)
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        self.static_prefix = a[:n]
        if hasattr(backend, "set_static_prefix"):
            backend.set_static_prefix(self.static_prefix)

    def prompt(self, findings: str, shots: list) -> str:
        return self.template.render(self.instruction, findings.strip(),
                                    [(c.findings, c.impression) for c, _ in shots])

    def count_tokens(self, text: str) -> int:
        return self.backend.count_tokens(text)

    def generate(self, prompts, decoding, max_tokens=None, on_delta=None, should_stop=None, stops=None):
        """stops[i]: strings that end row i (default STOP_STRINGS; () for a client's raw prompt). Streamed
        text never includes a stop string: a tail that could start one is held back until it cannot."""
        from radgpt.backends import Generation

        n = len(prompts)
        stops = [STOP_STRINGS] * n if stops is None else [tuple(s) for s in stops]
        limits = list(max_tokens) if max_tokens else [0] * n
        if not decoding.do_sample and n > 1:  # identical prompts decode identically: run each once
            first: dict = {}
            src = [first.setdefault((prompts[i], limits[i], stops[i]), len(first)) for i in range(n)]
            if len(first) < n:
                uniq = [0] * len(first)
                members: list[list[int]] = [[] for _ in first]
                for i in reversed(range(n)):
                    uniq[src[i]] = i
                    members[src[i]].insert(0, i)
                sub_delta = None if on_delta is None else (lambda u, d: [on_delta(i, d) for i in members[u]])
                sub_stop = None if should_stop is None else (lambda u: all(should_stop(i) for i in members[u]))
                gens = self.generate([prompts[j] for j in uniq], decoding, [limits[j] for j in uniq], sub_delta,
                                     sub_stop, [stops[j] for j in uniq])
                return [gens[src[i]] for i in range(n)]
        texts, sent, cut = [""] * n, [0] * n, [False] * n

        def first_stop(i: int, text: str) -> int:
            return min((text.find(s) for s in stops[i] if s in text), default=-1)

        def delta(i, d):
            if cut[i]:
                return
            texts[i] += d
            base = texts[i].lstrip() if stops[i] else texts[i]  # the final text is stripped too
            stop = first_stop(i, base)
            keep = base if stop < 0 else base[:stop]
            cut[i] = stop >= 0
            hold = 0 if cut[i] else max((k for s in stops[i] for k in range(1, len(s)) if keep.endswith(s[:k])),
                                        default=0)
            upto = len(keep) - hold
            if stops[i] and upto > 0:
                upto = len(keep[:upto].rstrip()) if not cut[i] else len(keep.rstrip())
                if not cut[i]:  # a trailing "XX" may be the start of a placeholder: hold it
                    upto = len(keep[:upto].rstrip("X"))
                keep = clean_placeholders(keep[:upto])
                upto = len(keep)
            if upto > sent[i] and on_delta is not None:
                on_delta(i, keep[sent[i]:upto])
                sent[i] = upto

        def stop(i):
            return cut[i] or (should_stop is not None and should_stop(i))

        # token callbacks cost (the backend calls into Python per token): only when someone streams or cancels
        live = on_delta is not None or should_stop is not None
        gens = self.backend.generate(prompts, decoding, max_tokens=max_tokens, on_delta=delta if live else None,
                                     should_stop=stop if live else None)
        out = []
        for i, g in enumerate(gens):
            text, reason = g.text, g.finish_reason
            at = first_stop(i, text)
            if at >= 0:
                text, reason = text[:at], "stop"
            if stops[i]:  # an impression (not a client's raw completion): as shown to a clinician
                text = clean_placeholders(text.strip())
            if on_delta is not None and len(text) > sent[i]:
                on_delta(i, text[sent[i]:])
            out.append(Generation(text, reason, g.prompt_tokens, g.completion_tokens))
        return out

    def provenance(self) -> dict:
        return {"model": self.name, "kind": self.kind, **self.backend.info(), **self.source,
                "prompt_template": self.template.name, "instruction": self.instruction, "shots": self.shots}


class BaseLMModel(LMModel):
    """A general instruction model with no radgpt adapter (the paper's comparison): the paper's instruction in
    the model's own chat template, zero-shot or with `shots` retrieved examples as earlier turns."""

    kind = "base"

    def provenance(self) -> dict:
        return {**super().provenance(), "prompting": f"{self.shots}-shot" if self.shots else "zero-shot"}


def _find_model_dir(spec: str | None) -> Path:
    if spec is None:
        for cand in (Path(DEFAULT_MODEL), REPO / DEFAULT_MODEL):
            if (cand / "config.yaml").exists():
                return cand
        raise FatalError(f"the default model ({DEFAULT_MODEL}) is not in this checkout; pass --model RUN_FOLDER "
                         "(a finetune run), an export folder, or baseline:nearest")
    p = Path(spec).expanduser()
    if not p.is_dir():
        raise FatalError(f"{spec}: model folder not found (a finetune run folder, a radgpt export folder, a base "
                         "model: packaged:smollm2-135m-instruct, a Hugging Face folder or a .gguf file; "
                         "baseline:normal|nearest|last-sentence, or a name with --endpoint)")
    return p


def _index_for(folder: Path, cfg: dict, cases: str | None):
    from radgpt.retrieval import CaseIndex

    match = (cfg.get("data") or {}).get("retrieval_match", "words")  # as the run was trained
    if cases:
        return CaseIndex(load_cases(cases), match)
    idx = CaseIndex.load(folder, match)
    if idx is not None:
        return idx
    from radgpt.export import shared_without_cases

    if shared_without_cases(folder):  # shared without its cases: never someone else's reports instead
        return None
    train = (cfg.get("data") or {}).get("train")
    for cand in ([Path(train), REPO / train] if train else []):
        if cand.is_file() and cand.suffix == ".jsonl":
            try:
                return CaseIndex(load_cases(cand), match)
            except FatalError:
                return None
    return None


def _no_cases(folder: Path, k: int) -> FatalError:
    return FatalError(f"{folder}: the model wants {k} retrieved prior cases per prompt and the folder has none; "
                      "pass --cases FILE.jsonl with your own prior reports (one JSON object per line with id, "
                      "findings, impression; radgpt prepare's records/train.jsonl works)")


def load_model(spec: str | None = None, backend: str = "auto", device: str = "cpu", endpoint: str | None = None,
               endpoint_chat: bool = False, api_key: str | None = None, cases: str | None = None,
               template: str | None = None, instruction: str | None = None, shots: int | None = None,
               threads: int = 0, dtype: str = "fp32", batch: bool = False, log=None) -> ImpressionModel:
    """The model named by `spec` (see the module docstring), ready to impress."""
    import yaml

    from radgpt.prompts import PromptTemplate
    from radgpt.reports.tasks import PAPER_INSTRUCTION
    from radgpt.retrieval import CaseIndex

    log = log or (lambda *a: None)
    if spec and spec.startswith("baseline:"):
        from radgpt.baselines import load_baseline

        return load_baseline(spec.split(":", 1)[1], cases=cases or _default_cases())
    if endpoint:
        from radgpt.backends import OpenAIBackend

        key = api_key or os.environ.get("RADGPT_ENDPOINT_KEY") or os.environ.get("OPENAI_API_KEY")
        be = OpenAIBackend(endpoint, spec or "radgpt", key, chat=endpoint_chat)
        run = Path(template) if template and Path(template).is_dir() else None
        if run is not None and (run / "config.yaml").exists():
            # the run whose adapter the endpoint serves (vLLM --lora-modules): its prompt, instruction,
            # shots and cases, so the endpoint sees exactly the prompts the adapter was trained on
            data = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("data") or {}
            instruction = instruction or data.get("instruction")
            shots = data.get("retrieval_k", 0) if shots is None else shots
            index = _index_for(run, {"data": data}, cases)
            if shots and index is None:
                raise _no_cases(run, shots)
        else:
            index = CaseIndex(load_cases(cases or _default_cases()))
        source = {"endpoint": endpoint, "adapter_sha256": adapter_hash(run) if run else None}
        return LMModel(be, PromptTemplate.load(template or "alpaca"), instruction or PAPER_INSTRUCTION,
                       spec or "radgpt", index, shots or 0, source)
    from radgpt.models import is_base_spec

    if spec and is_base_spec(spec):
        return _load_base(spec, backend, device, cases, template, instruction or PAPER_INSTRUCTION, shots or 0,
                          threads, dtype, batch, log)
    folder = _find_model_dir(spec)
    cfg = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").exists() else {}
    data = cfg.get("data") or {}
    tmpl = PromptTemplate.load(template or folder)
    instr = instruction or data.get("instruction") or PAPER_INSTRUCTION
    k = data.get("retrieval_k", 0) if shots is None else shots
    index = _index_for(folder, cfg, cases)
    if k and index is None:
        raise _no_cases(folder, k)
    from radgpt import export as ex
    from radgpt.backends import TransformersBackend, export_meta
    from radgpt.export_gguf import GGUF_FILE

    if backend not in BACKENDS:
        raise FatalError(f"unknown backend '{backend}' ({', '.join(BACKENDS)})")
    engine_file = ex.export_model_file(folder)
    if engine_file is not None:  # an export folder
        gguf = engine_file.name == GGUF_FILE
        meta = export_meta(folder)
        if backend not in ("auto", "llama.cpp" if gguf else "ct2"):
            raise FatalError(f"{folder}: a {'GGUF' if gguf else 'CTranslate2'} export; use --backend "
                             f"{'llama.cpp' if gguf else 'ct2'} or the run folder it came from")
        be = _engine(folder, gguf, device, threads, batch)
        source = {"model_path": str(folder), "base": meta.get("base"), "adapter_sha256": meta.get("adapter_sha256")}
    else:
        digest = adapter_hash(folder)
        source = {"model_path": str(folder), "base": (cfg.get("model") or {}).get("base"), "adapter_sha256": digest}
        quant = "q8_0" if backend == "llama.cpp" else "int8"
        export_dir = ex.find_export(folder, digest, quant) if backend != "transformers" else None
        if backend == "auto" and export_dir is None:  # no CTranslate2 export: a GGUF one, if made
            export_dir = ex.find_export(folder, digest, "q8_0")
            backend = "llama.cpp" if export_dir is not None else backend
        if backend in ("ct2", "llama.cpp") and export_dir is None:
            log(f"no {backend} export of {folder} yet: exporting (once) ...")
            export_dir = ex.export_run(folder, quantization=quant, log=log)
        if export_dir is not None:
            be = _engine(export_dir, backend == "llama.cpp", device, threads, batch)
        else:
            be = TransformersBackend(folder, device=device, dtype=dtype, threads=threads)
    name = folder.resolve().name
    return LMModel(be, tmpl, instr, name, index, k, source)


def _engine(folder: Path, gguf: bool, device: str, threads: int, batch: bool):
    """An engine over an exported folder (llama.cpp for a GGUF, else CTranslate2). Batch jobs get two
    replicas, one core each (~15% more throughput on 2 cores); single impressions one, for the lowest latency."""
    from radgpt.backends import CT2Backend, LlamaCppBackend

    if gguf:
        return LlamaCppBackend(folder, threads=threads, parallel=2 if batch else 1)
    return CT2Backend(folder, device=device, threads=threads, inter_threads=2 if batch else 1)


def _load_base(spec: str, backend: str, device: str, cases: str | None, template: str | None, instruction: str,
               shots: int, threads: int, dtype: str, batch: bool, log) -> BaseLMModel:
    """A base model (radgpt.models.is_base_spec) on the backend asked for. auto: its CTranslate2 copy when
    `--backend ct2` made one, else transformers. ct2 / llama.cpp make that copy once (radgpt.models.base_engine)."""
    from radgpt.backends import TransformersBackend
    from radgpt.models import base_engine, base_name, resolve_base
    from radgpt.prompts import ChatTemplate, PromptTemplate
    from radgpt.retrieval import CaseIndex

    if backend not in BACKENDS:
        raise FatalError(f"unknown backend '{backend}' ({', '.join(BACKENDS)})")
    index = CaseIndex(load_cases(cases or _default_cases()))  # shots, and the similar cases shown with each
    if backend == "auto":
        folder = base_engine(spec, "ct2", make=False)
        backend = "ct2" if folder is not None else "transformers"
        if folder is None and batch:
            log(f"{spec}: a base model on transformers; --backend ct2 converts it once and runs several "
                "times faster")
    if backend == "transformers":
        be = TransformersBackend.from_base(spec, device=device, dtype=dtype, threads=threads)
    else:
        be = _engine(base_engine(spec, backend, log=log), backend == "llama.cpp", device, threads, batch)
    if template:
        tmpl = PromptTemplate.load(template)
    elif getattr(be.tokenizer, "chat_template", None):
        tmpl = ChatTemplate(be.tokenizer)
    else:  # a plain (not chat-tuned) model: radgpt's alpaca template
        log(f"{spec}: the tokenizer has no chat template; prompting with the alpaca template")
        tmpl = PromptTemplate.load("alpaca")
    path = resolve_base(spec)
    source = {"model_path": path, "base": spec, "adapter_sha256": None}
    if isinstance(tmpl, ChatTemplate):
        source["chat_template_sha256"] = tmpl.sha256
    return BaseLMModel(be, tmpl, instruction, base_name(spec), index, shots, source)


def _default_cases() -> str:
    for cand in (Path(DEFAULT_CASES), REPO / DEFAULT_CASES):
        if cand.is_file():
            return str(cand)
    raise FatalError(f"no cases for retrieval ({DEFAULT_CASES} not found); pass --cases FILE.jsonl")


# ---------------------------------------------------------------------------------------- input readers
@dataclass
class Record:
    id: str
    findings: str
    where: str  # file:line, for messages


@dataclass
class Bad:
    where: str
    message: str


FINDINGS_FIELDS = ("findings", "inputs", "input", "text")
ID_FIELDS = ("id", "idx", "uid", "study_id")


def _decode(raw: bytes, where: str) -> str | Bad:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Bad(where, f"not UTF-8 text (byte {e.start})")


def read_lines(stream, label: str) -> Iterator[Record | Bad]:
    for n, raw in enumerate(stream, 1):
        text = _decode(raw.rstrip(b"\r\n"), f"{label}:{n}")
        if isinstance(text, Bad):
            yield text
        elif text.strip():
            yield Record(f"{Path(label).name}:{n}", text.strip(), f"{label}:{n}")


def read_jsonl(stream, label: str, field: str | None, id_field: str | None) -> Iterator[Record | Bad]:
    for n, raw in enumerate(stream, 1):
        where = f"{label}:{n}"
        text = _decode(raw, where)
        if isinstance(text, Bad):
            yield text
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield Bad(where, f"invalid JSON ({e.msg})")
            continue
        if not isinstance(obj, dict):
            yield Bad(where, "expected a JSON object")
            continue
        f = field or next((k for k in FINDINGS_FIELDS if k in obj), None)
        if f is None or f not in obj:
            yield Bad(where, f"no findings field ({field or ', '.join(FINDINGS_FIELDS)}); name it with --field")
            continue
        value = obj[f]
        if not isinstance(value, str):
            yield Bad(where, f"field '{f}' must be text, got {type(value).__name__}")
            continue
        if not value.strip():
            yield Bad(where, "empty findings")
            continue
        idf = id_field or next((k for k in ID_FIELDS if k in obj), None)
        rid = str(obj[idf]) if idf and obj.get(idf) is not None else f"{Path(label).name}:{n}"
        yield Record(rid, value.strip(), where)


def read_csv(path: Path, column: str | None, id_field: str | None) -> Iterator[Record | Bad]:
    raw = path.read_bytes()
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    cols = reader.fieldnames or []
    col = column or next((c for c in ("findings", "inputs", "input", "text") if c in cols), None)
    if col is None or col not in cols:
        raise FatalError(f"{path}: no column '{column or 'findings'}' (columns: {', '.join(cols) or 'none'}); "
                         "name it with --column")
    idc = id_field or next((c for c in ("id", "uid", "idx", "study_id") if c in cols), None)
    for row in reader:
        where = f"{path}:{reader.line_num}"
        value = row.get(col)
        if value is None:
            yield Bad(where, f"row has no '{col}' value")
            continue
        if any("\udc80" <= ch <= "\udcff" for ch in value):
            yield Bad(where, "not UTF-8 text")
            continue
        if not value.strip():
            yield Bad(where, "empty findings")
            continue
        rid = row.get(idc) if idc else None
        yield Record(str(rid) if rid else f"{path.name}:{reader.line_num}", value.strip(), where)


def read_inputs(inputs: list[str], fmt: str, field: str | None, column: str | None, id_field: str | None
                ) -> Iterator[Record | Bad]:
    """Records from the positional inputs: files (txt/jsonl/csv by extension or --input-format), '-' for
    stdin (one findings per line, or JSONL with --input-format jsonl), or the findings text itself."""
    if not inputs:
        if sys.stdin is None or sys.stdin.isatty():
            raise FatalError("no findings: give them as an argument, a file (txt, jsonl, csv), or '-' for stdin")
        inputs = ["-"]
    for n, item in enumerate(inputs, 1):
        p = Path(item)
        if item == "-":
            kind = fmt if fmt != "auto" else "txt"
            stream = sys.stdin.buffer
            yield from (read_jsonl(stream, "<stdin>", field, id_field) if kind == "jsonl"
                        else read_lines(stream, "<stdin>"))
        elif p.is_file():
            kind = fmt if fmt != "auto" else {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
                                              ".csv": "csv"}.get(p.suffix.lower(), "txt")
            if kind == "csv":
                yield from read_csv(p, column, id_field)
            else:
                with open(p, "rb") as f:
                    yield from (read_jsonl(f, str(p), field, id_field) if kind == "jsonl" else read_lines(f, str(p)))
        elif p.suffix.lower() in (".txt", ".jsonl", ".csv", ".json", ".ndjson") and " " not in item:
            raise FatalError(f"{item}: file not found")
        elif not item.strip():
            yield Bad(f"argument {n}", "empty findings")
        else:
            yield Record(f"arg{n}", item.strip(), f"argument {n}")


# ---------------------------------------------------------------------------------------- the verb
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
