"""radgpt — local, privacy-first radiology impression generation (Findings → Impression).

The pipeline, in the order the folders read: reports → prompts → finetune → impress/serve → evaluate → study.
"""

__version__ = "0.1.0"
