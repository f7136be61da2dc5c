"""`load_model(spec)`: the model a name points to — a run folder, an export folder, a base model, a baseline,
or a model behind an OpenAI-compatible endpoint — on the backend asked for (see radgpt.impress.cli)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from radgpt.common.errors import FatalError
from radgpt.impress.model import BaseLMModel, ImpressionModel, LMModel
from radgpt.runs.folders import CONFIG_FILE, GGUF_FILE
from radgpt.runs.retrieval import load_cases
from radgpt.runs.run import RunFolder

DEFAULT_MODEL = "models/radgpt-smollm2-135m"
BACKENDS = ("auto", "transformers", "ct2", "llama.cpp")
REPO = Path(__file__).resolve().parents[2]
DEFAULT_CASES = "data/openi/clin-summ/train.jsonl"  # shipped with the repo (CC BY-NC-ND, see data/)


def _find_model_dir(spec: str | None) -> Path:
    if spec is None:
        for cand in (Path(DEFAULT_MODEL), REPO / DEFAULT_MODEL):
            if (cand / CONFIG_FILE).exists():
                return cand
        raise FatalError(f"the default model ({DEFAULT_MODEL}) is not in this checkout; pass --model RUN_FOLDER "
                         "(a finetune run), an export folder, or baseline:nearest")
    p = Path(spec).expanduser()
    if not p.is_dir():
        raise FatalError(f"{spec}: model folder not found (a finetune run folder, a radgpt export folder, a base "
                         "model: packaged:smollm2-135m-instruct, a Hugging Face folder or a .gguf file; "
                         "baseline:normal|nearest|last-sentence, or a name with --endpoint)")
    return p


def _index_for(run: RunFolder, cases: str | None):
    """Prior cases for a run: --cases when given (matched as the run was trained), else the run's own."""
    from radgpt.runs.retrieval import CaseIndex

    if cases:
        return CaseIndex(load_cases(cases), run.config.data.retrieval_match)
    return run.case_index(repo=REPO)


def _no_cases(folder: Path, k: int) -> FatalError:
    return FatalError(f"{folder}: the model wants {k} retrieved prior cases per prompt and the folder has none; "
                      "pass --cases FILE.jsonl with your own prior reports (one JSON object per line with id, "
                      "findings, impression; radgpt prepare's records/train.jsonl works)")


