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


def build_tiny_model(folder: Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=CHAT_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus_lines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>")
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
