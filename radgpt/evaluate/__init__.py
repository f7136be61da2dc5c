"""Evaluation: metrics registry, model comparison and the report (the finding labeler
is radgpt.findings).

Importing this package loads nothing heavy: metrics import their libraries (rouge_score, sacrebleu,
torch/transformers for the embedding similarity) only when they are computed. The server uses

    from radgpt.findings.labeler import label
    from radgpt.findings.faithfulness import consistency_flags, is_abnormal
"""
