"""`train.micro_batch_size: auto` and `eval.batch_size: auto`: batch sizes that fit the device.

On a CUDA GPU the micro-batch decides the speed: the paper recipe on a 7B model ran 27.4 samples/s at
micro-batch 4 and 88.9 at 32 on one H200 (issue #14), with the same effective batch. `auto` finds the
largest micro-batch that fits once, at start-up: a forward+backward of the longest training examples at
each power-of-two size (largest first; batch_size must stay a multiple of it, so gradient accumulation keeps
the effective batch), halving on out-of-memory. On CPU nothing is probed: memory is not what limits a CPU
run, and running out of it there is the OS killing the process, not an error to catch.

Generation backs off the same way (radgpt.impress.backends.transformers.generate_batch), with the same
test for an out-of-memory error (`out_of_memory`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from radgpt.common.errors import FatalError
from radgpt.impress.backends.transformers import free_device_memory, out_of_memory

# auto on CPU: the size every config without the key trained with before `auto` (the alpaca-lora recipe's
# micro-batch), so a CPU run's batches, and so its numbers, stay what they were
CPU_MICRO_BATCH = 4
CPU_EVAL_BATCH = 16  # the validation generation batch before `auto`: CPU outputs stay the same
CUDA_EVAL_BATCH = 128  # KV cache of 128 × (512 + 128) tokens of a 7B model in bf16: ~43 GB; halved on OOM
# a probe that fits but leaves less than this share of the GPU free is treated as too big: training's
# variable-length batches fragment memory, so the measured peak is not all a run needs
MEMORY_HEADROOM = 0.9

ADVICE = ("model.gradient_checkpointing=true (activations), model.quantization=4bit (QLoRA, weights) or a "
          "lower data.cutoff_len")


def micro_batch_candidates(batch_size: int, processes: int = 1) -> list[int]:
    """The power-of-two micro-batches m, largest first, for which batch_size is a multiple of m × processes
    (so the accumulation count batch_size / (m × processes) is whole)."""
    if batch_size < 1 or batch_size % processes:
        raise FatalError(f"train.batch_size ({batch_size}) must be a positive multiple of the number of "
                         f"processes ({processes})")
    sizes, m = [], 1
    while m * processes <= batch_size:
        if batch_size % (m * processes) == 0:
            sizes.append(m)
        m *= 2
    return sizes[::-1]


def first_that_fits(sizes: Sequence[int], attempt: Callable[[int], bool], log=print, what: str = "micro batch"
                    ) -> int:
    """The first of `sizes` (largest first) for which `attempt(size)` returns True. An out-of-memory error
    (`out_of_memory`) or False (it fitted, but too tightly) moves on to the next size; any other error is
    raised. FatalError when none fits."""
    for i, size in enumerate(sizes):
        try:
            if attempt(size):
                return size
            why = f"over {MEMORY_HEADROOM:.0%} of GPU memory"
        except Exception as e:
            if not out_of_memory(e):
                raise
            why = "out of memory"
        # here, outside the except block: its traceback (and so the failed attempt's tensors) is released
        free_device_memory()
        nxt = f"; trying {sizes[i + 1]}" if i + 1 < len(sizes) else ""
        log(f"{what} {size}: {why}{nxt}")
    raise FatalError(f"{what}: even {sizes[-1] if sizes else 1} does not fit in GPU memory; try {ADVICE}")


def probe_micro_batch(loss_module, items: list, pad_id: int, pad_multiple: int, sizes: Sequence[int], device,
                      log=print, headroom: float = MEMORY_HEADROOM) -> int:
    """The largest of `sizes` whose training step fits: two forward+backward passes (the second with the
    first's gradients held, as accumulation has them) of the longest `items`, beside a buffer the size of
    AdamW's two moments of the trainable weights. Weights, gradients and random streams are left as they were
    (dropout in the probe must not shift the run's randomness: the number of tries depends on the GPU)."""
    import torch

    from radgpt.finetune.data import collate

    device = torch.device(device)
    cuda = device.type == "cuda"
    longest = sorted(items, key=lambda t: len(t.input_ids), reverse=True)
    if not longest:
        raise FatalError("train.micro_batch_size=auto: no training examples to measure with")
    params = [p for p in loss_module.parameters() if p.requires_grad]
    optimizer_bytes = 2 * sum(p.numel() * p.element_size() for p in params)  # exp_avg + exp_avg_sq
    total = torch.cuda.get_device_properties(device).total_memory if cuda else 0

    def attempt(m: int) -> bool:
        batch = [longest[i % len(longest)] for i in range(m)]  # fewer examples than m: the longest repeat
        ids, labels, mask = (t.to(device) for t in collate(batch, pad_id, pad_multiple))
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        ballast = torch.empty(optimizer_bytes, dtype=torch.uint8, device=device)
        try:
            for _ in range(2):
                loss_module(ids, labels, mask).backward()
            if not cuda:
                return True
            peak = torch.cuda.max_memory_allocated(device)
            fits = peak <= headroom * total
            log(f"micro batch {m} × {ids.shape[1]} tokens: peak {peak / 2**30:.1f} of {total / 2**30:.1f} GiB"
                f"{'' if fits else ' — too close to full'}")
            return fits
        finally:
            del ballast
            for p in params:
                p.grad = None

    was_training = loss_module.training
    loss_module.train()
    devices = [device] if cuda else []
    try:
        with torch.random.fork_rng(devices=devices):
            return first_that_fits(list(sizes), attempt, log)
    finally:
        loss_module.train(was_training)
        free_device_memory()
        if cuda:  # the run's own peak, not the probe's, is what max_memory_allocated reports from here
            torch.cuda.reset_peak_memory_stats(device)


def resolve_micro_batch(setting: int | str, batch_size: int, device: str, processes: int = 1,
                        probe: Callable[[list[int]], int] | None = None, saved: int | None = None
                        ) -> tuple[int, str]:
    """(micro-batch, why) for `train.micro_batch_size`. An integer is checked and kept. `auto` is the size a
    resumed run folder recorded (`saved`: a checkpoint counts its place in batches of that size), else on CPU
    CPU_MICRO_BATCH, else on a GPU `probe(candidates)` (probe_micro_batch)."""
    if setting != "auto":
        if not isinstance(setting, int) or isinstance(setting, bool) or setting < 1:
            raise FatalError(f"train.micro_batch_size must be a positive integer or auto, got {setting!r}")
        if batch_size % (setting * processes):
            raise FatalError(f"train.batch_size ({batch_size}) must be a multiple of "
                             f"train.micro_batch_size × processes ({setting} × {processes})")
        return setting, "set in the config"
    sizes = micro_batch_candidates(batch_size, processes)
    if saved is not None and saved in sizes:
        return saved, "auto: the size this run folder was started with (its config.yaml)"
    if device != "cuda":
        # the largest candidate <= CPU_MICRO_BATCH (batch_size must stay a multiple of it)
        return next(m for m in sizes if m <= CPU_MICRO_BATCH), "auto on CPU (not probed)"
    if probe is None:
        raise ValueError("resolve_micro_batch: a GPU needs a probe")
    return probe(sizes), "auto: the largest power of two whose training step fitted in GPU memory"


def eval_batch_size(setting: int | str, device: str) -> int:
    """`eval.batch_size`: an integer as given; auto is CPU_EVAL_BATCH on CPU, CUDA_EVAL_BATCH on a GPU
    (generate_batch halves it on out-of-memory)."""
    if setting == "auto":
        return CUDA_EVAL_BATCH if device == "cuda" else CPU_EVAL_BATCH
    if not isinstance(setting, int) or isinstance(setting, bool) or setting < 1:
        raise FatalError(f"eval.batch_size must be a positive integer or auto, got {setting!r}")
    return setting
