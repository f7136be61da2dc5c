"""`radgpt impress` and the model interface: input readers (bad lines named by file:line, the rest
processed), baselines, both generation backends on a tiny run, streaming, stop strings, provenance."""

from __future__ import annotations

import io
import json
import sys
import typing
from pathlib import Path

import pytest

from radgpt.cli import main
from radgpt.impress.backends.base import Backend, Generation
from radgpt.impress.baselines import NORMAL_SENTENCE, last_sentence, load_baseline
from radgpt.impress.inputs import FindingsInput as Record
from radgpt.impress.inputs import read_inputs
from radgpt.impress.load import load_model
from radgpt.impress.model import STOP_STRINGS, LMModel
from radgpt.runs.decoding import PRESETS, Decoding
from radgpt.runs.prompts import PromptTemplate

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "data/openi/clin-summ/train.jsonl"
FINDINGS = "The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax."


# tiny_run, tiny_export, tiny_base and beam_trap: session fixtures in tests/conftest.py


# ---------------------------------------------------------------------------------------- input readers
def _collect(tmp_path, name, data: bytes, **kw):
    p = tmp_path / name
    p.write_bytes(data)
    return list(read_inputs([str(p)], kw.get("fmt", "auto"), kw.get("field"), kw.get("column"), None))


def test_jsonl_bad_lines_are_named_and_the_rest_kept(tmp_path):
    lines = [json.dumps({"id": "a", "findings": FINDINGS}), "{not json", json.dumps({"id": "b"}),
             json.dumps({"id": "c", "findings": 5}), json.dumps({"id": "d", "findings": "   "}), "",
             json.dumps([1, 2]), json.dumps({"idx": 7, "inputs": "Lungs clear."})]
    data = "\n".join(lines).encode() + b"\n" + b'{"findings": "bad \xff byte"}\n'
    got = _collect(tmp_path, "in.jsonl", data)
    good = [r for r in got if isinstance(r, Record)]
    bad = [r for r in got if not isinstance(r, Record)]
    assert [(r.id, r.findings) for r in good] == [("a", FINDINGS), ("7", "Lungs clear.")]
    where = {b.where.rsplit(":", 1)[1]: b.message for b in bad}
    assert set(where) == {"2", "3", "4", "5", "7", "9"}
    assert "invalid JSON" in where["2"] and "no findings field" in where["3"] and "must be text" in where["4"]
    assert where["5"] == "empty findings" and "JSON object" in where["7"] and "UTF-8" in where["9"]


def test_txt_and_csv_inputs(tmp_path):
    got = _collect(tmp_path, "f.txt", b"Heart normal.\n\n   \nLungs clear.\n\xff\xfe\n")
    assert [r.findings for r in got if isinstance(r, Record)] == ["Heart normal.", "Lungs clear."]
    assert [r.where.endswith(":5") for r in got if not isinstance(r, Record)] == [True]
    csv = b'uid,findings,impression\n1,"Heart normal, lungs clear.",x\n2,,y\n3,"Multi\nline",z\n'
    got = _collect(tmp_path, "r.csv", csv)
    assert [(r.id, r.findings) for r in got if isinstance(r, Record)] == [("1", "Heart normal, lungs clear."),
                                                                          ("3", "Multi\nline")]
    assert [b.message for b in got if not isinstance(b, Record)] == ["empty findings"]
    from radgpt.common.errors import FatalError

    with pytest.raises(FatalError, match="no column 'report'"):
        _collect(tmp_path, "r2.csv", csv, column="report")


def test_arguments_and_missing_file():
    from radgpt.common.errors import FatalError

    got = list(read_inputs(["Heart normal.", "  "], "auto", None, None, None))
    assert isinstance(got[0], Record) and got[0].findings == "Heart normal." and got[1].message == "empty findings"
    with pytest.raises(FatalError, match="file not found"):
        list(read_inputs(["missing.jsonl"], "auto", None, None, None))


# ---------------------------------------------------------------------------------------- baselines
def test_baselines_share_the_model_interface():
    assert last_sentence("Heart normal. Lungs clear.  No effusion.") == "No effusion."
    normal = load_baseline("normal")
    nearest = load_baseline("nearest", cases=str(TRAIN))
    last = load_baseline("last-sentence", cases=str(TRAIN))
    rows = [json.loads(x) for x in TRAIN.read_text().splitlines()[:3]]
    res = nearest.impress([r["inputs"] for r in rows], similar=2)
    # a training case's nearest neighbour is itself: its impression comes back, and it is the top similar case
    assert [x.impression for x in res] == [r["target"] for r in rows]
    assert [x.similar_cases[0].id for x in res] == [str(r["idx"]) for r in rows]
    assert normal.impress([FINDINGS])[0].impression == NORMAL_SENTENCE
    assert last.impress([FINDINGS])[0].impression == "No pleural effusion or pneumothorax."
    assert len(last.impress([FINDINGS], similar=3)[0].similar_cases) == 3
    assert nearest.provenance()["kind"] == "baseline"


