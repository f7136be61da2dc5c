"""`radgpt finetune`: LoRA / QLoRA / full instruction tuning of a causal LM, readable top to bottom.

    radgpt finetune --config configs/smollm2-135m-cpu.yaml
    radgpt finetune --config configs/radiology-gpt-alpaca7b.yaml model.base=/models/llama-7b
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m radgpt finetune --config ...
    radgpt finetune --config ... --resume          # continue from the last checkpoint in `out`

The run folder is the contract that `impress`, `serve`, `merge` and `export` reload:
    adapter_model.safetensors + adapter_config.json   the LoRA adapter (PEFT format)
    config.yaml                                       the resolved config (base model reference included)
    prompt_template.json                              the exact prompt the model was trained on
    tokenizer files                                   saved from the base, so the run is self-describing
    retrieval_cases.jsonl                             cases for retrieved examples (when data.retrieval_k > 0)
    train_log.csv, loss.png                           one row per optimizer step
    val_metrics.json, val_predictions.jsonl           on the validation set, at the end
    checkpoints/step-NNNNNN/                          every train.save_every steps (last train.keep_checkpoints)

Why the loop is hand-written rather than transformers.Trainer: no wasted work, found by profiling a
CPU step of the default config. The 49k-wide vocabulary projection runs only at response positions
(the loss ignores the prompt anyway); batches are length-grouped and padded to a multiple of 16; the
frozen base is stored in bf16 under autocast where the CPU has it; LoRA dropout acts on the rank-r
activations instead of PEFT's full-width inputs (PEFT's random masks were 25% of a step); attention is
the eager kernel on CPU (SDPA's CPU flash backward was slower at these lengths).
bench/bench_finetune.py measures it against Trainer + PEFT.
Multi-GPU and multi-node go through accelerate (FSDP / DeepSpeed configs in configs/accelerate/).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import functools
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from radgpt.config import load_config, write_resolved
from radgpt.errors import FatalError
from radgpt.models import DEFAULT_BASE
from radgpt.reports.tasks import PAPER_INSTRUCTION


@dataclass
class ModelSettings:
    base: str = DEFAULT_BASE  # packaged:NAME, a local HF folder, a .gguf file, or a hub id
    dtype: str = "auto"  # auto: bf16 where the hardware has it, else fp32 (fp16 only on CUDA)
    quantization: str = ""  # "" | 4bit (QLoRA, bitsandbytes, CUDA) | 8bit
    gradient_checkpointing: bool = False  # trades ~30% speed for activation memory (7B on one GPU)
    device: str = "auto"  # auto | cpu | cuda
    # auto: eager on CPU (measured 1.2× faster than SDPA's CPU flash kernel for training at 128–336
    # tokens: its backward is slow), sdpa on GPU; or eager | sdpa | flash_attention_2
    attn_implementation: str = "auto"


@dataclass
class LoraSettings:
    method: str = "lora"  # lora | full (all weights trainable; no adapter, the whole model is saved)
    r: int = 8  # rank: higher = more capacity and memory
    alpha: int = 16  # scale = alpha / r
    dropout: float = 0.05
    # where the dropout acts: "rank" drops the r-wide LoRA activations (A·x), "input" drops the input x
    # as PEFT does. Same rate; "rank" draws r random numbers per token instead of 576–1536 per module —
    # PEFT's input dropout was 25% of a CPU training step (bernoulli_, profiled on the default config).
    dropout_site: str = "rank"
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # a run folder whose adapter starts this one (same r and target modules): continue training an adapter
    # on a new prompt or new data instead of from zero
    init_from: str = ""


@dataclass
class DataSettings:
    train: str = "data/openi/clin-summ/train.jsonl"
    validate: str = "data/openi/clin-summ/validate.jsonl"
    template: str = "alpaca"  # alpaca | chatml | plain | path to a template .json
    instruction: str = PAPER_INSTRUCTION  # used for pair formats that carry no instruction
    tasks: list[str] = field(default_factory=lambda: ["findings_impression"])  # rows of prepare's alpaca files
    cutoff_len: int = 512  # longer examples are truncated (and counted)
    retrieval_k: int = 0  # similar training cases put into each prompt (0 = none)
    retrieval_match: str = "words"  # words | findings (words + the findings the labeler reads: same positives)
    # repeat training pairs whose reference states a finding this many times in total (1 = no oversampling):
    # ~40% of OpenI impressions are the normal boilerplate, which teaches a small model to say "normal"
    oversample_abnormal: float = 1.0
    max_train_samples: int = 0  # 0 = all


@dataclass
class TrainSettings:
    epochs: float = 3.0
    lr: float = 3e-4
    micro_batch_size: int = 4
    batch_size: int = 128  # effective batch: gradient accumulation = batch_size / micro_batch_size
    warmup_steps: int = 0
    lr_scheduler: str = "linear"  # linear | cosine | constant
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    max_steps: int = 0  # stop after this many optimizer steps (0 = epochs decide)
    save_every: int = 20  # optimizer steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2
    group_by_length: bool = True
    pad_multiple: int = 16
    threads: int = 0  # torch CPU threads (0 = all cores)


@dataclass
class EvalSettings:
    generate: bool = True  # greedy-generate the validation set at the end and score ROUGE
    max_samples: int = 0  # 0 = the whole validation set
    max_new_tokens: int = 64
    batch_size: int = 16


@dataclass
class FinetuneConfig:
    out: str = "runs/radgpt"
    model: ModelSettings = field(default_factory=ModelSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)


def oversample(examples: list, factor: float, seed: int) -> list:
    """Each example whose reference states a finding `factor` times in all (the fraction by a seeded draw);
    the others once. Shots stay as retrieved: a copy sees the same prior cases."""
    import random

    from radgpt.evaluate.faithfulness import is_abnormal

    if factor < 1:
        raise FatalError(f"data.oversample_abnormal must be >= 1 (got {factor})")
    rng = random.Random(seed)
    out = []
    for e in examples:
        out.append(e)
        if is_abnormal(e.output):
            extra = int(factor - 1) + (rng.random() < (factor - 1) % 1)
            out.extend([e] * extra)
    return out


def _malloc_trim() -> None:
    """Return freed heap to the OS: with variable-length batches glibc's heap otherwise keeps growing."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise FatalError("model.device=cuda but no CUDA GPU is visible; use model.device=cpu")
    return name


