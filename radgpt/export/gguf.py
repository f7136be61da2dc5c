"""`radgpt export --quantization q8_0` (or f16, f32): a finetune run → one .gguf file for llama.cpp.

    radgpt export models/radgpt-smollm2-135m --quantization q8_0    # → the radgpt cache; impress finds it

Only for runs whose base is itself a GGUF (the packaged SmolLM2 default, or a `model.base=/x.gguf`): the
base file supplies the architecture and tokenizer metadata, which are copied as they are; the weights are
the run's merged weights (base + LoRA), re-quantised. For a Hugging Face base, `radgpt merge` the run and
use llama.cpp's own converter (convert_hf_to_gguf.py) on the merged folder.

The tensor layout follows llama.cpp's "llama" architecture: HF names map to GGUF names below, and the
query/key rows are reordered for llama.cpp's RoPE (GGML rotates adjacent pairs; HF rotates two halves).
transformers' GGUF loader undoes both, which is how the tests check an export: load it back with
transformers and compare logits with the merged model.
"""

from __future__ import annotations

import re
from pathlib import Path

from radgpt.common.errors import FatalError

GGUF_QUANTIZATIONS = {"q8_0": ("Q8_0", 7), "f16": ("F16", 1), "f32": ("F32", 0)}  # name: (ggml type, file_type)

_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def gguf_name(hf_name: str) -> str | None:
    """GGUF tensor name for a Llama-family HF parameter name (None: no GGUF counterpart)."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf_name in fixed:
        return fixed[hf_name]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", hf_name)
    if m and m.group(2) in _LAYER:
        return f"blk.{m.group(1)}.{_LAYER[m.group(2)]}.weight"
    return None


def rope_rows(w, n_head: int):
    """Reorder q/k projection rows from HF's rotate-half layout to GGML's adjacent pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def base_gguf(base: str) -> Path:
    from radgpt.runs.base_models import packaged_gguf

    if base.startswith("packaged:"):
        return packaged_gguf(base.split(":", 1)[1])
    if base.lower().endswith(".gguf") and Path(base).expanduser().is_file():
        return Path(base).expanduser()
    raise FatalError(f"GGUF export needs a run whose base is a GGUF file (the packaged default or "
                     f"model.base=FILE.gguf), not '{base}': its tokenizer and metadata are copied from it. For a "
                     "Hugging Face base: radgpt merge RUN --out MERGED, then llama.cpp's convert_hf_to_gguf.py MERGED")


def write_gguf(model, source: Path, out: Path, quantization: str = "q8_0", extra: dict | None = None) -> Path:
    """Write `model`'s weights (a Llama-family HF model) as a GGUF with `source`'s metadata."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import quantize

    if quantization not in GGUF_QUANTIZATIONS:
        raise FatalError(f"unknown GGUF quantization '{quantization}' ({', '.join(GGUF_QUANTIZATIONS)})")
    qname, file_type = GGUF_QUANTIZATIONS[quantization]
    qtype = GGMLQuantizationType[qname]
    reader = GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents()
    if arch != "llama":
        raise FatalError(f"{source}: architecture '{arch}'; GGUF export handles llama-architecture models")
    n_head = int(reader.fields["llama.attention.head_count"].contents())
    n_kv = int(reader.fields["llama.attention.head_count_kv"].contents())
    weights = {}
    for hf, t in model.state_dict().items():
        name = gguf_name(hf)
        if name is not None:
            weights[name] = t.detach().float().cpu().numpy()

    writer = GGUFWriter(str(out), arch)
    for f in reader.fields.values():  # architecture, tokenizer, chat template: as in the base file
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        value = file_type if f.name == "general.file_type" else f.contents()
        sub = f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(f.name, value, f.types[0], sub_type=sub)
    for key, value in (extra or {}).items():
        writer.add_string(f"radgpt.{key}", str(value))
    missing = [t.name for t in reader.tensors if t.name not in weights]
    if missing:
        raise FatalError(f"{source}: tensors {missing[:3]} have no counterpart in the model being exported")
    for t in reader.tensors:  # the base file's tensors, in its order
        w = weights[t.name]
        if t.name.endswith("attn_q.weight"):
            w = rope_rows(w, n_head)
        elif t.name.endswith("attn_k.weight"):
            w = rope_rows(w, n_kv)
        if w.ndim == 1 or qtype == GGMLQuantizationType.F32:  # norms stay f32 (llama.cpp expects it)
            writer.add_tensor(t.name, w.astype(np.float32))
        elif qtype == GGMLQuantizationType.F16:
            writer.add_tensor(t.name, w.astype(np.float16))
        else:
            writer.add_tensor(t.name, quantize(w, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