def test_cli_batch_with_a_bad_line_processes_the_rest(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "x1", "findings": FINDINGS}) + "\n{oops\n" +
                   json.dumps({"id": "x2", "findings": "Cardiomegaly. Small left effusion."}) + "\n")
    out = tmp_path / "out.jsonl"
    rc = main(["impress", str(inp), "--model", "baseline:nearest", "--out", str(out), "--with-findings"])
    err = capsys.readouterr().err
    assert rc == 1 and f"{inp}:2: invalid JSON" in err and "1 bad line" in err
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == ["x1", "x2"]
    r = recs[0]
    assert r["findings"] == FINDINGS and r["impression"]
    assert len(r["similar_cases"]) == 3 and r["retrieved_case_ids"] == [c["id"] for c in r["similar_cases"]]
    assert r["provenance"]["model"] == "baseline:nearest" and r["provenance"]["preset"] == "greedy"
    assert r["provenance"]["decoding"]["num_beams"] == 1 and "time" in r


def test_cli_all_bad_is_fatal(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"findings": ""}\n')
    assert main(["impress", str(inp), "--model", "baseline:normal"]) == 2
    assert "no usable findings" in capsys.readouterr().err


def test_cli_stdin(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Heart normal. Lungs clear.\n")))
    assert main(["impress", "-", "--model", "baseline:last-sentence", "--format", "jsonl"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["impression"] == "Lungs clear." and rec["id"] == "<stdin>:1"


# ---------------------------------------------------------------------------------------- LM models
class ScriptedBackend(Backend):
    """Emits a fixed text token by token (words), like a model that runs on past the impression."""

    name = "scripted"

    def __init__(self, text):
        self.text = text

    def generate(self, prompts, decoding, max_tokens=None, on_delta=None, should_stop=None):
        out = []
        for i, _ in enumerate(prompts):
            pieces = [w + " " for w in self.text.split(" ")]
            pieces[-1] = pieces[-1][:-1]
            text, n = "", 0
            for p in pieces:
                if should_stop is not None and should_stop(i):
                    break
                text += p
                n += 1
                if on_delta:
                    on_delta(i, p)
            out.append(Generation(text.strip(), "length", 10, n))
        return out


def test_stop_strings_cut_runaway_output_and_streaming_never_shows_them():
    model = LMModel(ScriptedBackend("  No acute disease.\n### Instruction: more\nFindings: x"),
                    PromptTemplate.load("alpaca"), "Derive the impression", "scripted")
    got = []
    res = model.generate(["p"], PRESETS["greedy"], on_delta=lambda i, d: got.append(d))
    assert res[0].text == "No acute disease." and res[0].finish_reason == "stop"
    assert "".join(got) == "No acute disease."
    assert res[0].completion_tokens < 6  # generation was stopped at the stop string
    raw = model.generate(["p"], PRESETS["greedy"], stops=[()])[0]
    assert "Findings: x" in raw.text
    assert "\n###" in STOP_STRINGS


@pytest.mark.parametrize("kind", ["transformers", "ct2"])
def test_backends_on_the_tiny_run(kind, tiny_run, tiny_export):
    spec = str(tiny_run) if kind == "transformers" else str(tiny_export)
    model = load_model(spec, backend="transformers" if kind == "transformers" else "auto")
    assert model.backend.name == ("transformers" if kind == "transformers" else "ctranslate2")
    assert model.shots == 2 and model.index is not None  # the run was trained with 2 retrieved examples
    dec = Decoding(max_new_tokens=6)
    streamed = {0: "", 1: ""}

    def on_delta(i, d):
        streamed[i] += d

    findings = [FINDINGS, "Cardiomegaly with small bilateral effusions."]
    res = model.impress(findings, dec, similar=3, on_delta=on_delta, repair=False)  # streamed = the model's text
    assert len(res) == 2
    for i, r in enumerate(res):
        assert r.completion_tokens <= 6 and streamed[i] == r.impression
        assert len(r.similar_cases) == 3 and len(r.shot_ids) == 2
        assert r.shot_ids == [c.id for c in reversed(r.similar_cases[:2])]  # most similar last, as in training
    again = model.impress(findings, dec, repair=False)
    assert [r.impression for r in again] == [r.impression for r in res]  # greedy is deterministic
    # by default the text is repaired: the random tiny model's words never state the effusions, so the
    # findings' own sentence is added, and the flags are those of the final text
    fixed = model.impress(findings, dec)[1]
    assert "Cardiomegaly with small bilateral effusions." in fixed.impression
    assert {"action": "added_from_findings", "sentence": "Cardiomegaly with small bilateral effusions."} in fixed.repairs
    assert not any(f["type"] == "omitted" and f["severity"] != "low" for f in fixed.flags)
    prompts, _, _ = model.prepare(findings)
    assert prompts[0].startswith(model.static_prefix) and "Similar prior reports:" in prompts[0]
    prov = model.provenance()
    assert prov["adapter_sha256"] and len(prov["adapter_sha256"]) == 64 and prov["prompt_template"] == "alpaca"
    # per-row token limits inside one batch
    lim = model.generate(prompts, dec, max_tokens=[2, 5])
    assert lim[0].completion_tokens <= 2 and lim[1].completion_tokens <= 5


@pytest.mark.parametrize("backend", ["transformers", "ct2"])
def test_beam_search_finds_the_likelier_impression_greedy_misses(beam_trap, backend, tmp_path, monkeypatch,
                                                                  capsys):
    """On a model where the likeliest first token leads nowhere (tests/tiny_model.py build_beam_trap_model),
    greedy writes one impression and the paper-demo preset's beam search another, of higher probability
    under the model; each output line's provenance says which decoding wrote it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, greedy_ids, beam_ids = beam_trap
    assert PRESETS["paper-demo"].num_beams > 1 and not PRESETS["paper-demo"].do_sample
    monkeypatch.setenv("RADGPT_CACHE", str(tmp_path / "cache"))  # the CT2 copy of the model goes here
    cases = tmp_path / "cases.jsonl"
    cases.write_text("".join(TRAIN.read_text().splitlines(keepends=True)[:20]))
    inp = tmp_path / "f.jsonl"
    inp.write_text(json.dumps({"id": "a", "findings": FINDINGS}) + "\n")
    got = {}
    for preset in ("greedy", "paper-demo"):
        out = tmp_path / f"{preset}.jsonl"
        rc = main(["impress", str(inp), "--model", str(folder), "--backend", backend, "--cases", str(cases),
                   "--preset", preset, "--max-new-tokens", "4", "--no-repair", "--out", str(out)])
        assert rc == 0, capsys.readouterr().err
        got[preset] = json.loads(out.read_text())
    tok = AutoTokenizer.from_pretrained(folder)
    assert got["greedy"]["impression"] == tok.decode(greedy_ids).strip()
    assert got["paper-demo"]["impression"] == tok.decode(beam_ids).strip() != got["greedy"]["impression"]
    for preset, rec in got.items():
        p = rec["provenance"]
        assert p["preset"] == preset and p["decoding"] == {**PRESETS[preset].to_dict(), "max_new_tokens": 4}
        assert p["backend"] == ("ctranslate2" if backend == "ct2" else "transformers")
    assert got["paper-demo"]["provenance"]["decoding"]["num_beams"] == PRESETS["paper-demo"].num_beams
    assert got["greedy"]["provenance"]["decoding"]["num_beams"] == 1

    # what beam search is for: the sequence it returned is far likelier under the model than greedy's
    model = AutoModelForCausalLM.from_pretrained(folder).eval()

    def log_prob(ids: list[int]) -> float:
        seq = torch.tensor([[tok.eos_token_id, *ids]])  # a bigram model: any token can stand for the prompt
        with torch.no_grad():
            lp = model(seq).logits[0, :-1].log_softmax(-1)
        return float(lp[torch.arange(len(ids)), seq[0, 1:]].sum())

    assert log_prob(beam_ids) > log_prob(greedy_ids) + 5


def test_cli_on_the_tiny_run_writes_provenance(tiny_run, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    inp = tmp_path / "f.txt"
    inp.write_text(FINDINGS + "\nLungs clear.\n")
    rc = main(["impress", str(inp), "--model", str(tiny_run), "--backend", "transformers",
               "--max-new-tokens", "4", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == ["f.txt:1", "f.txt:2"]
    p = recs[0]["provenance"]
    assert p["backend"] == "transformers" and p["model_path"] == str(tiny_run) and p["shots"] == 2
    assert p["decoding"]["max_new_tokens"] == 4 and len(recs[0]["shot_case_ids"]) == 2
    assert main(["impress", "x", "--model", str(tmp_path / "nope")]) == 2
    assert "model folder not found" in capsys.readouterr().err


def test_identical_findings_are_decoded_once_and_streamed_to_each():
    class Counting(ScriptedBackend):
        calls: typing.ClassVar[list] = []

        def generate(self, prompts, decoding, **kw):
            self.calls.append(len(prompts))
            return super().generate(prompts, decoding, **kw)

    be = Counting("No acute disease.")
    model = LMModel(be, PromptTemplate.load("alpaca"), "Derive the impression", "scripted")
    got = {0: "", 1: "", 2: ""}
    res = model.generate(["a", "b", "a"], PRESETS["greedy"], on_delta=lambda i, d: got.__setitem__(i, got[i] + d))
    assert be.calls == [2] and [r.text for r in res] == ["No acute disease."] * 3
    assert got == {0: "No acute disease.", 1: "No acute disease.", 2: "No acute disease."}
    sampled = Decoding(do_sample=True, temperature=0.7)
    model.generate(["a", "a"], sampled)
    assert be.calls[-1] == 2  # sampling: duplicates are independent draws


# ---------------------------------------------------------------------------------------- base models (issue #15)
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="session")
def tiny_chat_base(tmp_path_factory) -> Path:
    """The tiny model as a plain Hugging Face folder with a ChatML chat template: a general instruction model."""
    from transformers import AutoTokenizer

    from tests.tiny_model import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("base") / "tiny-chat")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = CHATML
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def few_cases(tmp_path) -> Path:
    p = tmp_path / "cases.jsonl"
    p.write_text("".join(TRAIN.read_text().splitlines(keepends=True)[:60]))
    return p


def test_base_model_zero_shot_is_the_papers_instruction_in_its_chat_template(tiny_chat_base, few_cases):
    from radgpt.impress.model import BaseLMModel
    from radgpt.prepare.tasks import PAPER_INSTRUCTION

    model = load_model(str(tiny_chat_base), backend="transformers", cases=str(few_cases))
    assert isinstance(model, BaseLMModel) and model.shots == 0 and model.repair
    prompts, hits, shot_ids = model.prepare([FINDINGS])
    assert prompts[0] == (f"<|im_start|>user\n{PAPER_INSTRUCTION}\n\nFindings: {FINDINGS}<|im_end|>\n"
                          "<|im_start|>assistant\n")
    assert shot_ids == [[]] and len(hits[0]) == 3  # no examples in the prompt; similar cases still shown
    res = model.impress([FINDINGS], Decoding(max_new_tokens=2), repair=False)
    assert res[0].completion_tokens <= 2 and len(res[0].similar_cases) == 3
    p = model.provenance()
    assert p["kind"] == "base" and p["prompting"] == "zero-shot" and p["shots"] == 0
    assert p["adapter_sha256"] is None and p["base"] == str(tiny_chat_base) and p["model"] == "tiny-chat"
    assert p["prompt_template"] == "chat-template" and len(p["chat_template_sha256"]) == 64
    assert p["instruction"] == PAPER_INSTRUCTION and p["backend"] == "transformers"


def test_base_model_k_shot_puts_k_retrieved_cases_in_the_prompt(tiny_chat_base, few_cases):
    from radgpt.runs.prompts import clean_placeholders

    model = load_model(str(tiny_chat_base), backend="transformers", cases=str(few_cases), shots=3)
    prompts, hits, shot_ids = model.prepare([FINDINGS], similar=5)
    prompt = prompts[0]
    assert len(hits[0]) == 5 and len(shot_ids[0]) == 3
    # the three most similar cases, as earlier turns, the most similar last (next to the query)
    assert shot_ids[0] == [c.id for c, _ in reversed(hits[0][:3])]
    assert prompt.count("<|im_start|>user\n") == 4 and prompt.count("<|im_start|>assistant\n") == 4
    at = [prompt.index(f"Findings: {c.findings}") for c, _ in reversed(hits[0][:3])]
    assert at == sorted(at) and prompt.rindex(f"Findings: {FINDINGS}") > at[-1]
    for c, _ in hits[0][:3]:
        assert f"<|im_start|>assistant\n{clean_placeholders(c.impression)}<|im_end|>" in prompt
    assert model.provenance()["prompting"] == "3-shot"


def test_base_model_folder_without_chat_template_uses_alpaca(tmp_path, few_cases):
    from radgpt.prepare.tasks import PAPER_INSTRUCTION
    from tests.tiny_model import build_tiny_model

    folder = build_tiny_model(tmp_path / "plain")
    logs = []
    model = load_model(str(folder), backend="transformers", cases=str(few_cases), log=logs.append)
    assert model.template.name == "alpaca" and "no chat template" in logs[0]
    prompt = model.prepare([FINDINGS])[0][0]
    assert PAPER_INSTRUCTION in prompt and FINDINGS in prompt and "Similar prior" not in prompt


def test_packaged_and_gguf_specs_load_as_base_models(tiny_chat_base, few_cases, monkeypatch, tmp_path):
    """`packaged:NAME` and a .gguf path go through resolve_base's GGUF → HF conversion (stubbed here with the
    tiny folder; tests/test_default_model.py and the slow test below load the real packaged weights)."""
    from radgpt.common.errors import FatalError
    from radgpt.runs import base_models as models

    seen = []
    monkeypatch.setattr(models, "_gguf_to_hf_folder", lambda g: seen.append(Path(g)) or tiny_chat_base)
    gguf = tmp_path / "My-Model.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    m = load_model(str(gguf), backend="transformers", cases=str(few_cases))
    assert m.name == "My-Model.Q8_0" and set(seen) == {gguf} and m.provenance()["base"] == str(gguf)
    m = load_model("packaged:smollm2-135m-instruct", backend="transformers", cases=str(few_cases))
    assert m.name == "smollm2-135m-instruct" and seen[-1].name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert m.provenance()["kind"] == "base"
    with pytest.raises(FatalError, match="GGUF file not found"):
        load_model(str(tmp_path / "missing.gguf"), cases=str(few_cases))
    with pytest.raises(FatalError, match="unknown packaged model"):
        load_model("packaged:nope", backend="transformers", cases=str(few_cases))
    with pytest.raises(FatalError, match="llama.cpp runs a base model from its GGUF"):
        load_model(str(tiny_chat_base), backend="llama.cpp", cases=str(few_cases))


def test_cli_base_model_zero_and_k_shot_with_provenance_on_ct2(tiny_chat_base, few_cases, tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.setenv("RADGPT_CACHE", str(tmp_path / "cache"))
    inp = tmp_path / "f.jsonl"
    rows = (("a", FINDINGS), ("b", "Lungs clear."))
    inp.write_text("".join(json.dumps({"id": i, "findings": f}) + "\n" for i, f in rows))
    for shots, backend in ((None, "ct2"), (2, "auto")):  # auto: the CT2 copy the first run made
        out = tmp_path / f"o{shots}.jsonl"
        rc = main(["impress", str(inp), "--model", str(tiny_chat_base), "--backend", backend, "--cases",
                   str(few_cases), "--max-new-tokens", "3", "--out", str(out)]
                  + (["--shots", str(shots)] if shots else []))
        assert rc == 0, capsys.readouterr().err
        recs = [json.loads(x) for x in out.read_text().splitlines()]
        p = recs[0]["provenance"]
        assert [r["id"] for r in recs] == ["a", "b"] and p["backend"] == "ctranslate2"
        assert p["kind"] == "base" and p["prompting"] == ("2-shot" if shots else "zero-shot")
        assert p["adapter_sha256"] is None and len(recs[0]["shot_case_ids"]) == (shots or 0)
    assert len(list((tmp_path / "cache" / "exports").glob("base-tiny-chat-int8-*"))) == 1


@pytest.mark.slow
def test_packaged_smollm2_instruct_as_model_is_accepted():
    from radgpt.prepare.tasks import PAPER_INSTRUCTION

    model = load_model("packaged:smollm2-135m-instruct", backend="transformers", cases=str(TRAIN))
    prompt = model.prepare([FINDINGS])[0][0]
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert f"<|im_start|>user\n{PAPER_INSTRUCTION}\n\nFindings: {FINDINGS}<|im_end|>" in prompt
    assert prompt.count("<|im_start|>user") == 1  # zero-shot: no examples
    res = model.impress([FINDINGS], Decoding(max_new_tokens=2), repair=False)
    assert res[0].completion_tokens == 2 and res[0].impression
    assert model.provenance()["prompting"] == "zero-shot"
