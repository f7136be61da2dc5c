"""`radgpt export` / `radgpt merge`: a run folder → CTranslate2, GGUF, merged weights, or a shareable adapter."""