def build_model(cfg: FinetuneConfig, device: str, half_base=None):
    """Base model + LoRA (or all weights trainable for method=full).

    With LoRA the base is frozen, so it is stored in the autocast dtype (`half_base`): autocast then
    has no fp32→bf16 weight copies to make on every forward (~30% of a CPU step), and memory halves.
    The adapter weights stay fp32."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from radgpt.models import load_base_model

    frozen_dtype = half_base if (cfg.lora.method == "lora" and not cfg.model.quantization) else None
    attn = cfg.model.attn_implementation
    if attn == "auto":
        attn = "eager" if device == "cpu" else "sdpa"
    model = load_base_model(cfg.model.base, quantization=cfg.model.quantization, device=device,
                            torch_dtype=frozen_dtype, attn_implementation=attn)
    model.config.use_cache = False
    if cfg.model.quantization:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.model.gradient_checkpointing)
    elif cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if cfg.lora.method == "full":
        if cfg.model.quantization:
            raise FatalError("lora.method=full cannot train quantized weights; drop model.quantization")
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if cfg.lora.method != "lora":
        raise FatalError(f"unknown lora.method '{cfg.lora.method}' (lora, full)")
    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    missing = [t for t in cfg.lora.target_modules if t not in names]
    if missing:
        raise FatalError(f"lora.target_modules {missing} not in this model; its linear layers include "
                         f"{sorted(n for n in names if n.endswith('proj'))}")
    if cfg.lora.dropout_site not in ("rank", "input"):
        raise FatalError(f"unknown lora.dropout_site '{cfg.lora.dropout_site}' (rank, input)")
    rank_dropout = cfg.lora.dropout if cfg.lora.dropout_site == "rank" else 0.0
    lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout - rank_dropout,
                      target_modules=list(cfg.lora.target_modules), bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)
    if cfg.lora.init_from:
        load_adapter_weights(model, Path(cfg.lora.init_from))
    for p in model.parameters():  # adapters train in fp32 even when the base is half precision
        if p.requires_grad:
            p.data = p.data.float()
    if rank_dropout:
        add_rank_dropout(model, rank_dropout)
    return model


def load_adapter_weights(model, run: Path) -> None:
    """Copy a saved PEFT adapter's weights into `model`'s adapter; every tensor must match in name and shape."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = run / "adapter_model.safetensors"
    if not path.is_file():
        raise FatalError(f"lora.init_from: {path} not found (a run folder with a LoRA adapter)")
    saved = load_file(str(path))
    own = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    shapes = {k.replace(".default", ""): tuple(v.shape) for k, v in own.items()}
    bad = [k for k, v in saved.items() if shapes.get(k) != tuple(v.shape)]
    if bad or len(saved) != len(own):
        raise FatalError(f"lora.init_from: {path} does not fit this adapter ({len(saved)} tensors vs {len(own)}; "
                         f"first mismatch: {bad[:1]}): use the same lora.r and lora.target_modules")
    result = set_peft_model_state_dict(model, saved)
    if getattr(result, "unexpected_keys", None):
        raise FatalError(f"lora.init_from: unexpected tensors {result.unexpected_keys[:3]}")


