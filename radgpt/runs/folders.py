"""The run-folder contract: the files a finetune run, an export and a shared folder hold, what each is, and
how they are read back. Every module that reads or writes one of these names imports it from here."""

from __future__ import annotations

import json
import re
from pathlib import Path

from radgpt.common.hashing import sha256_file

CONFIG_FILE = "config.yaml"  # the resolved training config (runs.config.FinetuneConfig)
TEMPLATE_FILE = "prompt_template.json"  # the exact prompt format the model was trained on
CASES_FILE = "retrieval_cases.jsonl"  # prior cases retrieved into prompts (training reports, verbatim)
ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin")
VAL_METRICS = "val_metrics.json"  # written last by finetune: its presence means "finished"
VAL_PREDICTIONS = "val_predictions.jsonl"
TRAIN_LOG = "train_log.csv"
MODEL_CARD = "README.md"
EXPORT_INFO = "radgpt_export.json"  # what `radgpt export` made an export folder from
CT2_MODEL_FILE = "model.bin"
GGUF_FILE = "model.gguf"
SHARE_MANIFEST = "SHARED.json"
TOKENIZER_PREFIXES = ("tokenizer", "special_tokens", "vocab", "merges", "added_tokens", "chat_template")
CARD_SECTION = "## What this folder contains"

# What each file of a run or shared folder is, and whether it holds report text. The model card section
# "What this folder contains" and SHARED.json are written from this table.
FILE_NOTES = {
    "adapter_model.safetensors": ("the LoRA adapter weights", ("no (weights trained on the reports: a model can, "
                                  "rarely, reproduce a phrase it was trained on)")),
    "adapter_model.bin": ("the LoRA adapter weights (pickle format)", "no (weights, as above)"),
    "adapter_config.json": ("PEFT's adapter settings (rank, target modules, base name)", "no"),
    "model.safetensors": ("the full model weights (a full fine-tune or merged model)", "no (weights, as above)"),
    "model.safetensors.index.json": ("the index of sharded full-model weights", "no"),
    "config.json": ("the full model's architecture", "no"),
    "generation_config.json": ("the full model's generation defaults", "no"),
    "config.yaml": ("the resolved training config (base model, LoRA, prompt, retrieval_k)", ("no (data paths: in "
                    "a run folder they name the training files; a shared folder has them removed)")),
    "prompt_template.json": ("the exact prompt format the model was trained on", "no"),
    "chat_template.jinja": ("the tokenizer's chat template", "no"),
    "README.md": ("this model card", "no, unless its author pasted report text into it"),
    "val_metrics.json": ("validation scores and training counts", "no (numbers only)"),
    "train_log.csv": ("loss, learning rate and throughput per optimizer step", "no (numbers only)"),
    "loss.png": ("the training loss curve", "no"),
    CASES_FILE: (("the prior cases retrieved into each prompt: the training reports' findings and impressions "
                 "with their ids"), "YES, verbatim"),
    "val_predictions.jsonl": ("the model's validation impressions beside the reference impressions, with ids",
                              "YES, the validation references verbatim"),
    "checkpoints/": ("mid-training states (trainable weights, optimizer)", "no (weights and numbers)"),
    SHARE_MANIFEST: ("what radgpt export shared and left out", "no"),
    EXPORT_INFO: ("what radgpt export made this folder from", "no"),
    "model.bin": ("the CTranslate2 model (merged weights)", "no (weights, as above)"),
    GGUF_FILE: ("the llama.cpp model (merged weights)", "no (weights, as above)"),
    "tokenizer files": ("the tokenizer, saved from the base model", "no"),
}


def describe(folder: Path) -> list[tuple[str, str, str]]:
    """(file, what it is, holds report text?) for each file of a run, shared or export folder."""
    rows, tokenizer = [], []
    for p in sorted(folder.iterdir()):
        name = p.name + ("/" if p.is_dir() else "")
        if name.startswith(TOKENIZER_PREFIXES) and name not in FILE_NOTES:
            tokenizer.append(name)
        elif name in FILE_NOTES:
            rows.append((name, *FILE_NOTES[name]))
        elif re.fullmatch(r"model-\d+-of-\d+\.safetensors", name):
            rows.append((name, "a shard of the full model weights", "no (weights)"))
        else:
            rows.append((name, "not written by radgpt", "unknown: check it"))
    if tokenizer:
        rows.append((", ".join(tokenizer), *FILE_NOTES["tokenizer files"][:1], "no"))
    return rows


def engine_file(folder: Path) -> Path | None:
    """An export folder's engine file: CTranslate2's model.bin or llama.cpp's model.gguf (None elsewhere)."""
    for name in (CT2_MODEL_FILE, GGUF_FILE):
        if (Path(folder) / name).exists():
            return Path(folder) / name
    return None


def export_meta(folder: Path) -> dict:
    """What `radgpt export` recorded about an export folder (source run, base, adapter hash, quantization)."""
    path = Path(folder) / EXPORT_INFO
    return json.loads(path.read_text()) if path.exists() else {}


def shared_without_cases(folder: str | Path) -> bool:
    """Whether `folder` was shared with its cases left out (impress must then not look for reports elsewhere)."""
    try:
        return json.loads((Path(folder) / SHARE_MANIFEST).read_text()).get("cases") == "left out"
    except (OSError, ValueError, AttributeError):
        return False


def adapter_hash(run: Path) -> str | None:
    for name in WEIGHT_FILES:
        if (run / name).exists():
            return sha256_file(run / name)
    return None


