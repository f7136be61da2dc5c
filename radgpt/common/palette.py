"""One colour per model name, the same in every plot radgpt draws (evaluate's report, the study's analysis).

Colours come from the Okabe–Ito palette (distinguishable with the common colour-vision deficiencies). A name's
colour depends only on the name (a stable hash), so "radgpt" is the same colour in a report and in a study
analysis made months apart, whatever the other models in the figure; two names can share a colour only when
there are more names than colours, and `colors_for` then gives the later ones the unused colours first.
"""

from __future__ import annotations

import hashlib

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")


def color_for(name: str) -> str:
    """The colour of one model name (hex), stable across runs and machines."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=4).digest()
    return OKABE_ITO[int.from_bytes(digest, "big") % len(OKABE_ITO)]


def colors_for(names: list[str]) -> dict[str, str]:
    """Colours for the names in one figure: each its own colour when there are enough, stable otherwise."""
    out: dict[str, str] = {}
    for name in sorted(set(names)):
        preferred = color_for(name)
        if preferred not in out.values() or len(out) >= len(OKABE_ITO):
            out[name] = preferred
        else:
            out[name] = next(c for c in OKABE_ITO if c not in out.values())
    return out