def add_rank_dropout(model, p: float) -> int:
    """Dropout on the output of every LoRA A matrix (forward hooks), active in train mode only. The
    adapter saved is plain PEFT (its config says lora_dropout 0): dropout does nothing at inference."""
    import torch.nn.functional as F

    def hook(module, inputs, output):
        return F.dropout(output, p, module.training)

    n = 0
    for name, module in model.named_modules():
        if name.endswith(".lora_A") or ".lora_A." in name:
            if hasattr(module, "weight"):  # the per-adapter nn.Linear inside the ModuleDict
                module.register_forward_hook(hook)
                n += 1
    return n


def _make_loss_module(lm, autocast_dtype):
    """Wrap the causal LM so one `forward` returns the summed cross-entropy over response tokens,
    with the vocabulary projection computed only at those positions. A module, so that accelerate's
    DDP / FSDP / DeepSpeed wrappers see one forward call (their gradient sync hooks into it)."""
    import torch
    import torch.nn.functional as F

    class _ResponseLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = lm

        def forward(self, ids, labels, mask):
            base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
            decoder, head = base.get_decoder(), base.get_output_embeddings()
            with torch.autocast(ids.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
                target = labels[:, 1:]
                keep = target != -100  # position t predicts token t+1
                logits = head(hidden[:, :-1][keep])
            return F.cross_entropy(logits.float(), target[keep], reduction="sum")

    return _ResponseLoss()


def _trainable_state(model) -> dict:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(run: Path, step: int, model, optimizer, scheduler, state: dict, keep: int) -> Path:
    import torch
    from safetensors.torch import save_file

    ck = run / "checkpoints" / f"step-{step:06d}"
    tmp = ck.with_name(ck.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(), **state}, tmp / "trainer_state.pt")
    if ck.exists():
        shutil.rmtree(ck)
    tmp.rename(ck)  # a kill mid-save leaves only a .tmp folder, never a half checkpoint
    for old in sorted((run / "checkpoints").glob("step-*"))[:-keep] if keep > 0 else []:
        if not old.name.endswith(".tmp"):
            shutil.rmtree(old, ignore_errors=True)
    return ck


def latest_checkpoint(run: Path) -> Path | None:
    cks = [c for c in sorted((run / "checkpoints").glob("step-*")) if not c.name.endswith(".tmp")]
    return cks[-1] if cks else None


