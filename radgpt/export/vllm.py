"""Can vLLM serve this adapter with `--lora-modules`? (`radgpt export RUN --check-vllm`)"""

from __future__ import annotations

import json
from pathlib import Path

# vLLM's LoRA support (vllm/lora): adapters on these projections of Llama-family models; rank up to
# --max-lora-rank (one of VLLM_RANKS, default 16); no DoRA, no modules_to_save, no bias.
VLLM_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj",
                "gate_up_proj", "embed_tokens", "lm_head"}
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_compat_problems(run: str | Path) -> list[str]:
    """Why vLLM's `--lora-modules name=RUN` would refuse this adapter ([] = it can serve it)."""
    run = Path(run)
    problems = []
    cfg_path = run / "adapter_config.json"
    if not cfg_path.exists():
        return [f"{run}: no adapter_config.json (a full fine-tune: serve the folder as a model, not a LoRA)"]
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {cfg.get('peft_type')}: vLLM serves LoRA adapters only")
    r = int(cfg.get("r", 0))
    if r < 1 or r > max(VLLM_RANKS):
        problems.append(f"rank {r}: vLLM serves ranks 1..{max(VLLM_RANKS)} (--max-lora-rank)")
    elif r > 16:
        need = min(x for x in VLLM_RANKS if x >= r)
        problems.append(f"rank {r} > vLLM's default --max-lora-rank 16: start vLLM with --max-lora-rank {need}")
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    bad = [t for t in targets if t.split(".")[-1] not in VLLM_TARGETS]
    if bad:
        problems.append(f"target modules {bad} are not LoRA-capable in vLLM")
    if cfg.get("use_dora"):
        problems.append("DoRA adapters are not supported by vLLM")
    if cfg.get("modules_to_save"):
        problems.append(f"modules_to_save {cfg['modules_to_save']} are not supported by vLLM")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias={cfg['bias']}: vLLM supports bias='none' only")
    if cfg.get("use_rslora"):
        pass  # supported: vLLM reads use_rslora
    weights = run / "adapter_model.safetensors"
    if not weights.exists():
        problems.append("no adapter_model.safetensors (vLLM loads safetensors or .bin; safetensors preferred)")
    else:
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            keys = list(f.keys())
        odd = [k for k in keys if not (k.startswith("base_model.model.") and
                                       (".lora_A." in k or ".lora_B." in k or "lora_embedding" in k))]
        if odd:
            problems.append(f"unexpected tensors in the adapter (vLLM expects base_model.model.*.lora_A/B): {odd[:3]}")
    base = cfg.get("base_model_name_or_path") or ""
    if base and Path(base).exists() and "/.cache/radgpt/" in base:
        problems.append(f"note: the adapter was trained on the dequantised packaged base in {base}; start vLLM "
                        "with that folder as the model (the hub checkpoint's weights differ from the packaged Q4_1)")
    return problems