def load_model(spec: str | None = None, backend: str = "auto", device: str = "cpu", endpoint: str | None = None,
               endpoint_chat: bool = False, api_key: str | None = None, cases: str | None = None,
               template: str | None = None, instruction: str | None = None, shots: int | None = None,
               threads: int = 0, dtype: str | None = None, batch: bool = False, log=None) -> ImpressionModel:
    """The model named by `spec` (see the module docstring), ready to impress."""
    from radgpt.prepare.tasks import PAPER_INSTRUCTION
    from radgpt.runs.prompts import PromptTemplate
    from radgpt.runs.retrieval import CaseIndex

    log = log or (lambda m: print(f"radgpt: {m}", file=sys.stderr, flush=True))
    if spec and spec.startswith("baseline:"):
        from radgpt.impress.baselines import load_baseline

        return load_baseline(spec.split(":", 1)[1], cases=cases or _default_cases())
    if endpoint:
        from radgpt.impress.backends.openai import OpenAIBackend

        key = api_key or os.environ.get("RADGPT_ENDPOINT_KEY") or os.environ.get("OPENAI_API_KEY")
        be = OpenAIBackend(endpoint, spec or "radgpt", key, chat=endpoint_chat)
        run = RunFolder(template) if template and (Path(template) / CONFIG_FILE).is_file() else None
        if run is not None:
            # the run whose adapter the endpoint serves (vLLM --lora-modules): its prompt, instruction,
            # shots and cases, so the endpoint sees exactly the prompts the adapter was trained on
            instruction = instruction or run.config.data.instruction
            shots = run.config.data.retrieval_k if shots is None else shots
            index = _index_for(run, cases)
            if shots and index is None:
                raise _no_cases(run.path, shots)
        else:
            index = CaseIndex(load_cases(cases or _default_cases()))
        source = {"endpoint": endpoint, "adapter_sha256": run.adapter_sha256 if run else None}
        return LMModel(be, PromptTemplate.load(template or "alpaca"), instruction or PAPER_INSTRUCTION,
                       spec or "radgpt", index, shots or 0, source)
    from radgpt.runs.base_models import is_base_spec

    if spec and is_base_spec(spec):
        return _load_base(spec, backend, device, cases, template, instruction or PAPER_INSTRUCTION, shots or 0,
                          threads, dtype, batch, log)
    run = RunFolder(_find_model_dir(spec))
    data = run.config.data
    tmpl = PromptTemplate.load(template) if template else run.template()
    instr = instruction or data.instruction or PAPER_INSTRUCTION
    k = data.retrieval_k if shots is None else shots
    index = _index_for(run, cases)
    if k and index is None:
        raise _no_cases(run.path, k)
    from radgpt.export.engines import export_run, find_export
    from radgpt.impress.backends.transformers import TransformersBackend

    if backend not in BACKENDS:
        raise FatalError(f"unknown backend '{backend}' ({', '.join(BACKENDS)})")
    folder = run.path
    source = {"model_path": str(folder), "base": run.base, "adapter_sha256": run.adapter_sha256}
    if run.is_export:
        gguf = run.engine_file.name == GGUF_FILE
        if backend not in ("auto", "llama.cpp" if gguf else "ct2"):
            raise FatalError(f"{folder}: a {'GGUF' if gguf else 'CTranslate2'} export; use --backend "
                             f"{'llama.cpp' if gguf else 'ct2'} or the run folder it came from")
        be = _engine(folder, gguf, device, threads, batch)
    else:
        quant = "q8_0" if backend == "llama.cpp" else "int8"
        export_dir = find_export(run, quant) if backend != "transformers" else None
        if backend == "auto" and export_dir is None:  # no CTranslate2 export: a GGUF one, if made
            export_dir = find_export(run, "q8_0")
            backend = "llama.cpp" if export_dir is not None else backend
        if backend == "auto" and export_dir is None and device == "cpu" and run.base.startswith("packaged:"):
            # a run on a base radgpt ships (the default model): small enough that its CTranslate2 export takes
            # ~25 s once, after which every call is ~7x faster (11 s → 1.5 s per `radgpt impress "…"` here);
            # the one backend for single, batch and serve alike, so an impression never depends on how it
            # was asked for (#13). Larger bases stay on transformers until the user runs `radgpt export`.
            backend = "ct2"
        if backend in ("ct2", "llama.cpp") and export_dir is None:
            # exporting is `radgpt export`'s job; asking for an engine backend on a run that has none does it
            # once here, said out loud (it takes a while and writes to the radgpt cache)
            log(f"no {backend} export of {folder} yet: exporting it once into the radgpt cache "
                f"(radgpt export {folder}{' --quantization q8_0' if quant == 'q8_0' else ''} does the same) ...")
            export_dir = export_run(folder, quantization=quant, log=log)
        if export_dir is not None:
            be = _engine(export_dir, backend == "llama.cpp", device, threads, batch)
        else:
            be = TransformersBackend(folder, device=device, dtype=dtype, threads=threads)
    return LMModel(be, tmpl, instr, run.name, index, k, source)


def _engine(folder: Path, gguf: bool, device: str, threads: int, batch: bool):
    """An engine over an exported folder (llama.cpp for a GGUF, else CTranslate2). Batch jobs get two
    replicas, one core each (~15% more throughput on 2 cores); single impressions one, for the lowest latency."""
    from radgpt.impress.backends.ctranslate2 import CT2Backend
    from radgpt.impress.backends.llamacpp import LlamaCppBackend

    if gguf:
        return LlamaCppBackend(folder, threads=threads, parallel=2 if batch else 1)
    return CT2Backend(folder, device=device, threads=threads, inter_threads=2 if batch else 1)


def _load_base(spec: str, backend: str, device: str, cases: str | None, template: str | None, instruction: str,
               shots: int, threads: int, dtype: str | None, batch: bool, log) -> BaseLMModel:
    """A base model (radgpt.runs.base_models.is_base_spec) on the backend asked for. auto: its CTranslate2 copy when
    `--backend ct2` made one, else transformers. ct2 / llama.cpp make that copy once (radgpt.runs.base_models.base_engine)."""
    from radgpt.impress.backends.transformers import TransformersBackend
    from radgpt.runs.base_models import base_engine, base_name, resolve_base
    from radgpt.runs.prompts import ChatTemplate, PromptTemplate
    from radgpt.runs.retrieval import CaseIndex

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


