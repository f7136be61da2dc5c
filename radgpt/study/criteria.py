"""The five criteria of the Radiology-GPT reader study, each on a 1–5 scale with anchors shown to readers.

The names are the paper's; the anchor wording is ours (the paper gives none) and is shown beside every
scale so that readers score against the same words rather than against each other.
"""

from __future__ import annotations

CRITERIA: dict[str, dict] = {
    "understandability": {
        "label": "Understandability",
        "question": "Can a clinician read and understand this impression without effort?",
        "anchors": {
            1: "Unintelligible or misleading wording",
            2: "Hard to follow; needs re-reading",
            3: "Understandable with some effort",
            4: "Clear, minor awkwardness",
            5: "Immediately clear",
        },
    },
    "coherence": {
        "label": "Coherence",
        "question": "Is it internally consistent and logically organised?",
        "anchors": {
            1: "Contradictory or disjointed",
            2: "Several inconsistencies",
            3: "Mostly consistent, some disorder",
            4: "Consistent, small ordering issues",
            5: "Fully consistent and well ordered",
        },
    },
    "relevance": {
        "label": "Relevance",
        "question": "Does it state what matters in these findings (and nothing unsupported)?",
        "anchors": {
            1: "Misses the key finding or invents one",
            2: "Key finding weak or buried; unsupported claims",
            3: "Key findings present, some irrelevant content",
            4: "All key findings, minor irrelevance",
            5: "Exactly the clinically relevant findings",
        },
    },
    "conciseness": {
        "label": "Conciseness",
        "question": "Is it as short as it can be without losing content?",
        "anchors": {
            1: "Restates the findings / far too long",
            2: "Much redundant text",
            3: "Some redundancy",
            4: "Nearly minimal",
            5: "Minimal and complete",
        },
    },
    "clinical_utility": {
        "label": "Clinical utility",
        "question": "Would you sign this impression (as is) in a clinical report?",
        "anchors": {
            1: "Harmful or useless",
            2: "Needs major rewrite",
            3: "Usable after moderate edits",
            4: "Usable after minor edits",
            5: "Sign as is",
        },
    },
}

NAMES: tuple[str, ...] = tuple(CRITERIA)
SCALE = (1, 2, 3, 4, 5)

# Pairwise preference against the reference impression (Van Veen et al. 2024 asked readers this way).
PREFERENCES: dict[str, str] = {
    "candidate": "Candidate is better",
    "equal": "Equivalent",
    "reference": "Reference is better",
}
