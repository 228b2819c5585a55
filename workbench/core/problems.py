"""One table of findings about input data: file, object, what is wrong, what was done.

Importers and audits append to a :class:`ProblemLog` instead of raising on the first bad
item, so a user sees every problem of a dataset in one pass.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd

SEVERITIES = ("error", "warning", "info")
COLUMNS = ["file", "object", "kind", "detail", "action", "severity"]


@dataclass(frozen=True)
class Problem:
    file: str  # the file at fault (source path for imports, dataset-relative for audits)
    kind: str  # short machine-readable name, e.g. "unknown_class", "box_out_of_bounds"
    detail: str  # human-readable: what is wrong, with the values
    action: str = ""  # what was done: "skipped image", "clipped", "kept", ...
    severity: str = "warning"
    object: str = ""  # object within the file: "object 3", "Region Id 180", "line 7"

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def __str__(self) -> str:
        where = f"{self.file}" + (f" [{self.object}]" if self.object else "")
        action = f" -> {self.action}" if self.action else ""
        return f"{self.severity}: {where}: {self.kind}: {self.detail}{action}"


@dataclass
class ProblemLog:
    """Collects problems; converts to a tidy DataFrame."""

    items: list[Problem] = field(default_factory=list)

    def add(self, file: object, kind: str, detail: str, *, action: str = "",
            severity: str = "warning", object: object = "") -> Problem:
        p = Problem(str(file), kind, detail, action, severity, str(object))
        self.items.append(p)
        return p

    def extend(self, other: "ProblemLog | list[Problem]") -> None:
        self.items.extend(other.items if isinstance(other, ProblemLog) else other)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "error"]

    def to_frame(self) -> pd.DataFrame:
        return frame(self.items)

    def summary(self) -> str:
        """One line per (severity, kind) with counts, errors first."""
        if not self.items:
            return "no problems found"
        df = self.to_frame()
        order = {s: i for i, s in enumerate(SEVERITIES)}
        counts = (df.groupby(["severity", "kind"]).size().reset_index(name="n")
                  .sort_values(["severity", "n"], key=lambda s: s.map(order) if s.name == "severity" else -s))
        return "\n".join(f"{r.severity:7s} {r.kind:24s} {r.n}" for r in counts.itertuples())


def frame(items: list[Problem]) -> pd.DataFrame:
    """Problems as a DataFrame with the fixed :data:`COLUMNS` (also when empty)."""
    return pd.DataFrame([asdict(p) for p in items], columns=COLUMNS).astype(str)


class StrictModeError(RuntimeError):
    """Raised by ``--strict`` runs that found problems; the message lists all of them."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) found (strict mode, nothing written):\n{lines}")
