#!/usr/bin/env bash
# The GPU path, measured (issue #14): bench/gpu_check.py on a CUDA machine, offline, in under 8 minutes on one
# H200. Prints one table (training samples/s, tokens/s, peak GPU memory, MFU, the auto micro-batch, validation
# generation, impress, the projected MIMIC-CXR epoch); copies results.json, table.md and the log to $OUT when the
# device tool sets it.
#
# Through the device tool (its machine has torch, accelerate, safetensors, tokenizers, pyyaml, scipy, rich; not
# radgpt's pinned transformers/peft nor rouge_score/nltk): once, here, in the repo root, fetch the pinned wheels
# (versions from requirements.txt; rouge_score ships only a source archive, so it is built into a wheel here):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       transformers==5.24.0 peft==0.21.2 nltk==3.10.4 defusedxml==0.7.1
#   python3 -m pip wheel --no-deps -w .whl rouge_score==0.1.2
#
# then run it with carry [".whl"]:
#
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=600)
#
# Anywhere without a GPU, `bash bench/gpu_check.sh` (or `python bench/gpu_check.py --tiny`) runs the tiny shape on
# CPU end to end. Extra arguments go to gpu_check.py (--peak-tflops for another GPU, --only 7b, --steps N).
set -euo pipefail
cd "$(dirname "$0")/.."

# never download: the hub is not asked for anything (every model here is a local folder)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1

PY=python3
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# fail in seconds, with the fix, rather than minutes in
"$PY" - <<'EOF'
import importlib, re, sys
from pathlib import Path
pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", Path("requirements.txt").read_text(), re.M))
missing, other = [], []
for mod, pkg in [("torch", None), ("transformers", "transformers"), ("peft", "peft"), ("accelerate", "accelerate"),
                 ("safetensors", "safetensors"), ("tokenizers", None), ("yaml", None), ("rouge_score", "rouge_score"),
                 ("nltk", None), ("rich", None), ("scipy", None), ("defusedxml", None)]:
    try:
        m = importlib.import_module(mod)
    except ImportError:
        missing.append(mod)
        continue
    if pkg in ("transformers", "peft") and getattr(m, "__version__", "") != pins.get(pkg):
        other.append(f"{pkg} {m.__version__} (requirements.txt pins {pins.get(pkg)})")
if other:
    print("gpu_check: note: " + "; ".join(other), flush=True)
if missing:
    sys.exit(f"gpu_check: missing Python packages {missing}: carry them as wheels (see this script's header)")
EOF

OUTDIR=bench/out/gpu_check
if [ -n "${OUT:-}" ]; then OUTDIR=/tmp/gpu_check; fi  # on the device: models on its own disk, results to $OUT
set +e
"$PY" bench/gpu_check.py --work "$OUTDIR" "$@" 2>&1 | tee /tmp/gpu_check.log
rc=${PIPESTATUS[0]}
set -e
if [ -n "${OUT:-}" ]; then
    cp /tmp/gpu_check.log "$OUT/gpu_check.log"
    cp "$OUTDIR/results.json" "$OUTDIR/table.md" "$OUT/" 2>/dev/null || true
fi
exit "$rc"
