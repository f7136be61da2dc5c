"""`radgpt serve`: a local OpenAI-compatible server and the clinician page.

    radgpt serve                                     # the default model on http://127.0.0.1:8000
    radgpt serve --model runs/my-run --model baseline:nearest --port 8080
    radgpt serve --config serve.yaml timeout_s=30 max_batch=8
    radgpt serve --host 0.0.0.0 --api-key "$(openssl rand -hex 24)"   # off loopback: a key is required
    RADGPT_API_KEY=... radgpt serve --host 10.0.0.5

Configured by one dataclass, radgpt.serve.config.ServeConfig: its defaults ← a YAML file (`--config`) ←
`key=value` overrides ← the flags, each of which sets one key (`--timeout 30` is `timeout_s=30`).

Binds 127.0.0.1 by default and refuses any other address unless an API key is set (api_key, or env
RADGPT_API_KEY); with a key every /v1 request needs `Authorization: Bearer <key>`. Requests are audited
as JSON lines (time, client, model, sizes, latency, sha256 of the text — never the text). The server
makes no outbound connections (HF offline mode is forced; telemetry is off). Endpoints and limits are
described in radgpt/serve/app.py and docs/serve.md.
"""

from __future__ import annotations

import argparse
import os

from radgpt.common.config import add_config_flags, config_help, flag_values, load_config
from radgpt.common.errors import FatalError
from radgpt.common.net import LOOPBACK_NAMES, is_loopback, no_egress_env, slow_client_guard
from radgpt.serve.config import ServeConfig

# flags whose spelling is not the key's own (--model is repeated, one per model; --timeout predates timeout_s)
FLAG_SPELLINGS = {"models": {"names": ["--model"], "metavar": "MODEL"},
                  "names": {"names": ["--name"], "metavar": "NAME"},
                  "allowed_hosts": {"names": ["--allowed-host"], "metavar": "HOST"},
                  "timeout_s": {"names": ["--timeout", "--timeout-s"], "metavar": "SECONDS"}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--config", help="YAML config (ServeConfig, keys below); key=value overrides follow")
    p.add_argument("inputs", nargs="*", metavar="key=value", help="config overrides, e.g. timeout_s=30")
    flags = add_config_flags(p, ServeConfig, flags=FLAG_SPELLINGS)
    p.epilog = config_help(ServeConfig(), flags=flags) + """

examples:
  radgpt serve --model runs/my-run --model baseline:nearest --port 8080
  radgpt serve --config serve.yaml timeout_s=30 max_batch=8
  radgpt serve --host 0.0.0.0 --api-key "$(openssl rand -hex 24)"   # off loopback a key is required"""


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """Defaults ← --config YAML ← flags ← key=value; then the key from the environment and, on loopback, the
    loopback Host names."""
    bad = [x for x in args.inputs if "=" not in x]
    if bad:
        raise FatalError(f"expected key=value overrides, got {bad}")
    cfg = load_config(ServeConfig, args.config, args.inputs, flags=flag_values(args))
    cfg.api_key = cfg.api_key or os.environ.get("RADGPT_API_KEY", "")
    if not cfg.allowed_hosts and is_loopback(cfg.host):
        cfg.allowed_hosts = list(LOOPBACK_NAMES)
    return cfg.check()


def run(args: argparse.Namespace) -> int:
    no_egress_env()  # before any model library is imported: nothing is fetched from a hub at serve time
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = config_from_args(args)
    if not is_loopback(cfg.host) and not cfg.api_key:
        raise FatalError(f"refusing to bind {cfg.host} without an API key: the server reads report text; "
                         "pass --api-key KEY (or set RADGPT_API_KEY), or keep the default 127.0.0.1")
    models = _loaders(cfg)

    import uvicorn

    from radgpt.serve.app import create_app

    app = create_app(models, cfg)
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"radgpt serve: http://{shown}:{cfg.port}  models: {', '.join(models)}"
          f"{'  (API key required)' if cfg.api_key else ''}  audit log: {cfg.audit_log or 'off'}", flush=True)
    # slow clients get 10 s to send a request and 5 s of keep-alive idling; shutdown waits at most 5 s
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                http=slow_client_guard(10.0), timeout_keep_alive=5, timeout_graceful_shutdown=5)
    return 0


def _loaders(cfg: ServeConfig) -> dict:
    """API name → a function loading that model (run by the app in the background: /health says loading)."""
    from radgpt.impress.load import _find_model_dir, load_model

    models = {}
    for i, spec in enumerate(cfg.models or [None]):
        name = cfg.names[i] if i < len(cfg.names) else None
        if name is None and spec and spec.startswith("baseline:"):
            name = spec
        if name is None:
            name = _find_model_dir(spec).resolve().name
        if name in models:
            raise FatalError(f"two models named '{name}': give --name (names) for each")

        def loader(spec=spec):
            return load_model(spec, backend=cfg.backend, device=cfg.device, cases=cfg.cases or None,
                              threads=cfg.threads, log=lambda m: print(f"radgpt serve: {m}", flush=True))
        models[name] = loader
    return models
