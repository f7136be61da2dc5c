"""Evaluation: metrics registry, the built-in finding labeler, model comparison and the report.

Importing this package loads nothing heavy: metrics import their libraries (rouge_score, sacrebleu,
torch/transformers for the embedding similarity) only when they are computed. The server uses

    from radgpt.evaluate.labeler import label
    from radgpt.evaluate.faithfulness import consistency_flags, is_abnormal
"""
