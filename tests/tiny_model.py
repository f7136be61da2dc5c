"""A 2-layer Llama with a small BPE tokenizer, built in-process: the stand-in for a real base model."""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TOKENS = ["<unk>", "<|im_start|>", "<|im_end|>"]


def corpus_lines() -> list[str]:
    repo = Path(__file__).resolve().parents[1]
    rows = [json.loads(x) for x in (repo / "data/openi/clin-summ/train.jsonl").read_text().splitlines()[:400]]
    from radgpt.runs.prompts import PromptTemplate

    header = PromptTemplate.load("alpaca").render("Derive the impression from findings in the radiology report", "x")
    return [header] + [r["inputs"] for r in rows] + [r["target"] for r in rows]


def train_tokenizer():
    """A 600-token byte-level BPE tokenizer trained on OpenI text, with the ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=CHAT_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus_lines(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>")


def build_tiny_model(folder: Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    fast = train_tokenizer()
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=1024, bos_token_id=fast.bos_token_id,
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=True,
                      # large enough embeddings that a frozen head can express a peaked distribution,
                      # so LoRA alone can lower the loss (at 0.02 the logits of a 32-wide model stay ~flat)
                      initializer_range=0.5)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def build_beam_trap_model(folder: Path) -> tuple[Path, list[int], list[int]]:
    """A Llama that is a bigram model built so that greedy decoding and beam search disagree.

    Its one layer's attention and MLP outputs are zero, so the last hidden state is the current token's
    one-hot embedding and the next token's logits are a column of the head: a table we write. From any
    token (the prompt's last one included) the two likeliest next tokens are A (p ≈ 0.17) and B (p ≈ 0.14).
    After A every token is unlikely (the best, D, has p ≈ 0.012, and D leads to D again); after B the model
    is sure of C, and after C of C. Four tokens: greedy takes A and writes A D D D (log-prob ≈ -15); a beam
    of 2 or more keeps B and finds B C C C (≈ -2). Returns (folder, greedy ids, beam ids)."""
    import re

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    vocab = tok.get_vocab()
    words = sorted(i for t, i in vocab.items() if re.fullmatch(r"Ġ[a-z]{5,}", t))  # " lungs", " pleural" ...
    a, b, c, d = words[:4]
    n = len(tok)
    hidden = -(-n // 64) * 64  # one dimension per token (a one-hot embedding), rounded for the heads
    cfg = LlamaConfig(vocab_size=n, hidden_size=hidden, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    logits = torch.zeros(n, n)  # [current token, next token]
    logits[:, a], logits[:, b] = 5.0, 4.8
    for row, (nxt, value) in {a: (d, 2.0), d: (d, 2.0), b: (c, 20.0), c: (c, 20.0)}.items():
        logits[row] = 0.0
        logits[row, nxt] = value
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :n] = torch.eye(n)
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        # RMSNorm turns the one-hot e_i into sqrt(hidden)·e_i: the head's column i, scaled back, is row i
        # of the table above
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, :n] = logits.T / hidden ** 0.5
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, [a, d, d, d], [b, c, c, c]
