"""A synthetic study (invented report text, no patient data) for tests, the load benchmark and trying the app,
and a throwaway `radgpt study serve` subprocess on loopback.

    python -m radgpt.study.synthetic OUT_DIR      # writes references.jsonl + one predictions file per model
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from radgpt.common.net import free_port, wait_until_healthy  # noqa: F401 — free_port: used from here by tests
from radgpt.study import auth
from radgpt.study.create import create_study
from radgpt.study.db import open_db

_NORMAL_FINDINGS = [
    "Heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
    "Normal cardiomediastinal silhouette. No focal consolidation. No effusion.",
    "The heart and mediastinum are within normal limits. Lungs are clear bilaterally.",
]
_ABNORMAL = [
    ("Right lower lobe airspace opacity. Heart size normal.", "Right lower lobe pneumonia."),
    ("Enlarged cardiac silhouette. Small bilateral effusions.", "Cardiomegaly with small bilateral effusions."),
    ("Left apical pneumothorax, approximately 2 cm.", "Small left apical pneumothorax."),
    ("Hyperinflated lungs with flattened diaphragms.", "Emphysema without acute process."),
]
NORMAL_IMPRESSION = "No acute cardiopulmonary abnormality."
_INDICATIONS = ["Cough and fever for three days.", "Shortness of breath.", "Chest pain after a fall.",
                "Preoperative evaluation."]


def write_files(out: Path, n_cases: int = 12, models: tuple[str, ...] = ("alpha", "beta", "gamma"),
                seed: int = 0) -> tuple[Path, list[tuple[str, Path]]]:
    """references.jsonl ({"id","indication","findings","impression"}) and <model>.jsonl ({"id","impression"})."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    refs = []
    for i in range(n_cases):
        if i % 2:
            findings, impression = rng.choice(_ABNORMAL)
        else:
            findings, impression = rng.choice(_NORMAL_FINDINGS), NORMAL_IMPRESSION
        refs.append({"id": f"case{i:03d}", "indication": rng.choice(_INDICATIONS), "findings": findings,
                     "impression": impression})
    ref_path = out / "references.jsonl"
    ref_path.write_text("".join(json.dumps(r) + "\n" for r in refs), encoding="utf-8")
    preds = []
    for k, model in enumerate(models):
        path = out / f"{model}.jsonl"
        lines = []
        for r in refs:
            # Each model writes a recognisably different text, so a test can tell if one leaks; except that the
            # first copies the reference's normal sentence, as real models do (the same text as the reference
            # candidate in an --include-reference study: shown once, rated for both).
            if k == 0:
                normal = r["impression"] == NORMAL_IMPRESSION
                text = r["impression"] if normal else r["impression"].rstrip(".") + ", as described."
            else:
                text = r["findings"] if k == 1 else f"{r['impression']} Clinical correlation."
            lines.append(json.dumps({"id": r["id"], "impression": text}) + "\n")
        path.write_text("".join(lines), encoding="utf-8")
        preds.append((model, path))
    return ref_path, preds


def make_study(db: str, workdir: Path, readers: list[str], password: str, admin: str = "admin",
               n_cases: int = 12, models: tuple[str, ...] = ("alpha", "beta", "gamma"), **create_kwargs) -> dict:
    ref, preds = write_files(workdir, n_cases=n_cases, models=models)
    engine, Session = open_db(db, create=True)
    summary = create_study(Session, (ref.name, ref.read_text()),
                           [(m, p.name, p.read_text()) for m, p in preds], **create_kwargs)
    with Session.begin() as s:
        auth.add_user(s, admin, password, "admin")
        for r in readers:
            auth.add_user(s, r, password, "reader")
    engine.dispose()
    return summary


def start_server(db: str, port: int, *extra: str, timeout: float = 30) -> subprocess.Popen:
    """`radgpt study serve` as a subprocess (stdout discarded); returns once /health answers."""
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "radgpt", "study", "serve", "--db", db, "--port", str(port),
                             *extra], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_until_healthy(f"http://127.0.0.1:{port}", timeout, proc, interval=0.1)  # ServerDidNotStart: a RuntimeError
    return proc


if __name__ == "__main__":
    ref, preds = write_files(Path(sys.argv[1]))
    print(ref, *(p for _, p in preds))
