"""What a trained model is on disk and how it is read back: base models, prompt templates, prior-case
retrieval, decoding settings. Below finetune, export and impress, which all read run folders."""
