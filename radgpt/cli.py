"""The `radgpt` command: a table of verbs, each a module with `add_arguments(parser)` and `run(args)`.

Modules are imported only when their verb runs, so `radgpt --help` stays instant and `prepare` never
pays for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from radgpt import __version__
from radgpt.common.config import ConfigError
from radgpt.common.errors import FatalError

# verb -> (module, one-line help). The order is the pipeline's order.
VERBS: dict[str, tuple[str, str]] = {
    "prepare": ("radgpt.prepare.cli", "read reports, split sections, build instruction data"),
    "finetune": ("radgpt.finetune.cli", "LoRA/QLoRA instruction-tune a causal LM"),
    "merge": ("radgpt.export.merge", "merge a LoRA adapter into its base model"),
    "export": ("radgpt.export.cli", "export a model to a fast CPU format"),
    "impress": ("radgpt.impress.cli", "write impressions from findings"),
    "serve": ("radgpt.serve.cli", "local OpenAI-compatible server and clinician page"),
    "label": ("radgpt.evaluate.label_cli", "label chest X-ray findings in reports"),
    "evaluate": ("radgpt.evaluate.cli", "score and compare predictions against references"),
    "study": ("radgpt.study.cli", "radiologist reader study: create, serve, analyze"),
}


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package has not landed yet
        return False


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(
        prog="radgpt",
        description="Radiology impressions from findings, locally: prepare → finetune → impress/serve → "
                    "evaluate → study. `radgpt VERB --help` for each.")
    parser.add_argument("--version", action="version", version=f"radgpt {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    return parser, sub


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, sub = build_parser()
    verb = argv[0] if argv and not argv[0].startswith("-") else None
    for name, (module, help_) in VERBS.items():
        if not _available(module):
            continue  # a verb whose module has not landed yet is not offered
        p = sub.add_parser(name, help=help_, description=help_)
        if name == verb:
            importlib.import_module(module).add_arguments(p)
    if verb is not None and verb not in VERBS:
        parser.error(f"unknown verb '{verb}' (choose from {', '.join(VERBS)})")
    # argparse stops collecting a positional list at the first option; verbs whose positionals are
    # `inputs` (paths and key=value overrides) get the rest back, so `prepare a.csv --out o seed=1` works
    args, extra = parser.parse_known_args(argv)
    if extra:
        if any(e.startswith("-") for e in extra) or not isinstance(getattr(args, "inputs", None), list):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.inputs.extend(extra)
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(VERBS[args.verb][0]).run(args) or 0)
    except (FatalError, ConfigError) as e:
        print(f"radgpt {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"radgpt {args.verb}: interrupted", file=sys.stderr)
        return 130
