"""`RunFolder`: the one way to read a model folder — a finetune run (LoRA adapter or full weights), a merged
folder (`radgpt merge`) or an export (`radgpt export`: CTranslate2 / GGUF) — with its typed config, adapter hash,
prompt template and prior cases. impress, serve, export, merge and finetune (`lora.init_from`) all go through it,
so a file name or config field is defined once (radgpt.runs.folders, radgpt.runs.config).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

from radgpt.common.config import ConfigError, load_config
from radgpt.common.errors import FatalError
from radgpt.runs.base_models import load_base_model, load_tokenizer, quiet_transformers
from radgpt.runs.config import RunConfig
from radgpt.runs.folders import (
    ADAPTER_CONFIG,
    CASES_FILE,
    CONFIG_FILE,
    adapter_hash,
    engine_file,
    export_meta,
    shared_without_cases,
)
from radgpt.runs.prompts import PromptTemplate


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    template: PromptTemplate
    base: str
    adapter: str | None
    config: RunConfig


class RunFolder:
    """A model folder on disk. Opening one checks it is a radgpt folder; the config is read (strictly: an
    unknown key is an error naming the file and key) the first time it is needed."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise FatalError(f"{path}: model folder not found")
        if not (self.path / CONFIG_FILE).exists():
            raise FatalError(f"{path}: not a radgpt run or export folder (no {CONFIG_FILE})")

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @functools.cached_property
    def config(self) -> RunConfig:
        try:
            return load_config(RunConfig, self.path / CONFIG_FILE)
        except ConfigError as e:
            raise FatalError(f"{e} (a run folder's {CONFIG_FILE} is read with the same keys finetune writes; "
                             "was it written by another radgpt version or edited by hand?)") from None

    @property
    def base(self) -> str:
        """The base model the adapter was trained on (for an export: as the source run's config names it)."""
        return self.config.model.base

    @functools.cached_property
    def adapter_sha256(self) -> str | None:
        """sha256 of the weights file (adapter or full model) of a run; for an export, that of its source run."""
        own = adapter_hash(self.path)
        return own if own is not None else self.export_info.get("adapter_sha256")

    @property
    def engine_file(self) -> Path | None:
        """An export's engine file: CTranslate2's model.bin or llama.cpp's model.gguf (None for a run folder)."""
        return engine_file(self.path)

    @property
    def is_export(self) -> bool:
        return self.engine_file is not None

    @functools.cached_property
    def export_info(self) -> dict:
        return export_meta(self.path)

    @property
    def shared_without_cases(self) -> bool:
        return shared_without_cases(self.path)

    @property
    def has_cases(self) -> bool:
        return (self.path / CASES_FILE).exists()

    def template(self) -> PromptTemplate:
        return PromptTemplate.load(self.path)

    def case_index(self, repo: Path | None = None):
        """The prior cases the run retrieves from, matched as it was trained (`data.retrieval_match`): the folder's
        own, else its training file when that is on this machine (relative paths also from `repo`); never
        someone else's when the folder was shared without them. None when there are none."""
        from radgpt.runs.retrieval import CaseIndex, load_cases

        match = self.config.data.retrieval_match
        index = CaseIndex.load(self.path, match)
        if index is not None or self.shared_without_cases:
            return index
        train = self.config.data.train
        for cand in ([Path(train)] + ([repo / train] if repo else []) if train else []):
            if cand.is_file() and cand.suffix == ".jsonl":
                try:
                    return CaseIndex(load_cases(cand), match)
                except FatalError:
                    return None
        return None

    def load(self, device: str = "cpu", merge: bool = True) -> LoadedModel:
        """Exactly what the run trained: base + adapter (merged by default) + tokenizer + template + config."""
        from peft import PeftModel

        if self.is_export:
            raise FatalError(f"{self.path}: an export folder (engine weights only); load it with the ct2 / llama.cpp "
                             "backend, or use the run folder it came from")
        base = self.base
        template = self.template()
        quiet_transformers()
        adapter = None
        if (self.path / ADAPTER_CONFIG).exists():
            tok = load_tokenizer(base)
            with warnings.catch_warnings():
                # PeftModel reads `is_gradient_checkpointing`, which transformers 5 deprecates (a FutureWarning
                # impress and serve would print on every start); that one message only
                warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated",
                                        category=FutureWarning)
                model = PeftModel.from_pretrained(load_base_model(base, device=device), str(self.path))
            adapter = str(self.path)
            if merge:
                model = model.merge_and_unload()
        elif (self.path / "model.safetensors").exists() or (self.path / "model.safetensors.index.json").exists():
            # a merged model or a full fine-tune: the folder is the whole model
            tok = load_tokenizer(str(self.path))
            model = load_base_model(str(self.path), device=device)
        else:
            raise FatalError(f"{self.path}: no adapter ({ADAPTER_CONFIG}) or model weights in the run folder")
        model.eval()
        return LoadedModel(model, tok, template, base, adapter, self.config)