def finetune(cfg: FinetuneConfig, resume: bool = False, log=print) -> dict:
    import torch
    from accelerate import Accelerator
    from transformers import get_scheduler

    from radgpt.instruct_data import (attach_retrieval, collate, length_grouped_batches, read_examples,
                                      tokenize)
    from radgpt.models import load_tokenizer, pick_dtype
    from radgpt.prompts import PromptTemplate, clean_placeholders
    from radgpt.retrieval import Case, CaseIndex

    t_start = time.perf_counter()
    run = Path(cfg.out)
    device = _device(cfg.model.device)
    # One process on one device, or many under `accelerate launch` (DDP, FSDP, DeepSpeed): the
    # same loop. Mixed precision is radgpt's own autocast, so CPU runs get bf16 too.
    acc = Accelerator(cpu=device == "cpu")
    main = acc.is_main_process
    if not main:
        log = lambda *a, **k: None  # noqa: E731
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    autocast = pick_dtype(cfg.model.dtype, device)
    autocast = None if autocast == torch.float32 else autocast
    if cfg.train.batch_size % (cfg.train.micro_batch_size * acc.num_processes):
        raise FatalError(f"train.batch_size ({cfg.train.batch_size}) must be a multiple of "
                         f"train.micro_batch_size × processes ({cfg.train.micro_batch_size} × {acc.num_processes})")
    accum = cfg.train.batch_size // (cfg.train.micro_batch_size * acc.num_processes)
    if run.exists() and any(run.glob("*.safetensors")) and not resume:
        raise FatalError(f"{run}: already holds a trained model; choose another out= or pass --resume")
    if main:
        run.mkdir(parents=True, exist_ok=True)

    # ---- data: read, retrieve similar cases, render prompts, tokenise
    template = PromptTemplate.load(cfg.data.template)
    tokenizer = load_tokenizer(cfg.model.base)
    train = read_examples(cfg.data.train, cfg.data.tasks, cfg.data.instruction)
    if cfg.data.max_train_samples:
        train = train[: cfg.data.max_train_samples]
    val = read_examples(cfg.data.validate, cfg.data.tasks, cfg.data.instruction) if cfg.data.validate else []
    index = None
    if cfg.data.retrieval_k > 0:
        pairs = [e for e in train if e.task == "findings_impression"]
        index = CaseIndex([Case(e.id, e.input, e.output) for e in pairs], cfg.data.retrieval_match)
        attach_retrieval(train, index, cfg.data.retrieval_k, exclude_self=True)
        attach_retrieval(val, index, cfg.data.retrieval_k, exclude_self=False)
    if template.clean_placeholders:  # targets without "XXXX": the model learns not to write it
        for e in train:  # (validation references stay verbatim: they are what it is scored against)
            e.output = clean_placeholders(e.output)
    if cfg.data.oversample_abnormal != 1.0:
        train = oversample(train, cfg.data.oversample_abnormal, cfg.train.seed)
    items, n_trunc = tokenize(train, tokenizer, template, cfg.data.cutoff_len)
    val_items, n_trunc_val = tokenize(val, tokenizer, template, cfg.data.cutoff_len) if val else ([], 0)
    if n_trunc or n_trunc_val:
        log(f"truncated to cutoff_len={cfg.data.cutoff_len}: {n_trunc} train, {n_trunc_val} validate examples")
    lengths = [len(t.input_ids) for t in items]
    steps_per_epoch = math.ceil(len(items) / cfg.train.batch_size)
    total_steps = cfg.train.max_steps or math.ceil(steps_per_epoch * cfg.train.epochs)

    # ---- the run folder contract, written before training so a killed run is still self-describing
    if main:
        write_resolved(cfg, run)
        template.save(run)
        tokenizer.save_pretrained(run)
        if index is not None:
            index.save(run)

    # ---- model, optimizer, schedule
    torch.manual_seed(cfg.train.seed)
    lm = build_model(cfg, device, half_base=autocast)
    params = [p for p in lm.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    n_all = sum(p.numel() for p in lm.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = get_scheduler(cfg.train.lr_scheduler, optimizer, num_warmup_steps=cfg.train.warmup_steps,
                              num_training_steps=total_steps)
    model, optimizer = acc.prepare(_make_loss_module(lm, autocast), optimizer)
    log(f"{len(items)} train / {len(val_items)} validate examples; {total_steps} optimizer steps of "
        f"{cfg.train.batch_size} ({accum} × {cfg.train.micro_batch_size} × {acc.num_processes} process(es)); "
        f"trainable {n_train:,} of {n_all:,} params; {acc.device}, autocast {autocast or 'off'}")

    step, epoch, batch_pos, rows = 0, 0, 0, []
    if resume:
        ck = latest_checkpoint(run)
        if ck is None:
            log(f"--resume: no checkpoint in {run}/checkpoints, starting from step 0")
        else:
            from safetensors.torch import load_file

            state = torch.load(ck / "trainer_state.pt", weights_only=False)
            result = lm.load_state_dict(load_file(str(ck / "trainable.safetensors")), strict=False)
            if result.unexpected_keys:
                raise FatalError(f"{ck}: checkpoint does not match this model/config")
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            step, epoch, batch_pos, rows = state["step"], state["epoch"], state["batch_pos"], state["rows"]
            log(f"resumed from {ck} (step {step})")

    # ---- the loop: one optimizer step = `accum` micro-batches per process, loss normalised by the
    # response tokens of the step (so long and short answers weigh per token, as in one big batch)
    model.train()
    log_path = run / "train_log.csv"
    t0 = time.perf_counter()
    samples_done = tokens_done = 0
    per_step = accum * acc.num_processes
    while step < total_steps:
        batches = length_grouped_batches(lengths, cfg.train.micro_batch_size, cfg.train.seed, epoch,
                                         cfg.train.group_by_length)
        while batch_pos < len(batches) and step < total_steps:
            group = batches[batch_pos: batch_pos + per_step]
            batch_pos += len(group)
            n_tokens = sum(items[i].n_response for b in group for i in b) / acc.num_processes
            mine = group[acc.process_index::acc.num_processes]  # this process's share of the step
            loss_sum = 0.0
            for k, b in enumerate(mine):
                ids, labels, mask = collate([items[i] for i in b], tokenizer.pad_token_id, cfg.train.pad_multiple)
                sync = acc.no_sync(model) if k < len(mine) - 1 else contextlib.nullcontext()
                with sync:
                    loss = model(ids.to(acc.device), labels.to(acc.device), mask.to(acc.device))
                    acc.backward(loss / n_tokens)
                loss_sum += loss.item()
                samples_done += len(b)
                tokens_done += int(mask.sum())
            acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            step_loss = float(acc.reduce(torch.tensor(loss_sum, device=acc.device), "sum")) / (
                n_tokens * acc.num_processes)
            elapsed = time.perf_counter() - t0
            rows.append({"step": step, "epoch": round(epoch + batch_pos / len(batches), 3),
                         "loss": round(step_loss, 5), "lr": scheduler.get_last_lr()[0],
                         "samples_per_s": round(samples_done * acc.num_processes / elapsed, 2),
                         "tokens": tokens_done, "elapsed_s": round(elapsed, 1)})
            log(f"step {step}/{total_steps} loss {rows[-1]['loss']:.4f} lr {rows[-1]['lr']:.2e} "
                f"{rows[-1]['samples_per_s']} samples/s")
            if step % 4 == 0:
                _malloc_trim()
            if not math.isfinite(rows[-1]["loss"]):
                raise FatalError(f"loss is {rows[-1]['loss']} at step {step}: lower train.lr or check the data")
            if cfg.train.save_every and step % cfg.train.save_every == 0 and step < total_steps and main:
                save_checkpoint(run, step, lm, optimizer, scheduler,
                                {"step": step, "epoch": epoch, "batch_pos": batch_pos, "rows": rows},
                                cfg.train.keep_checkpoints)
                _write_log(log_path, rows)
        if batch_pos >= len(batches):
            epoch, batch_pos = epoch + 1, 0

    # ---- save the result in the run folder (main process; FSDP/ZeRO-3 gather the full state first)
    acc.wait_for_everyone()
    state_dict = acc.get_state_dict(model)
    state_dict = {k[len("lm."):]: v for k, v in state_dict.items() if k.startswith("lm.")} if state_dict else None
    lm_unwrapped = acc.unwrap_model(model).lm
    lm_unwrapped.save_pretrained(run, state_dict=state_dict, is_main_process=main, safe_serialization=True)
    metrics = {"train_steps": step, "train_examples": len(items), "truncated_train": n_trunc,
               "trainable_params": n_train, "final_train_loss": rows[-1]["loss"] if rows else None,
               "train_seconds": round(time.perf_counter() - t0, 1), "processes": acc.num_processes}
    if not main:
        return metrics
    _write_log(log_path, rows)
    _plot_loss(run / "loss.png", rows)
    if val_items:
        metrics.update(evaluate_run(lm_unwrapped, tokenizer, template, val, val_items, cfg, autocast, run, log))
    metrics["total_seconds"] = round(time.perf_counter() - t_start, 1)
    (run / "val_metrics.json").write_text(json.dumps(metrics, indent=2))
    log(f"done: {run} {json.dumps({k: v for k, v in metrics.items() if 'rouge' in k or 'loss' in k})}")
    return metrics


def evaluate_run(lm, tokenizer, template, val, val_items, cfg, autocast, run: Path, log) -> dict:
    """Validation loss (teacher forced) and, if asked, greedy generations scored with ROUGE."""
    import torch

    from radgpt.generate import Decoding, generate_batch
    from radgpt.instruct_data import collate

    lm.eval()
    loss_fn = _make_loss_module(lm, autocast)
    device = next(lm.parameters()).device
    total, n = 0.0, 0
    with torch.inference_mode():
        for s in range(0, len(val_items), 16):
            chunk = val_items[s:s + 16]
            ids, labels, mask = collate(chunk, tokenizer.pad_token_id, cfg.train.pad_multiple)
            total += loss_fn(ids.to(device), labels.to(device), mask.to(device)).item()
            n += sum(t.n_response for t in chunk)
    out = {"val_loss": round(total / max(n, 1), 5)}
    if not cfg.eval.generate:
        return out
    sample = val[: cfg.eval.max_samples] if cfg.eval.max_samples else val
    prompts = [template.render(e.instruction, e.input, e.shots) for e in sample]
    if hasattr(lm, "merge_adapter"):
        lm.merge_adapter()  # merged weights decode faster; the saved adapter is unaffected
    lm.config.use_cache = True
    t0 = time.perf_counter()
    preds = generate_batch(lm, tokenizer, prompts, Decoding(max_new_tokens=cfg.eval.max_new_tokens),
                           cfg.eval.batch_size, autocast)
    secs = time.perf_counter() - t0
    with open(run / "val_predictions.jsonl", "w", encoding="utf-8") as f:
        for e, p in zip(sample, preds):
            f.write(json.dumps({"id": e.id, "impression": p, "reference": e.output}, ensure_ascii=False) + "\n")
    out.update(rouge_summary([e.output for e in sample], preds, [e.input for e in sample]))
    out["val_generated"] = len(preds)
    out["val_generate_seconds"] = round(secs, 1)
    log(f"validation: {json.dumps(out)}")
    return out


def rouge_summary(refs: list[str], hyps: list[str], findings: list[str] | None = None) -> dict:
    """ROUGE as the published Open-i numbers are computed (the metrics registry's `rouge` group:
    rouge_score, no stemming, per-sample F1 mean ×100), also on the references that state a finding
    (`faithfulness.is_abnormal`, the one normal/abnormal rule), plus the faithfulness measures."""
    from radgpt.evaluate.faithfulness import faithfulness, is_abnormal
    from radgpt.evaluate.metrics import compute

    per_sample = compute(refs, hyps, ["rouge"])["per_sample"]
    abnormal = [is_abnormal(r) for r in refs]
    out = {}
    for key in ("rouge1", "rouge2", "rougeL"):
        vals = per_sample[key]
        out[key] = round(sum(vals) / max(len(vals), 1), 2)
        abn = [v for v, a in zip(vals, abnormal) if a]
        out[f"{key}_abnormal"] = round(sum(abn) / max(len(abn), 1), 2)
    out.update(faithfulness(refs, hyps, findings)["summary"])
    return out


def _write_log(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _plot_loss(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss (response tokens)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (see configs/); key=value overrides follow")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the run folder")
    p.add_argument("inputs", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=1")


def run(args: argparse.Namespace) -> int:
    bad = [x for x in args.inputs if "=" not in x]
    if bad:
        raise FatalError(f"expected key=value overrides, got {bad}")
    cfg = load_config(FinetuneConfig, args.config, args.inputs)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    finetune(cfg, resume=args.resume, log=functools.partial(print, flush=True))
    return 0


__all__ = ["FinetuneConfig", "finetune"]
