"""Text-generation engines behind one interface: prompts in, generations out, optional token streaming.

    transformers.py  TransformersBackend: the run folder's base + PEFT adapter (merged), CPU or GPU
    ctranslate2.py   CT2Backend: a `radgpt export` folder, CTranslate2 int8 on CPU (the fast backend, measured
                     in bench/bench_impress.py against transformers on the same prompts)
    llamacpp.py      LlamaCppBackend: a `radgpt export --quantization q8_0` folder, llama.cpp on a GGUF
    openai.py        OpenAIBackend: any OpenAI-compatible endpoint (vLLM --lora-modules, llama.cpp server, Ollama,
                     `radgpt serve` itself, a cloud API the user is allowed to send reports to)
    tokenizer.py     the engines' tokenizer straight from tokenizer.json (no transformers import)

The interface (base.py): `generate(prompts, decoding, max_tokens=None, on_delta=None, should_stop=None)`
returns one `Generation` per prompt, in order. `on_delta(i, text)` receives the new text of prompt i as it is decoded (with beam
search, the whole text once at the end); `should_stop(i)` lets a caller cancel one row of a batch
(a client that went away, a request past its deadline). `max_tokens[i]` caps row i below
`decoding.max_new_tokens`, so requests with different limits still share one batch.
Backends are not thread-safe: the server gives each its own worker thread.
"""
