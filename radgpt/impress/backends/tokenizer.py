"""Tokenizers for export folders without importing transformers."""

from __future__ import annotations

import json
from pathlib import Path


class FolderTokenizer:
    """The few tokenizer calls the engines need, straight from a folder's tokenizer.json with the `tokenizers`
    library: loading transformers' AutoTokenizer imports torch and transformers (≈5 s of a one-off
    `radgpt impress` call on 2 cores) for the same token ids. A chat template (base models) is applied by
    transformers' tokenizer, loaded only when one is asked for."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self._tok = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        cfg_path = self.folder / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
        if cfg.get("clean_up_tokenization_spaces"):
            raise ValueError("clean_up_tokenization_spaces is set: use transformers' tokenizer")
        self.eos_token = cfg.get("eos_token")
        if isinstance(self.eos_token, dict):
            self.eos_token = self.eos_token.get("content")
        self.eos_token_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        jinja = self.folder / "chat_template.jinja"
        self.chat_template = jinja.read_text(encoding="utf-8") if jinja.exists() else cfg.get("chat_template")
        self._hf = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": self._tok.encode(text, add_special_tokens=add_special_tokens).ids}

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self._tok.id_to_token(i) for i in ids]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, *args, **kwargs):
        if self._hf is None:
            from transformers import AutoTokenizer

            from radgpt.runs.base_models import quiet_transformers

            quiet_transformers()
            self._hf = AutoTokenizer.from_pretrained(str(self.folder))
        return self._hf.apply_chat_template(*args, **kwargs)


def folder_tokenizer(folder: str | Path):
    """FolderTokenizer when the folder's tokenizer.json is enough, else transformers' AutoTokenizer."""
    if (Path(folder) / "tokenizer.json").exists():
        try:
            return FolderTokenizer(folder)
        except ValueError:  # a decoding step tokenizers does not do (clean_up_tokenization_spaces)
            pass
    from transformers import AutoTokenizer

    from radgpt.runs.base_models import quiet_transformers

    quiet_transformers()
    return AutoTokenizer.from_pretrained(str(folder))
