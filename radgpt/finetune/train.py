"""The training loop behind `radgpt finetune` (the command and the run folder it writes: radgpt.finetune.cli).

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

import contextlib
import copy
import csv
import ctypes
import json
import math
import shutil
import time
import warnings
from pathlib import Path

from radgpt.common.config import write_resolved
from radgpt.common.errors import FatalError
from radgpt.finetune.autobatch import (
    eval_batch_size,
    micro_batch_candidates,
    probe_micro_batch,
    resolve_micro_batch,
)
from radgpt.finetune.card import duration, plot_loss, write_log, write_model_card
from radgpt.runs.config import DataSettings, FinetuneConfig
from radgpt.runs.folders import (
    CONFIG_FILE,
    MODEL_CARD,
    TEMPLATE_FILE,
    TRAIN_LOG,
    VAL_METRICS,
    VAL_PREDICTIONS,
)
from radgpt.runs.run import RunFolder


def oversample(examples: list, factor: float, seed: int) -> list:
    """Each example whose reference states a finding `factor` times in all (the fraction by a seeded draw);
    the others once. Shots stay as retrieved: a copy sees the same prior cases."""
    import random

    from radgpt.findings.faithfulness import is_abnormal

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

    from radgpt.runs.base_models import load_base_model

    frozen_dtype = half_base if (cfg.lora.method == "lora" and not cfg.model.quantization) else None
    attn = cfg.model.attn_implementation
    if attn == "auto":
        attn = "eager" if device == "cpu" else "sdpa"
    model = load_base_model(cfg.model.base, quantization=cfg.model.quantization, device=device,
                            torch_dtype=frozen_dtype, attn_implementation=attn)
    model.config.use_cache = False
    if cfg.model.quantization:
        with warnings.catch_warnings():  # peft calls the deprecated gradient_checkpointing_enable (transformers 5)
            warnings.filterwarnings("ignore", message=r"`gradient_checkpointing_enable` is deprecated",
                                    category=FutureWarning)
            model = prepare_model_for_kbit_training(model,
                                                    use_gradient_checkpointing=cfg.model.gradient_checkpointing)
    elif cfg.model.gradient_checkpointing:
        # transformers 5 renamed it (the old name warns); older versions have only gradient_checkpointing_enable
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
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
    with warnings.catch_warnings():
        # PeftModel.__init__ reads `model.is_gradient_checkpointing`, which transformers 5 deprecates with a
        # FutureWarning on every run; that one warning is silenced here, nothing else
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
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
        hint = "use the same lora.r and lora.target_modules"
        try:  # say what the source adapter is, so the fix is one copy-paste
            src = json.loads((run / "adapter_config.json").read_text())
            hint = (f"it is r={src['r']}, alpha {src.get('lora_alpha')}, target_modules {sorted(src['target_modules'])}: "
                    f"pass lora.r={src['r']} lora.alpha={src.get('lora_alpha')} "
                    f"lora.target_modules=[{','.join(sorted(src['target_modules']))}]")
        except (OSError, ValueError, KeyError, TypeError):
            pass
        raise FatalError(f"lora.init_from: {path} does not fit this adapter ({len(saved)} tensors vs {len(own)}; "
                         f"first mismatch: {bad[:1]}): {hint}")
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
        # the per-adapter nn.Linear inside the ModuleDict
        if (name.endswith(".lora_A") or ".lora_A." in name) and hasattr(module, "weight"):
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


def _checkpoint_state(ck: Path) -> dict:
    import torch

    return torch.load(ck / "trainer_state.pt", weights_only=False)


def finetune(cfg: FinetuneConfig, resume: bool = False, log=print) -> dict:
    """Train, save and validate; returns the run's metrics (what val_metrics.json holds).

    A start that fails (bad config, missing file, Ctrl-C before the first optimizer step) removes the run
    folder it created. `resume` on a finished run trains nothing: it says so, or runs only the end-of-run
    steps that a kill left undone (validation, model card)."""
    run = Path(cfg.out)
    created = not run.exists()
    progress = {"started": False, "main": True}
    try:
        return _finetune(copy.deepcopy(cfg), run, resume, log, progress)
    except BaseException:
        if created and progress["main"] and not progress["started"] and run.is_dir():
            shutil.rmtree(run, ignore_errors=True)
        raise


def _check_settings(cfg: FinetuneConfig) -> None:
    t = cfg.train
    for key in ("log_every", "eval_every", "early_stopping_patience", "save_every", "max_steps"):
        if getattr(t, key) < 0:
            raise FatalError(f"train.{key} must be >= 0 (got {getattr(t, key)})")
    if t.early_stopping_patience and not t.eval_every:
        raise FatalError("train.early_stopping_patience needs train.eval_every > 0 (the validation loss it watches)")


def _dataset_file(value: str, split: str) -> str | None:
    """The `split` file of a folder (a `radgpt prepare` output folder: alpaca/, else chat/; or split.jsonl),
    or None when the folder has none. A path that is not a folder is returned as it is."""
    folder = Path(value).expanduser()
    if not folder.is_dir():
        return value
    for cand in (folder / "alpaca" / f"{split}.jsonl", folder / "chat" / f"{split}.jsonl", folder / f"{split}.jsonl"):
        if cand.is_file():
            return str(cand)
    return None


def _folder_problem(value: str, split: str, key: str) -> FatalError:
    folder = Path(value).expanduser()
    has = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())[:12]
    if (folder / "for_inference.jsonl").exists():
        why = ("it was prepared with --for-inference (findings only, no impressions to learn from): run "
               "`radgpt prepare` without --for-inference")
    elif (folder / "summary.json").exists() or (folder / "records").is_dir():
        why = (f"a `radgpt prepare` folder without alpaca/{split}.jsonl or chat/{split}.jsonl (prepare it with "
               "formats=[alpaca])")
    else:
        why = (f"a folder, not a dataset file: give a .jsonl file or a `radgpt prepare` output folder (one with "
               f"alpaca/{split}.jsonl)")
    return FatalError(f"{key}={value}: {why}; the folder holds: {', '.join(has) or 'nothing'}")


def _resolve_data(cfg: FinetuneConfig, log) -> None:
    """data.train / data.validate given as folders become their files (written so into config.yaml)."""
    d = cfg.data
    train_folder = Path(d.train).expanduser().is_dir()
    found = _dataset_file(d.train, "train")
    if found is None:
        raise _folder_problem(d.train, "train", "data.train")
    if train_folder:
        log(f"data.train={d.train}: a folder; training on {found}")
    d.train = found
    if not d.validate:
        return
    if Path(d.validate).expanduser().is_dir():
        found = _dataset_file(d.validate, "validate")
        if found is None:
            raise _folder_problem(d.validate, "validate", "data.validate")
        log(f"data.validate={d.validate}: a folder; validating on {found}")
        d.validate = found
    elif train_folder and d.validate == DataSettings.validate:
        # the default (OpenI) validation set would not describe a model trained on the folder's data
        folder = Path(found).parent.parent if Path(found).parent.name in ("alpaca", "chat") else Path(found).parent
        own = _dataset_file(str(folder), "validate")
        if own and Path(own).stat().st_size > 0:
            log(f"validating on the folder's own split: {own}")
            d.validate = own
        else:
            log(f"{folder} has no validate split: no validation (set data.validate=FILE for one)")
            d.validate = ""


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []

    def num(v):
        if v in (None, ""):
            return ""
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return v

    with open(path, newline="") as f:
        return [{k: num(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _has_weights(run: Path) -> bool:
    return any((run / n).exists() for n in ("adapter_model.safetensors", "model.safetensors",
                                            "model.safetensors.index.json"))


def _finished_run(run: Path, total_steps: int) -> str | None:
    """'done' (trained and validated: nothing to do), 'evaluate' (trained; the end-of-run steps are
    missing, e.g. a kill during the validation generation) or None (training goes on)."""
    if not _has_weights(run):
        return None
    try:
        metrics = json.loads((run / VAL_METRICS).read_text())
    except (OSError, ValueError):
        metrics = None
    if isinstance(metrics, dict) and (metrics.get("train_steps", 0) >= total_steps or metrics.get("stopped_early_at")):
        return "done"
    rows = _read_log(run / TRAIN_LOG)
    last = int(rows[-1]["step"]) if rows else 0
    if rows and last >= total_steps:
        return "evaluate"
    ck = latest_checkpoint(run)
    if ck is not None and rows:
        st = _checkpoint_state(ck)
        if st.get("finished") and st.get("stopped_early") and st.get("step") == last:
            return "evaluate"
    return None


def _load_trained_weights(lm, run: Path, cfg: FinetuneConfig) -> None:
    """The final weights a finished run saved, back into the freshly built model."""
    from safetensors.torch import load_file

    if cfg.lora.method == "lora":
        load_adapter_weights(lm, run)
        return
    sd = {}
    for f in sorted(run.glob("model*.safetensors")):
        sd.update(load_file(str(f)))
    result = lm.load_state_dict(sd, strict=False)
    if result.unexpected_keys:
        raise FatalError(f"{run}: saved weights do not match this model/config")


def _compare_with_source(cfg: FinetuneConfig, log) -> None:
    """Notes where this run differs from the run whose adapter it continues (lora.init_from): a different
    base, prompt or number of retrieved cases is allowed (that is how an adapter is moved to a new prompt),
    but should be on purpose."""
    try:
        src = RunFolder(cfg.lora.init_from).config
    except FatalError:
        return
    for key, ours, theirs in (("model.base", cfg.model.base, src.model.base),
                              ("data.template", cfg.data.template, src.data.template),
                              ("data.retrieval_k", cfg.data.retrieval_k, src.data.retrieval_k)):
        if str(theirs) != str(ours):
            log(f"note: lora.init_from={cfg.lora.init_from} was trained with {key}={theirs}; this run uses {ours}")


def _tensorboard(run: Path, enabled: bool, purge_step: int | None, log):
    """A SummaryWriter into RUN/runs/, or None (off, or the tensorboard package is not installed)."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log("note: the tensorboard package is not installed, so no RUN/runs/ event files "
            "(pip install tensorboard, or train.tensorboard=false to silence this)")
        return None
    return SummaryWriter(str(run / "runs"), purge_step=purge_step, flush_secs=15)  # live enough to watch


