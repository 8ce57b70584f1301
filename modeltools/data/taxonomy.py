"""The species label table and the label spaces derived from it.

A taxonomy is a CSV with the bundle label columns (``agent.models.manifest.LABEL_COLUMNS``:
``species_code,scientific_name,common_name,genus,family,order``) plus an optional ``role``
column: ``target`` (the classifier has an output for it; the default) or ``other`` (an
out-of-set species: its recordings train only the genus/family/order heads). A bundle's
``labels.csv`` reader ignores the extra column, so one file serves both.

Label spaces (one per head: species, genus, family, order) are derived from the table: each
starts with ``unknown`` (index 0, the P-paper convention, ALGORITHMS.md §2.5) followed by the
target species codes in table order, or by the sorted distinct genus/family/order names of
*all* species (so out-of-set species still have their higher taxa). The version is a hash of
the table's content, so a dataset and a bundle built from the same table carry the same
version and a changed table can never be mistaken for the old one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import ChorusError
from agent.models.manifest import LABEL_COLUMNS, Label

HEADS = ("species", "genus", "family", "order")
UNKNOWN = "unknown"
ROLES = ("target", "other")
TAXONOMY_COLUMNS = (*LABEL_COLUMNS, "role")


class TaxonomyError(ChorusError):
    """A taxonomy table is missing, malformed or inconsistent."""

    exit_code = 2


@dataclass(frozen=True)
class Species:
    """One row of the taxonomy table."""

    code: str
    scientific_name: str
    common_name: str
    genus: str = ""
    family: str = ""
    order: str = ""
    role: str = "target"

    def taxon(self, head: str) -> str:
        """This species' name at ``head`` level (its code for ``species``)."""
        if head == "species":
            return self.code
        if head in ("genus", "family", "order"):
            return str(getattr(self, head))
        raise KeyError(f"unknown head {head!r}; expected one of {HEADS}")

    def to_label(self) -> Label:
        return Label(
            self.code, self.scientific_name, self.common_name, self.genus, self.family, self.order
        )


@dataclass(frozen=True)
class LabelSpace:
    """The ordered class names of one classifier head."""

    head: str
    classes: tuple[str, ...]
    _index: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.classes)})

    def __len__(self) -> int:
        return len(self.classes)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def index(self, name: str) -> int:
        """Position of ``name``; KeyError if it is not a class of this head."""
        return self._index[name]

    def multi_hot(self, names: Iterable[str]) -> np.ndarray:
        """float32 vector with 1 at every known name (unknown names raise KeyError)."""
        v = np.zeros(len(self.classes), dtype=np.float32)
        for n in names:
            v[self._index[n]] = 1.0
        return v


