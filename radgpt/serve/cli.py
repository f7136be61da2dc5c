"""`radgpt serve`: a local OpenAI-compatible server and the clinician page.

    radgpt serve                                     # the default model on http://127.0.0.1:8000
    radgpt serve --model runs/my-run --model baseline:nearest --port 8080
    radgpt serve --host 0.0.0.0 --api-key "$(openssl rand -hex 24)"   # off loopback: a key is required
    RADGPT_API_KEY=... radgpt serve --host 10.0.0.5

Binds 127.0.0.1 by default and refuses any other address unless an API key is set (--api-key or env
RADGPT_API_KEY); with a key every /v1 request needs `Authorization: Bearer <key>`. Requests are audited
as JSON lines (time, client, model, sizes, latency, sha256 of the text — never the text). The server
makes no outbound connections (HF offline mode is forced; telemetry is off). Endpoints and limits are
described in radgpt/serve/app.py and docs/serve.md.
"""

from __future__ import annotations

import argparse
import os

from radgpt.common.errors import FatalError
from radgpt.common.net import is_loopback, slow_client_guard

LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", dest="models", metavar="MODEL",
                   help="run folder, export folder or baseline:NAME; repeat to serve several (first = default)")
    p.add_argument("--name", action="append", dest="names", metavar="NAME",
                   help="the model's name in the API, one per --model (default: the folder name)")
    from radgpt.impress.load import BACKENDS

    p.add_argument("--backend", default="auto", choices=list(BACKENDS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--cases", help="JSONL of prior cases for similar-case retrieval (default: the run's own)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY (default: env RADGPT_API_KEY)")
    p.add_argument("--audit-log", default="radgpt-serve-audit.jsonl",
                   help="JSON-lines audit log (no report text); '' to disable")
    p.add_argument("--max-batch", type=int, default=16, help="requests decoded together")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before answering 429")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request before 504")
    p.add_argument("--max-tokens", type=int, default=256, help="largest max_tokens a request may ask")
    p.add_argument("--max-body-kb", type=int, default=256, help="largest request body (413 above)")
    p.add_argument("--max-prompt-tokens", type=int, default=2048,
                   help="largest prompt in tokens, template and similar cases included (400 above)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from radgpt.impress.load import load_model
    from radgpt.serve.app import Settings, create_app

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[var] = "1"  # nothing is fetched from a hub at serve time
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    api_key = args.api_key or os.environ.get("RADGPT_API_KEY") or None
    loopback = is_loopback(args.host)
    if not loopback and not api_key:
        raise FatalError(f"refusing to bind {args.host} without an API key: the server reads report text; "
                         "pass --api-key KEY (or set RADGPT_API_KEY), or keep the default 127.0.0.1")
    specs = args.models or [None]
    names = args.names or []
    if len(names) > len(specs):
        raise FatalError("more --name than --model")
    models = {}
    for i, spec in enumerate(specs):
        name = names[i] if i < len(names) else (spec if spec and spec.startswith("baseline:") else None)
        if name is None:
            from radgpt.impress.load import _find_model_dir

            name = _find_model_dir(spec).resolve().name
        if name in models:
            raise FatalError(f"two models named '{name}': give --name for each")

        def loader(spec=spec):
            return load_model(spec, backend=args.backend, device=args.device, cases=args.cases,
                              threads=args.threads, log=lambda m: print(f"radgpt serve: {m}", flush=True))
        models[name] = loader
    settings = Settings(max_body_bytes=args.max_body_kb * 1024, max_tokens=args.max_tokens,
                        max_prompt_tokens=args.max_prompt_tokens,
                        timeout_s=args.timeout, max_batch=args.max_batch, max_queue=args.max_queue,
                        batch_wait_ms=args.batch_wait_ms, api_key=api_key, audit_log=args.audit_log or None,
                        allowed_hosts=LOOPBACK_NAMES if loopback else None)
    app = create_app(models, settings)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"radgpt serve: http://{shown}:{args.port}  models: {', '.join(models)}"
          f"{'  (API key required)' if api_key else ''}  audit log: {args.audit_log or 'off'}", flush=True)
    # slow clients get 10 s to send a request and 5 s of keep-alive idling; shutdown waits at most 5 s
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                http=slow_client_guard(10.0), timeout_keep_alive=5, timeout_graceful_shutdown=5)
    return 0
