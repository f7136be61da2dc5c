"""The run's model card (README.md), training log (train_log.csv) and loss plot, written from the config
and the measured figures."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

from radgpt.common.errors import FatalError
from radgpt.runs.config import FinetuneConfig
from radgpt.runs.folders import MODEL_CARD, VAL_METRICS
from radgpt.runs.run import RunFolder


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


OPENI = re.compile(r"openi|open-i|clin-summ", re.IGNORECASE)


def _base_name(base: str) -> str:
    """The base model as the card names it: packaged:NAME and hub ids as they are, a local path as its basename."""
    if base.startswith("packaged:"):
        return base
    p = Path(base).expanduser()
    if p.exists() or re.match(r"^(/|~|\.{1,2}/|[A-Za-z]:[\\/])", base) or base.count("/") != 1:
        return p.name or base
    return base  # org/name on the hub


def _trained_on_openi(cfg: FinetuneConfig) -> bool:
    """OpenI text (CC BY-NC-ND 4.0) went into this model: its data paths, or those of the adapter it started from."""
    texts = [cfg.data.train, cfg.data.validate]
    if cfg.lora.init_from:
        src = Path(cfg.lora.init_from)
        try:
            data = RunFolder(src).config.data
            texts += [data.train, data.validate]
        except FatalError:
            pass
        try:
            head = (src / MODEL_CARD).read_text(encoding="utf-8").split("\n---", 1)[0]
            if re.search(r"^license:\s*cc-by-nc-nd", head, re.MULTILINE):
                return True
        except OSError:
            pass
    return any(OPENI.search(t or "") for t in texts)


def _contents(run: Path, cfg: FinetuneConfig, metrics: dict, expected: tuple[str, ...] = ()) -> list[str]:
    """The "What this folder contains" section: each file, what it is, whether it holds report text
    (radgpt.export.cli's table of files, which `radgpt export` rewrites for a shared folder)."""
    from radgpt.runs.folders import CARD_SECTION, FILE_NOTES, describe

    what = "adapter" if cfg.lora.method == "lora" else "model"
    extra = {
        "best/": ((f"the {what} with the lowest validation loss (step {metrics.get('best_step')}), loadable as a "
                   "run folder: `radgpt impress --model RUN/best`"), "no (weights)"),
        "runs/": (("TensorBoard event files: loss, learning rate, throughput and validation loss per step "
                   "(`tensorboard --logdir RUN/runs`)"), "no (numbers only)"),
    }
    rows = [(n, *extra[n]) if n in extra else (n, w, t) for n, w, t in describe(run)]
    have = {n for n, _, _ in rows}
    rows += [(n, *FILE_NOTES[n]) for n in expected if n not in have and n in FILE_NOTES]
    rows.sort(key=lambda r: r[0].lower())
    text = [n for n, _, t in rows if t.startswith("YES")]
    lines = [CARD_SECTION, ""]
    if text:
        lines += [(f"{' and '.join(f'`{n}`' for n in text)} hold{'s' if len(text) == 1 else ''} report text verbatim "
                   "(licence above): sharing this folder as it is shares "
                   f"{'it' if len(text) == 1 else 'them'}. `radgpt export {run.name} --format adapter --without-cases "
                   "--out DIR` makes a copy without "
                   f"{'it' if len(text) == 1 else 'them'} and without the data paths of `config.yaml`."), ""]
    lines += ["| file | what it is | holds report text |", "|---|---|---|"]
    lines += [f"| `{n}` | {w} | {t} |" for n, w, t in rows]
    return lines


def _figure(value, fmt: str = "{:.2f}") -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else "—"


def write_model_card(run: Path, cfg: FinetuneConfig, metrics: dict, info: dict) -> Path:
    """README.md of the run folder: base, data, recipe, validation figures, licence, intended use and
    what each file is (written at the end of a run; PEFT's empty card is replaced)."""
    from datetime import date

    lora, data, train = cfg.lora, cfg.data, cfg.train
    openi = _trained_on_openi(cfg)
    base = _base_name(cfg.model.base)
    kind = "LoRA adapter" if lora.method == "lora" else "fully fine-tuned model"
    train_file, val_file = Path(data.train).name, Path(data.validate).name if data.validate else ""
    card = (run / MODEL_CARD)
    if not card.exists():
        card.write_text("")  # listed by the contents table below
    tags = ["radiology", "impression-generation", "radgpt"] + (["lora"] if lora.method == "lora" else []) + (
        ["openi"] if openi else [])
    out = ["---", f"license: {'cc-by-nc-nd-4.0' if openi else 'unknown'}", f"base_model: {base}",
           f"library_name: {'peft' if lora.method == 'lora' else 'transformers'}", f"tags: [{', '.join(tags)}]", "---",
           "", f"# {run.resolve().name} — radiology impressions from findings",
           "",
           (f"A {kind} for **{base}**, trained with `radgpt finetune` on {date.today().isoformat()}: the findings of a "
            "radiology report in, a draft impression out. This folder is a radgpt run folder: `radgpt impress`, "
            "`serve`, `merge` and `export` load it as it is."), "",
           "## Licence — read this first", ""]
    if openi:
        out.append("- **Non-commercial only.** It was trained on OpenI report text (Indiana University chest X-ray "
                   "collection, distributed by the U.S. National Library of Medicine), licensed **CC BY-NC-ND 4.0** "
                   "(non-commercial, attribution, no derivatives beyond format). Attribution: Demner-Fushman D. et al., "
                   "*Preparing a collection of radiology examinations for distribution and retrieval*, JAMIA "
                   "2016;23(2):304-310.")
    else:
        out.append(f"- **The licence of the training data is not known to radgpt.** The model was trained on "
                   f"`{train_file}`: if those are your institution's reports, the weights and the files below that hold "
                   "report text fall under whatever governs that data (data-use agreement, ethics approval, privacy "
                   "law). Check it before sharing this folder.")
    if lora.init_from:
        out.append(f"- It continues the adapter in `{Path(lora.init_from).name}` (`lora.init_from`): that adapter's "
                   "training data and licence carry over.")
    out.append(f"- The base model `{base}` keeps its own licence" + (
        "; its weights are not in this folder." if lora.method == "lora" else
        "; the weights in this folder are derived from it."))
    out += ["- Not a medical device (see Intended use).", "",
            "## Intended use", "",
            ("- **An assistive draft for a radiologist**: it suggests an impression from the findings section, for the "
             "radiologist to read, correct and sign. It is not a diagnosis, must not be used without a radiologist's "
             "review, and has not been evaluated as a medical device."),
            (f"- It writes in the style of its training reports ({info['train_pairs']:,} pairs from `{train_file}`). "
             "On other institutions' reports, modalities or languages, measure it on your own validation data first "
             "(`radgpt evaluate`)."),
            ("- It can miss a finding or state one the findings do not; `radgpt impress` / `serve` flag impressions "
             "that name findings the findings do not support."), "",
            "## Base model", "",
            (f"`{base}`" + (f", {cfg.model.quantization} quantization (QLoRA)" if cfg.model.quantization else "") +
             f"; autocast {info['autocast']} on {info['device']}; {info['n_all']:,} parameters."), "",
            "## Data", "",
            "| split | file | examples |", "|---|---|---:|",
            f"| training | `{train_file}` | {info['train_pairs']:,} |"]
    if info["train_items"] != info["train_pairs"]:
        out.append(f"| training, after `oversample_abnormal: {data.oversample_abnormal}` | | {info['train_items']:,} |")
    out.append(f"| validation | `{val_file}` | {info['val_items']:,} |" if val_file else "| validation | none | 0 |")
    out += ["", (f"Tasks {', '.join(data.tasks)}; prompt template `{Path(data.template).name}` (saved as "
                 f"`prompt_template.json`); {data.retrieval_k} retrieved prior case(s) per prompt"
                 f"{f' (matched by {data.retrieval_match})' if data.retrieval_k else ''}; examples longer than "
                 f"{data.cutoff_len} tokens truncated ({metrics.get('truncated_train', 0)} training, "
                 f"{info['truncated_val']} validation). Paths are given as file names only; `config.yaml` holds them "
                 "in full."), "",
            "## Recipe", "", "| setting | value |", "|---|---|"]
    if lora.method == "lora":
        out.append(f"| method | LoRA r={lora.r}, alpha={lora.alpha} (scale {lora.alpha / lora.r:g}), dropout "
                   f"{lora.dropout:g} on the {'rank-r activations' if lora.dropout_site == 'rank' else 'inputs'} |")
        out.append(f"| target modules | {', '.join(lora.target_modules)} |")
        out.append(f"| starting adapter | {f'`{Path(lora.init_from).name}` (lora.init_from)' if lora.init_from else 'none (from zero)'} |")
    else:
        out.append("| method | full fine-tuning (all weights trainable) |")
    n_params = metrics.get("trainable_params") or 0
    length = (f"{train.max_steps} optimizer steps (train.max_steps)" if train.max_steps else
              f"{train.epochs:g} epoch(s) = {info['total_steps']} optimizer steps")
    out += [f"| trainable parameters | {n_params:,} of {info['n_all']:,} ({100 * n_params / max(info['n_all'], 1):.2f}%) |",
            (f"| optimizer | AdamW, lr {train.lr:g}, weight decay {train.weight_decay:g}, max grad norm "
             f"{train.max_grad_norm:g}; {train.lr_scheduler} schedule, {train.warmup_steps} warm-up steps |"),
            (f"| batch | {train.batch_size} examples per optimizer step ({info['accum']} × {train.micro_batch_size} × "
             f"{metrics.get('processes', 1)} process(es))"
             f"{'; micro-batch ' + info['micro_batch_why'] if info.get('micro_batch_why') else ''} |"),
            (f"| length | {length}; {info['steps_per_epoch']} steps make an epoch; trained "
             f"{metrics.get('train_steps')} |")]
    if metrics.get("stopped_early_at"):
        out.append(f"| early stopping | stopped at step {metrics['stopped_early_at']}: no lower validation loss in "
                   f"{metrics.get('early_stopping_patience')} evaluations |")
    if train.eval_every:
        out.append(f"| validation during training | loss every {train.eval_every} steps; lowest kept in `best/` |")
    out += [f"| seed | {train.seed} |",
            f"| training time | {duration(float(metrics.get('train_seconds') or 0))} (h:mm:ss) |", "",
            "## Validation figures", ""]
    if "val_loss" not in metrics:
        out.append("No validation set was given (`data.validate` empty): no figures.")
    else:
        out += ["| figure | value |", "|---|---:|",
                f"| validation loss (teacher forced, per response token), last step | {_figure(metrics['val_loss'], '{:.4f}')} |"]
        if metrics.get("best_step"):
            out.append(f"| lowest validation loss during training (step {metrics['best_step']}, the weights in "
                       f"`best/`) | {_figure(metrics.get('best_val_loss'), '{:.4f}')} |")
        if "rougeL" in metrics:
            out += [(f"| ROUGE-1 / ROUGE-2 / ROUGE-L | {_figure(metrics.get('rouge1'))} / {_figure(metrics.get('rouge2'))}"
                     f" / {_figure(metrics.get('rougeL'))} |"),
                    (f"| ROUGE-L on the {metrics.get('n_abnormal', '?')} references that state a finding | "
                     f"{_figure(metrics.get('rougeL_abnormal'))} |"),
                    (f"| missed abnormal (% of those references whose impression here states no finding) | "
                     f"{_figure(metrics.get('missed_abnormal'), '{:.1f}')} |"),
                    (f"| finding precision / recall / F1 | {_figure(metrics.get('finding_precision'), '{:.1f}')} / "
                     f"{_figure(metrics.get('finding_recall'), '{:.1f}')} / {_figure(metrics.get('finding_f1'), '{:.1f}')} |"),
                    (f"| unsupported findings (% of stated findings; the references: "
                     f"{_figure(metrics.get('unsupported_rate_references'), '{:.1f}')}) | "
                     f"{_figure(metrics.get('unsupported_rate'), '{:.1f}')} |"), "",
                    (f"Greedy decoding of {metrics.get('val_generated')} validation examples (max "
                     f"{cfg.eval.max_new_tokens} new tokens, no repair). ROUGE as the published Open-i numbers are "
                     "computed (`rouge_score`, no stemming, per-sample F1 averaged, ×100); \"states a finding\" is "
                     "`radgpt.findings.faithfulness.is_abnormal`. All from `val_metrics.json`; `radgpt evaluate` "
                     "gives them with confidence intervals.")]
        else:
            out += ["", "The validation set was not generated (`eval.generate: false`): no ROUGE figures."]
    out += [""] + _contents(run, cfg, metrics, expected=(VAL_METRICS,)) + [
        "", "## Reproduce", "", "```bash",
        f"radgpt finetune --config {run.name}/config.yaml out=runs/{run.name}-again   # the resolved config of this run",
        "```", "", ("`config.yaml` names the training files as they were on the training machine; a copy shared with "
                    "`radgpt export` has them removed: give `data.train=` and `data.validate=`."), ""]
    card.write_text("\n".join(out), encoding="utf-8")
    return card


def write_log(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))  # rows from before a new column get it empty
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)


def plot_loss(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.5, label="train")
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") not in (None, "")]
    if val:
        ax.plot(*zip(*val), "o-", ms=3, lw=1, label="validation")
        ax.legend()
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (response tokens)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