def _val_loss(loss_module, items, pad_id: int, pad_multiple: int, device, batch: int = 16) -> float:
    """Teacher-forced loss per response token over `items` (no grad; the module's train mode restored)."""
    import torch

    from radgpt.finetune.data import collate

    was_training = loss_module.training
    loss_module.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(items), batch):
            chunk = items[s:s + batch]
            ids, labels, mask = collate(chunk, pad_id, pad_multiple)
            total += float(loss_module(ids.to(device), labels.to(device), mask.to(device)))
            n += sum(t.n_response for t in chunk)
    loss_module.train(was_training)
    return total / max(n, 1)


def _gathered_state(acc, model) -> dict | None:
    """The LM's full state dict (FSDP / ZeRO-3 gather it first: every process must call this)."""
    sd = acc.get_state_dict(model)
    return {k[len("lm."):]: v for k, v in sd.items() if k.startswith("lm.")} if sd else None


def _save_best(acc, model, run: Path, main: bool, best: dict, cfg: FinetuneConfig, tokenizer) -> None:
    """best/: the weights with the lowest validation loss so far, loadable as a run folder of its own."""
    state_dict = _gathered_state(acc, model)
    if not main:
        return
    target, tmp = run / "best", run / "best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    acc.unwrap_model(model).lm.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    for name in (CONFIG_FILE, TEMPLATE_FILE):
        if (run / name).exists():
            shutil.copy2(run / name, tmp / name)
    if cfg.lora.method != "lora":
        tokenizer.save_pretrained(tmp)
    cases = (f" It retrieves prior cases: pass `--cases {run.name}/retrieval_cases.jsonl` (they are not copied "
             "here)." if cfg.data.retrieval_k > 0 else "")
    (tmp / MODEL_CARD).write_text(
        f"# best/ — the lowest validation loss of {run.name}\n\n"
        f"The {'adapter' if cfg.lora.method == 'lora' else 'model'} at optimizer step {best['step']}: validation "
        f"loss {best['val_loss']:.4f} (teacher forced, per response token; `train.eval_every: {cfg.train.eval_every}`). "
        f"The run folder above holds the last step's weights and the model card. Use this one with "
        f"`radgpt impress --model {run.name}/best`.{cases}\n", encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def _micro_batch(cfg: FinetuneConfig, run: Path, resume: bool, acc, lm, autocast, items, tokenizer, log
                 ) -> tuple[int, str]:
    """train.micro_batch_size as it will run, and why (autobatch.resolve_micro_batch). `auto` on a GPU probes
    the model just built with the longest training examples, before accelerate wraps it: with no collective
    in the probe, a process that runs out of memory cannot leave the others waiting. Each process probes its
    own GPU and all take the smallest answer (they must accumulate alike). Under FSDP / DeepSpeed the probe
    sees the whole model on each GPU, as it is loaded here, before sharding: its answer errs small."""
    import torch

    saved = None
    if resume and cfg.train.micro_batch_size == "auto" and (run / CONFIG_FILE).is_file():
        try:
            recorded = RunFolder(run).config.train.micro_batch_size
            saved = recorded if isinstance(recorded, int) else None
        except FatalError:
            saved = None

    def probe(sizes: list[int]) -> int:
        log(f"train.micro_batch_size=auto: probing {', '.join(map(str, sizes))} with the longest training "
            "examples ...")
        mine = probe_micro_batch(_make_loss_module(lm, autocast), items, tokenizer.pad_token_id,
                                 cfg.train.pad_multiple, sizes, acc.device, log=log)
        if acc.num_processes == 1:
            return mine
        return int(acc.gather(torch.tensor([mine], device=acc.device)).min())

    return resolve_micro_batch(cfg.train.micro_batch_size, cfg.train.batch_size, acc.device.type,
                               acc.num_processes, probe=probe, saved=saved)


def _finetune(cfg: FinetuneConfig, run: Path, resume: bool, log, progress: dict) -> dict:
    import torch
    from accelerate import Accelerator
    from transformers import get_scheduler

    from radgpt.finetune.data import (
        attach_retrieval,
        collate,
        length_grouped_batches,
        read_examples,
        tokenize,
    )
    from radgpt.runs.base_models import load_tokenizer, pick_dtype
    from radgpt.runs.prompts import PromptTemplate, clean_placeholders
    from radgpt.runs.retrieval import CaseIndex, PriorCase

    t_start = time.perf_counter()
    device = _device(cfg.model.device)
    # One process on one device, or many under `accelerate launch` (DDP, FSDP, DeepSpeed): the
    # same loop. Mixed precision is radgpt's own autocast, so CPU runs get bf16 too.
    acc = Accelerator(cpu=device == "cpu")
    main = progress["main"] = acc.is_main_process
    if not main:
        def log(*a, **k) -> None:
            pass
    _check_settings(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    autocast = pick_dtype(cfg.model.dtype, device)
    autocast = None if autocast == torch.float32 else autocast
    # an integer micro-batch is checked now (a bad one fails before data and model load); auto is chosen
    # once the model is on its device. eval.batch_size auto depends on the device only
    micro_auto = cfg.train.micro_batch_size == "auto"
    if not micro_auto:
        resolve_micro_batch(cfg.train.micro_batch_size, cfg.train.batch_size, device, acc.num_processes)
    else:
        micro_batch_candidates(cfg.train.batch_size, acc.num_processes)
    cfg.eval.batch_size = eval_batch_size(cfg.eval.batch_size, device)
    if run.exists() and any(run.glob("*.safetensors")) and not resume:
        raise FatalError(f"{run}: already holds a trained model; choose another out= or pass --resume")
    _resolve_data(cfg, log)

    # ---- data: read, retrieve similar cases, render prompts, tokenise
    template = PromptTemplate.load(cfg.data.template)
    tokenizer = load_tokenizer(cfg.model.base)
    train = read_examples(cfg.data.train, cfg.data.tasks, cfg.data.instruction)
    if cfg.data.max_train_samples:
        train = train[: cfg.data.max_train_samples]
    val = read_examples(cfg.data.validate, cfg.data.tasks, cfg.data.instruction) if cfg.data.validate else []
    if cfg.train.eval_every and not val:
        raise FatalError("train.eval_every needs validation data (data.validate)")
    n_train_pairs = len(train)
    index = None
    if cfg.data.retrieval_k > 0:
        pairs = [e for e in train if e.task == "findings_impression"]
        index = CaseIndex([PriorCase(e.id, e.input, e.output) for e in pairs], cfg.data.retrieval_match)
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

    # ---- a finished run is not trained again (--resume after the end, or after a kill during validation)
    finished = _finished_run(run, total_steps) if resume else None
    if finished == "done":
        metrics = json.loads((run / VAL_METRICS).read_text())
        log(f"{run}: run already finished ({metrics.get('train_steps')} optimizer steps; val_metrics.json is kept): "
            "nothing to do. To train on, raise train.max_steps or train.epochs and pass --resume again")
        return metrics

    if cfg.lora.init_from:
        _compare_with_source(cfg, log)

    # ---- model, optimizer, schedule
    torch.manual_seed(cfg.train.seed)
    lm = build_model(cfg, device, half_base=autocast)
    cfg.train.micro_batch_size, why = _micro_batch(cfg, run, resume, acc, lm, autocast, items, tokenizer, log)
    accum = cfg.train.batch_size // (cfg.train.micro_batch_size * acc.num_processes)
    if micro_auto:
        log(f"train.micro_batch_size=auto → {cfg.train.micro_batch_size} ({why}); "
            f"gradient accumulation {accum}")
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

    # ---- the run folder contract, written before training so a killed run is still self-describing
    # (after the model is built: a start that fails on the config leaves no folder behind)
    if main:
        run.mkdir(parents=True, exist_ok=True)
        write_resolved(cfg, run)
        template.save(run)
        tokenizer.save_pretrained(run)
        if index is not None:
            index.save(run)

    step, epoch, batch_pos, rows = 0, 0, 0, []
    best, bad_evals, samples_done, stopped_early = None, 0, 0, None
    if finished == "evaluate":
        _load_trained_weights(lm, run, cfg)
        rows = _read_log(run / TRAIN_LOG)
        step = int(rows[-1]["step"]) if rows else total_steps
        ck = latest_checkpoint(run)
        if ck is not None:
            st = _checkpoint_state(ck)
            if st.get("step") == step:
                best, stopped_early = st.get("best"), st.get("stopped_early")
        log(f"{run}: training finished at step {step}; running the end-of-run steps it lacks (validation, model card)")
    elif resume:
        ck = latest_checkpoint(run)
        if ck is None:
            log(f"--resume: no checkpoint in {run}/checkpoints, starting from step 0")
        else:
            from safetensors.torch import load_file

            state = _checkpoint_state(ck)
            result = lm.load_state_dict(load_file(str(ck / "trainable.safetensors")), strict=False)
            if result.unexpected_keys:
                raise FatalError(f"{ck}: checkpoint does not match this model/config")
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            step, epoch, batch_pos, rows = state["step"], state["epoch"], state["batch_pos"], state["rows"]
            best, bad_evals = state.get("best"), state.get("bad_evals", 0)
            samples_done = state.get("samples", 0)
            log(f"resumed from {ck} (step {step})")

    # ---- the loop: one optimizer step = `accum` micro-batches per process, loss normalised by the
    # response tokens of the step (so long and short answers weigh per token, as in one big batch).
    # tokens, samples and elapsed_s continue across a resume (cumulative, as the rows before it).
    log_path = run / TRAIN_LOG
    tokens_done = int(rows[-1].get("tokens") or 0) if rows else 0
    prev_elapsed = float(rows[-1].get("elapsed_s") or 0.0) if rows else 0.0
    if rows and not samples_done:  # a checkpoint from before `samples` was kept: from the logged rate
        samples_done = round(float(rows[-1].get("samples_per_s") or 0) * prev_elapsed / acc.num_processes)
    tb = _tensorboard(run, cfg.train.tensorboard, step + 1 if step and finished is None else None, log) if main else None
    model.train()
    t0, start_step = time.perf_counter(), step
    per_step = accum * acc.num_processes
    patience = cfg.train.early_stopping_patience
    stop = finished == "evaluate"
    progress["started"] = True
    while step < total_steps and not stop:
        batches = length_grouped_batches(lengths, cfg.train.micro_batch_size, cfg.train.seed, epoch,
                                         cfg.train.group_by_length)
        while batch_pos < len(batches) and step < total_steps and not stop:
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
            session = time.perf_counter() - t0
            elapsed = prev_elapsed + session
            row = {"step": step, "epoch": round(epoch + batch_pos / len(batches), 3), "loss": round(step_loss, 5),
                   "lr": scheduler.get_last_lr()[0],
                   "samples_per_s": round(samples_done * acc.num_processes / max(elapsed, 1e-9), 2),
                   "tokens": tokens_done, "elapsed_s": round(elapsed, 1), "val_loss": ""}
            rows.append(row)
            if not math.isfinite(row["loss"]):
                if main:
                    write_log(log_path, rows)
                raise FatalError(f"loss is {row['loss']} at step {step}: lower train.lr or check the data")
            note = ""
            if cfg.train.eval_every and step % cfg.train.eval_every == 0:
                v = _val_loss(model, val_items, tokenizer.pad_token_id, cfg.train.pad_multiple, acc.device)
                v = float(acc.reduce(torch.tensor(v, device=acc.device), "mean"))  # one decision on every process
                row["val_loss"] = round(v, 5)
                if best is None or v < best["val_loss"]:
                    best, bad_evals = {"step": step, "val_loss": v}, 0
                    _save_best(acc, model, run, main, best, cfg, tokenizer)
                    note = f" | val loss {v:.4f}, the best so far → best/"
                else:
                    bad_evals += 1
                    note = (f" | val loss {v:.4f} (best {best['val_loss']:.4f} at step {best['step']}; "
                            f"{bad_evals} evaluation(s) without improvement)")
                    if patience and bad_evals >= patience:
                        stopped_early, stop = step, True
                if tb is not None:
                    tb.add_scalar("val/loss", v, step)
            if tb is not None:
                for key in ("loss", "lr", "samples_per_s"):
                    tb.add_scalar(f"train/{key}", row[key], step)
            rate = (step - start_step) / max(time.perf_counter() - t0, 1e-9)
            if note or step == total_steps or step == start_step + 1 or (
                    cfg.train.log_every and step % cfg.train.log_every == 0):
                log(f"step {step}/{total_steps} loss {row['loss']:.4f} lr {row['lr']:.2e} | {rate:.3g} steps/s "
                    f"{row['samples_per_s']} samples/s | {duration(elapsed)} elapsed, "
                    f"ETA {duration((total_steps - step) / rate)}{note}")
            if stopped_early:
                log(f"early stopping at step {step}: the validation loss has not improved for {patience} "
                    f"evaluations (best {best['val_loss']:.4f} at step {best['step']}, in best/)")
            if step % 4 == 0:
                _malloc_trim()
            if cfg.train.save_every and step % cfg.train.save_every == 0 and step < total_steps and not stop and main:
                save_checkpoint(run, step, lm, optimizer, scheduler,
                                {"step": step, "epoch": epoch, "batch_pos": batch_pos, "rows": rows, "best": best,
                                 "bad_evals": bad_evals, "samples": samples_done}, cfg.train.keep_checkpoints)
                write_log(log_path, rows)
                if tb is not None:
                    tb.flush()
        if batch_pos >= len(batches):
            epoch, batch_pos = epoch + 1, 0

    # ---- save the result in the run folder (main process; FSDP/ZeRO-3 gather the full state first);
    # the last checkpoint is marked finished, so --resume with more steps continues exactly from here
    lm_unwrapped = acc.unwrap_model(model).lm
    if finished != "evaluate":
        if cfg.train.save_every and main:
            save_checkpoint(run, step, lm, optimizer, scheduler,
                            {"step": step, "epoch": epoch, "batch_pos": batch_pos, "rows": rows, "best": best,
                             "bad_evals": bad_evals, "samples": samples_done, "finished": True,
                             "stopped_early": stopped_early}, cfg.train.keep_checkpoints)
        acc.wait_for_everyone()
        state_dict = _gathered_state(acc, model)
        lm_unwrapped.save_pretrained(run, state_dict=state_dict, is_main_process=main, safe_serialization=True)
    metrics = {"train_steps": step, "train_examples": len(items), "truncated_train": n_trunc,
               "trainable_params": n_train, "final_train_loss": rows[-1]["loss"] if rows else None,
               "train_seconds": float(rows[-1]["elapsed_s"]) if rows else 0.0, "processes": acc.num_processes}
    if best:
        metrics.update({"best_step": best["step"], "best_val_loss": round(best["val_loss"], 5)})
    if stopped_early:
        metrics.update({"stopped_early_at": stopped_early, "early_stopping_patience": patience})
    if not main:
        return metrics
    write_log(log_path, rows)
    plot_loss(run / "loss.png", rows)
    if val_items:
        metrics.update(evaluate_run(lm_unwrapped, tokenizer, template, val, val_items, cfg, autocast, run, log))
    metrics["total_seconds"] = round(time.perf_counter() - t_start, 1)
    if tb is not None:
        for key, value in metrics.items():
            if key == "val_loss" and rows and rows[-1].get("val_loss") not in (None, ""):
                continue  # logged at this step already
            if key.startswith(("val_loss", "rouge", "missed", "finding_", "unsupported")) and isinstance(
                    value, (int, float)):
                tb.add_scalar("val/loss" if key == "val_loss" else f"val/{key}", value, step)
        tb.close()
    write_model_card(run, cfg, metrics, {
        "train_pairs": n_train_pairs, "train_items": len(items), "val_items": len(val_items),
        "truncated_val": n_trunc_val, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch, "accum": accum,
        "autocast": str(autocast).replace("torch.", "") if autocast else "off", "n_all": n_all,
        "device": str(acc.device), "micro_batch_why": why if micro_auto else ""})
    (run / VAL_METRICS).write_text(json.dumps(metrics, indent=2))  # last: its presence means "finished"
    log(f"done: {run} {json.dumps({k: v for k, v in metrics.items() if 'rouge' in k or 'loss' in k})}")
    return metrics


def evaluate_run(lm, tokenizer, template, val, val_items, cfg, autocast, run: Path, log) -> dict:
    """Validation loss (teacher forced) and, if asked, greedy generations scored with ROUGE."""
    from radgpt.impress.backends.transformers import generate_batch
    from radgpt.runs.decoding import Decoding

    lm.eval()
    device = next(lm.parameters()).device
    loss = _val_loss(_make_loss_module(lm, autocast), val_items, tokenizer.pad_token_id, cfg.train.pad_multiple,
                     device)
    out = {"val_loss": round(loss, 5)}
    if not cfg.eval.generate:
        return out
    sample = val[: cfg.eval.max_samples] if cfg.eval.max_samples else val
    prompts = [template.render(e.instruction, e.input, e.shots) for e in sample]
    if hasattr(lm, "merge_adapter"):
        lm.merge_adapter()  # merged weights decode faster; the saved adapter is unaffected
    lm.config.use_cache = True
    t0 = time.perf_counter()
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        secs = time.perf_counter() - t0
        eta = secs / done[0] * (len(prompts) - done[0])
        log(f"validation: generated {done[0]}/{len(prompts)} ({100 * done[0] // len(prompts)}%) | "
            f"{duration(secs)} elapsed, ETA {duration(eta)}")

    batch = eval_batch_size(cfg.eval.batch_size, device.type)
    log(f"validation: greedy generation of {len(prompts)} impressions (batch {batch}) ...")
    preds = generate_batch(lm, tokenizer, prompts, Decoding(max_new_tokens=cfg.eval.max_new_tokens),
                           batch, autocast, progress=progress, log=log)
    secs = time.perf_counter() - t0
    with open(run / VAL_PREDICTIONS, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": e.id, "impression": p, "reference": e.output}, ensure_ascii=False) + "\n"
                     for e, p in zip(sample, preds))
    out.update(rouge_summary([e.output for e in sample], preds, [e.input for e in sample]))
    out["val_generated"] = len(preds)
    out["val_generate_seconds"] = round(secs, 1)
    log(f"validation: {json.dumps(out)}")
    return out


def rouge_summary(refs: list[str], hyps: list[str], findings: list[str] | None = None) -> dict:
    """ROUGE as the published Open-i numbers are computed (the metrics registry's `rouge` group:
    rouge_score, no stemming, per-sample F1 mean ×100), also on the references that state a finding
    (`faithfulness.is_abnormal`, the one normal/abnormal rule), plus the faithfulness measures."""
    from radgpt.evaluate.metrics import compute
    from radgpt.findings.faithfulness import faithfulness, is_abnormal

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