class Taxonomy:
    """An ordered table of species with derived, versioned label spaces."""

    def __init__(
        self, species: Sequence[Species], name: str = "", allow_empty: bool = False
    ) -> None:
        problems = []
        seen: set[str] = set()
        for s in species:
            if not s.code:
                problems.append("empty species_code")
            elif s.code == UNKNOWN:
                problems.append(f"{UNKNOWN!r} is reserved (label index 0 of every head)")
            elif s.code in seen:
                problems.append(f"duplicate species_code {s.code!r}")
            if s.role not in ROLES:
                problems.append(f"{s.code}: role must be one of {ROLES}, got {s.role!r}")
            seen.add(s.code)
        if not species and not allow_empty:
            problems.append("no species")
        if problems:
            raise TaxonomyError("taxonomy: " + "; ".join(problems))
        self.species: tuple[Species, ...] = tuple(species)
        self.name = name
        self._by_code = {s.code: s for s in self.species}
        self._by_sci = {s.scientific_name.lower(): s for s in self.species if s.scientific_name}
        self.label_spaces: dict[str, LabelSpace] = self._derive()

    # -- derivation -------------------------------------------------------------------------
    def _derive(self) -> dict[str, LabelSpace]:
        spaces = {"species": LabelSpace("species", (UNKNOWN, *(s.code for s in self.targets)))}
        for head in HEADS[1:]:
            names = sorted({s.taxon(head) for s in self.species if s.taxon(head)})
            spaces[head] = LabelSpace(head, (UNKNOWN, *names))
        return spaces

    @property
    def targets(self) -> tuple[Species, ...]:
        return tuple(s for s in self.species if s.role == "target")

    @property
    def others(self) -> tuple[Species, ...]:
        return tuple(s for s in self.species if s.role == "other")

    @property
    def version(self) -> str:
        """Content hash of the table (independent of file formatting and the name)."""
        return "tax-" + hashlib.sha256(self.to_csv().encode("utf-8")).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.species)

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def __getitem__(self, code: str) -> Species:
        return self._by_code[code]

    def lookup(self, key: str) -> Species | None:
        """Find a species by code or (case-insensitive) scientific name; None if absent."""
        key = key.strip()
        return self._by_code.get(key) or self._by_sci.get(key.lower())

    def encode(self, codes: Iterable[str], mark_unknown: bool = False) -> dict[str, np.ndarray]:
        """Multi-hot vectors for every head from species codes (all must be in the table).

        An out-of-set species (role ``other``) sets only its genus/family/order -- plus the
        species head's ``unknown`` class if ``mark_unknown``.
        """
        out = {h: np.zeros(len(sp), dtype=np.float32) for h, sp in self.label_spaces.items()}
        for code in codes:
            s = self._by_code[code]
            for head, space in self.label_spaces.items():
                name = s.taxon(head)
                if head == "species" and s.role != "target":
                    if mark_unknown:
                        out[head][0] = 1.0
                elif name:
                    out[head][space.index(name)] = 1.0
        return out

    def known_heads(self, code: str) -> dict[str, bool]:
        """Whether this species has a name at each head (an empty family means "not known")."""
        s = self._by_code[code]
        return {h: bool(s.taxon(h)) for h in HEADS}

    def bundle_labels(self) -> tuple[Label, ...]:
        """The species head as bundle labels (``unknown`` first), in model output order."""
        return (Label(UNKNOWN, "", "Unknown"), *(s.to_label() for s in self.targets))

    # -- I/O --------------------------------------------------------------------------------
    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(TAXONOMY_COLUMNS)
        for s in self.species:
            w.writerow(
                [s.code, s.scientific_name, s.common_name, s.genus, s.family, s.order, s.role]
            )
        return buf.getvalue()

    def label_spaces_json(self) -> dict[str, Any]:
        return {
            "taxonomy_version": self.version,
            "name": self.name,
            "heads": {h: list(sp.classes) for h, sp in self.label_spaces.items()},
        }

    def write(self, folder: str | Path, stem: str = "taxonomy") -> tuple[Path, Path]:
        """Write ``<stem>.csv`` and ``label_spaces.json`` into ``folder`` (atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        csv_path = folder / f"{stem}.csv"
        spaces_path = folder / "label_spaces.json"
        atomic_write_text(csv_path, self.to_csv())
        atomic_write_text(spaces_path, json.dumps(self.label_spaces_json(), indent=2) + "\n")
        return csv_path, spaces_path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; datasets are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def genus_of(scientific_name: str) -> str:
    """First word of a binomial ("Vermivora chrysoptera" -> "Vermivora")."""
    parts = scientific_name.split()
    return parts[0] if parts else ""


def read_taxonomy(path: str | Path, name: str = "", allow_empty: bool = False) -> Taxonomy:
    """Load a taxonomy CSV. Raises :class:`TaxonomyError` naming the file and line.

    Required columns: ``species_code``, ``scientific_name``, ``common_name``. ``genus`` defaults
    to the first word of the scientific name; ``family``/``order`` may be empty (that head is
    then unknown for the species); ``role`` defaults to ``target``. An empty table is an
    error unless ``allow_empty`` (a dataset of unlabelled or noise recordings only).
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TaxonomyError(f"{path}: cannot read taxonomy: {exc}") from exc
    missing = [c for c in LABEL_COLUMNS[:3] if c not in header]
    if missing:
        raise TaxonomyError(f"{path}: taxonomy is missing column(s) {', '.join(missing)}")
    species = []
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        code = row.get("species_code", "")
        if not code:
            raise TaxonomyError(f"{path}:{line}: empty species_code")
        sci = row.get("scientific_name", "")
        species.append(
            Species(
                code=code,
                scientific_name=sci,
                common_name=row.get("common_name", ""),
                genus=row.get("genus") or genus_of(sci),
                family=row.get("family", ""),
                order=row.get("order", ""),
                role=row.get("role") or "target",
            )
        )
    try:
        return Taxonomy(species, name=name or path.stem, allow_empty=allow_empty)
    except TaxonomyError as exc:
        raise TaxonomyError(f"{path}: {exc}") from None


def read_label_spaces(path: str | Path) -> dict[str, LabelSpace]:
    """Load ``label_spaces.json`` as written by :meth:`Taxonomy.write`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return {h: LabelSpace(h, tuple(c)) for h, c in data["heads"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TaxonomyError(f"{path}: not a label_spaces.json: {exc}") from exc
