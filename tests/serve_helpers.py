"""Helpers shared by the `radgpt serve` tests: a scripted model that streams and records its batches, and a
TestClient for an app serving it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from radgpt.impress.backends.base import Generation
from radgpt.impress.baselines import load_baseline
from radgpt.impress.model import ImpressionModel
from radgpt.serve.app import create_app
from radgpt.serve.config import ServeConfig

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "data/openi/clin-summ/train.jsonl"
FINDINGS = "The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax."


class EchoModel(ImpressionModel):
    """Streams 'impression of N words' word by word; can be held at a gate; records its batch sizes."""

    name = "echo"

    def __init__(self, gate: threading.Event | None = None, delay: float = 0.0):
        self.gate, self.delay, self.batches = gate, delay, []
        self.index = load_baseline("nearest", cases=str(TRAIN)).index

    def generate(self, prompts, decoding, max_tokens=None, on_delta=None, should_stop=None, stops=None):
        self.batches.append(len(prompts))
        if self.gate is not None:
            self.gate.wait(10)
        out = []
        for i, p in enumerate(prompts):
            words = ["impression", "of", str(len(p.split())), "words."]
            limit = (max_tokens or [decoding.max_new_tokens] * len(prompts))[i]
            sent = []
            for w in words[:limit]:
                if should_stop is not None and should_stop(i):
                    break
                time.sleep(self.delay)
                piece = (" " if sent else "") + w
                sent.append(piece)
                if on_delta:
                    on_delta(i, piece)
            out.append(Generation("".join(sent), "stop" if len(sent) == len(words) else "length", len(p.split()),
                                  len(sent)))
        return out


def client_for(models, **config) -> TestClient:
    """A TestClient on the app with these ServeConfig fields; no audit log unless asked (the CLI's default is a
    file in the working folder)."""
    return TestClient(create_app(models, ServeConfig(**{"audit_log": "", **config})))


def wait_ready(c: TestClient) -> None:
    for _ in range(200):
        if c.get("/health").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(c.get("/health").json())
