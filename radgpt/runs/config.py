"""A run's typed configuration: what `radgpt finetune` reads (configs/*.yaml + key=value overrides) and writes
resolved into the run folder's config.yaml, and what every reader of a run folder loads back with the same
strict loader (radgpt.common.config), so a renamed or misspelt key fails loudly instead of reading a default.

Each field's comment is its documentation: `radgpt finetune --help` prints them (common.config.config_help).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from radgpt.prepare.tasks import PAPER_INSTRUCTION
from radgpt.runs.base_models import DEFAULT_BASE


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
    # on a new prompt or new data instead of from zero. The shipped models/radgpt-smollm2-135m works
    # with configs/smollm2-135m-cpu.yaml (r 16, all 7 projections, chatml-cases, retrieval_k 3) to adapt
    # it to a hospital's own reports (data.train=<radgpt prepare folder>)
    init_from: str = ""


@dataclass
class DataSettings:
    # a .jsonl file (instruction/input/output, inputs/target, findings/impression or messages rows), or a
    # `radgpt prepare` output folder: its alpaca/train.jsonl is read (and its alpaca/validate.jsonl, when
    # data.validate is left at the default)
    train: str = "data/openi/clin-summ/train.jsonl"
    validate: str = "data/openi/clin-summ/validate.jsonl"  # a .jsonl file or a prepare folder; "" = none
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
    # examples per forward/backward pass on each device; the step's effective batch stays batch_size
    # (gradient accumulation = batch_size / micro_batch_size / processes). auto: on a CUDA GPU the largest
    # power of two that fits, found at start-up by a forward+backward of the longest training examples
    # (halved on out-of-memory); on CPU 4 (memory is not what limits a CPU run). The size that ran is
    # printed and written into the run folder's config.yaml, which --resume reuses
    micro_batch_size: int | Literal["auto"] = "auto"
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
    log_every: int = 1  # optimizer steps between progress lines (loss, steps/s, ETA)
    # validation loss every N optimizer steps (0 = only at the end); the adapter with the lowest one is
    # kept in best/ and named in the model card
    eval_every: int = 0
    # stop when the validation loss has not improved for this many evaluations in a row (0 = off;
    # needs eval_every)
    early_stopping_patience: int = 0
    tensorboard: bool = True  # event files in RUN/runs/ (when the tensorboard package is installed)


@dataclass
class EvalSettings:
    generate: bool = True  # greedy-generate the validation set at the end and score ROUGE
    max_samples: int = 0  # 0 = the whole validation set
    max_new_tokens: int = 64
    # prompts per generate call (similar lengths together). auto: 16 on CPU; 128 on a CUDA GPU, halved
    # whenever a call runs out of GPU memory
    batch_size: int | Literal["auto"] = "auto"


@dataclass
class FinetuneConfig:
    out: str = "runs/radgpt"  # the run folder (a trained one is only continued with --resume)
    model: ModelSettings = field(default_factory=ModelSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)


@dataclass
class MergedFrom:
    run: str = ""  # the run folder `radgpt merge` merged
    base: str = ""  # the base model its adapter was merged into


@dataclass
class RunConfig(FinetuneConfig):
    """A run folder's config.yaml: the finetune config, plus what `radgpt merge` records in a merged folder."""

    merged_from: MergedFrom = field(default_factory=MergedFrom)
