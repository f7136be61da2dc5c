"""The normalised report record every source produces, and the text clean-up they share."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# PHI placeholders differ by corpus: MIMIC-CXR writes `___`, OpenI `XXXX` (some copies `____`).
# One token everywhere means the model never learns two spellings of "redacted". The default is
# OpenI's own `XXXX`, so OpenI text stays verbatim (its licence is ND) and published ROUGE on OpenI
# references stays comparable.
DEFAULT_PHI_TOKEN = "XXXX"
_PHI = re.compile(r"_{2,}|(?<![A-Za-z])X{3,}(?![a-z])")
_SPACE = re.compile(r"\s+")


def normalize_text(text: str | None, phi_token: str = DEFAULT_PHI_TOKEN) -> str:
    """Collapse wrapped lines and runs of spaces; unify PHI placeholders."""
    if not text:
        return ""
    text = _PHI.sub(phi_token, text)
    return _SPACE.sub(" ", text).strip()


@dataclass
class Record:
    """One report. `sections` keeps every section found (by canonical name); the top-level
    findings/impression/indication/comparison are what the instruction tasks use."""

    id: str
    source: str
    patient_id: str = ""
    study_id: str = ""
    findings: str = ""
    impression: str = ""
    indication: str = ""
    comparison: str = ""
    mesh: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    sections: dict[str, str] = field(default_factory=dict)
    # provenance: the file (and line/row) this came from, and notes on how it was parsed
    origin: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        # not dataclasses.asdict: its deep copy was a fifth of prepare's time at MIMIC-CXR scale
        d = dict(self.__dict__)
        d.update(mesh=list(self.mesh), problems=list(self.problems), sections=dict(self.sections),
                 notes=list(self.notes))
        return d


@dataclass
class Problem:
    """A record or file that could not be used, with where it came from and why.
    `data` keeps whatever was read, so nothing the user submitted is lost."""

    origin: str
    reason: str
    data: dict | None = None

    def to_dict(self) -> dict:
        return {"origin": self.origin, "reason": self.reason, "data": self.data}
