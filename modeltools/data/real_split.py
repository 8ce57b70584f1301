"""The one split of the real audio in ``../shared/data`` (binding: shared/docs/REAL-AUDIO.md).

* **evaluation only**: the folders ``xeno-canto/``, ``birdnet-soundscape/``,
  ``opensoundscape-tests/``, and the **second half** (by time) of every file of the noise
  folders;
* **training allowed**: ``scikit-maad/``, ``birdvox-tests/``, ``librosa-data/``,
  ``bigsoundbank-cc0-animals/``, and the **first half** of every file of the noise folders
  (``freesound-cc0-ambience/``, ``opengameart-cc0-ambience/``,
  ``freesound-pd-rain-and-librivox/``).

A file is recognised by where it lies (a folder of a shared-data root: a folder holding
``MANIFEST.csv``) *and* by its content: a byte-identical copy anywhere else is found through the
sha256 column of ``MANIFEST.csv``, so renaming or copying an evaluation file does not smuggle it
into training. Every training entry point calls :func:`check_training_files` (or asks
:func:`training_span` for the part of a file it may use) and refuses evaluation-only audio with
one :class:`RealAudioSplitError` naming the file and the rule.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent.errors import ChorusError
from agent.models.manifest import sha256_file

if TYPE_CHECKING:  # pragma: no cover
    from modeltools.data.dataset import Dataset, Recording

EVALUATION_FOLDERS = ("xeno-canto", "birdnet-soundscape", "opensoundscape-tests")
NOISE_FOLDERS = (
    "freesound-cc0-ambience",
    "opengameart-cc0-ambience",
    "freesound-pd-rain-and-librivox",
)
TRAINING_FOLDERS = ("scikit-maad", "birdvox-tests", "librosa-data", "bigsoundbank-cc0-animals")
MANIFEST = "MANIFEST.csv"
RULE = "shared/docs/REAL-AUDIO.md"

Role = Literal["evaluation", "noise", "training"]


class RealAudioSplitError(ChorusError):
    """Evaluation-only real audio offered to training (or the reverse)."""

    exit_code = 2


@dataclass(frozen=True)
class SharedFile:
    """A file of the shared real audio: its path relative to the root and its role."""

    rel: str  # e.g. "xeno-canto/XC563936_soundscape.mp3"
    role: Role

    @property
    def folder(self) -> str:
        return self.rel.split("/", 1)[0]

    def training_span(self, duration_s: float, what: str = "training") -> tuple[float, float]:
        """``(start_s, end_s)`` training may use: all of a training file, the first half of a
        noise file; raises :class:`RealAudioSplitError` for an evaluation-only file."""
        if self.role == "training":
            return 0.0, duration_s
        if self.role == "noise":
            return 0.0, duration_s / 2.0
        raise RealAudioSplitError(
            f"{self.rel} is evaluation-only real audio ({self.folder}/ is held out for the "
            f"real-audio benchmark, {RULE}); it may not be used for {what}"
        )


def shared_file(rel: str) -> SharedFile | None:
    """The shared file at ``rel`` (a path relative to a shared-data root), if its folder is one
    of the split's."""
    role = role_of_folder(rel.split("/", 1)[0])
    return SharedFile(rel, role) if role is not None else None


def role_of_folder(folder: str) -> Role | None:
    if folder in EVALUATION_FOLDERS:
        return "evaluation"
    if folder in NOISE_FOLDERS:
        return "noise"
    if folder in TRAINING_FOLDERS:
        return "training"
    return None


@lru_cache(maxsize=8)
def _manifest_rows(root: str) -> tuple[dict[str, str], ...]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        return ()
    with path.open(newline="", encoding="utf-8") as f:
        return tuple(row for row in csv.DictReader(f) if row.get("path"))


def _manifest_by_sha(root: str) -> dict[str, str]:
    return {row["sha256"]: row["path"] for row in _manifest_rows(root) if row.get("sha256")}


def manifest_duration_s(rel: str, shared_roots: Iterable[str | Path]) -> float | None:
    """The ``duration_s`` MANIFEST.csv of one of ``shared_roots`` gives for ``rel``."""
    for root in shared_roots:
        for row in _manifest_rows(str(Path(root).resolve())):
            if row["path"] == rel and row.get("duration_s"):
                return float(row["duration_s"])
    return None


def identify_digest(sha256: str, shared_roots: Iterable[str | Path]) -> SharedFile | None:
    """The shared file whose content has this sha256 (MANIFEST.csv of ``shared_roots``)."""
    for root in shared_roots:
        if not root or not Path(root).is_dir():
            continue
        rel = _manifest_by_sha(str(Path(root).resolve())).get(sha256)
        if rel is not None and shared_file(rel) is not None:
            return shared_file(rel)
    return None


def _by_location(path: Path) -> SharedFile | None:
    """``path`` inside a shared-data root (a folder with MANIFEST.csv, or a known folder name)."""
    resolved = path.resolve()
    for parent in resolved.parents:
        role = role_of_folder(parent.name)
        if role is not None and (parent.parent / MANIFEST).is_file():
            return SharedFile(resolved.relative_to(parent.parent).as_posix(), role)
    return None


def identify(
    path: str | Path, shared_roots: Iterable[str | Path] = (), sha256: str | None = None
) -> SharedFile | None:
    """The shared real-audio file ``path`` is (by location, else by content), or None.

    ``shared_roots`` are shared-data roots whose ``MANIFEST.csv`` identifies copies by sha256
    (pass the default root: :func:`modeltools.data.noise.default_shared_data_dir`);
    ``sha256`` saves hashing a file whose digest the caller already has.
    """
    path = Path(path)
    found = _by_location(path)
    if found is not None:
        return found
    roots = [str(Path(r).resolve()) for r in shared_roots if r and Path(r).is_dir()]
    if not roots or (sha256 is None and not path.is_file()):
        return None
    return identify_digest(sha256 or sha256_file(path), roots)


def training_span(
    path: str | Path,
    duration_s: float,
    shared_roots: Iterable[str | Path] = (),
    sha256: str | None = None,
    what: str = "training",
) -> tuple[float, float]:
    """The ``(start_s, end_s)`` of ``path`` that training may use: all of a file that is not
    shared evaluation audio, the first half of a noise file; raises for evaluation-only files."""
    f = identify(path, shared_roots, sha256)
    if f is None:
        return 0.0, duration_s
    try:
        return f.training_span(duration_s, what)
    except RealAudioSplitError as exc:
        raise RealAudioSplitError(f"{path}: {exc}") from None


def evaluation_span(rel_or_path: str | Path, duration_s: float) -> tuple[float, float]:
    """The part of a noise file reserved for evaluation: its second half."""
    return duration_s / 2.0, duration_s


def check_training_files(
    paths: Iterable[str | Path],
    shared_roots: Iterable[str | Path] = (),
    what: str = "training",
) -> list[SharedFile]:
    """Refuse the first evaluation-only file among ``paths``; return the shared files used
    (for the run's config: which real files went in)."""
    roots = list(shared_roots)
    used = []
    for p in paths:
        f = identify(p, roots)
        if f is None:
            continue
        if f.role == "evaluation":
            training_span(p, 0.0, roots, what=what)  # raises with the message
        used.append(f)
    return used


# -- datasets ---------------------------------------------------------------------------------
# Markers of where a dataset recording came from: ``ingest`` writes ``meta["shared"]`` (the
# shared file's path relative to its root) and ``meta["span_s"]`` (the part of it that was
# kept) for every file it recognises, plus ``source``/``source_dir``/``source_sha256`` for all;
# a synthetic corpus lists its real noise beds in ``meta["noise"]`` / ``meta["source"]`` and
# says in its settings (``info["generator"]["real_noise_span"]``) whether they were cut to
# their training span (corpora written before the split used whole files).
SPAN_MARKER = "training"
FIRST_HALF = "first half"


def _default_roots() -> list[Path]:
    from modeltools.data.noise import default_shared_data_dir

    root = default_shared_data_dir()
    return [root] if root is not None else []


def _ingested_file(ds: Dataset, rec: Recording, roots: list[Path]) -> SharedFile | None:
    meta = rec.meta
    if meta.get("shared"):
        return shared_file(str(meta["shared"]))
    base = meta.get("source_dir") or ds.info.get("source")
    if isinstance(base, str) and isinstance(meta.get("source"), str):
        found = _by_location(Path(base) / meta["source"])
        if found is not None:
            return found
    for digest in (meta.get("source_sha256"), rec.sha256):
        if isinstance(digest, str) and digest:
            found = identify_digest(digest, roots)
            if found is not None:
                return found
    return None


def _corpus_files(rec: Recording) -> list[SharedFile]:
    names = [n for n in rec.meta.get("noise", ()) if isinstance(n, str)]
    if rec.kind == "noise" and isinstance(rec.meta.get("source"), str):
        names.append(rec.meta["source"])
    return [f for f in map(shared_file, names) if f is not None]


def _span_ok(span: Any, duration_s: float | None) -> bool:
    """Whether ``span`` (``[start_s, end_s]``) lies within the first half of a noise file."""
    if not isinstance(span, (list, tuple)) or len(span) != 2:
        return False
    if duration_s is None:  # unknown length: trust a span recorded as the first half
        return float(span[0]) == 0.0
    return float(span[1]) <= duration_s / 2.0 + 0.05


def check_datasets(
    datasets: Iterable[Dataset],
    what: str = "training",
    shared_roots: Iterable[str | Path] | None = None,
    splits: Iterable[str] = ("train", "val"),
) -> list[dict[str, Any]]:
    """Refuse datasets whose recordings of ``splits`` (the ones training reads) hold
    evaluation-only real audio (by the recordings' sources, their sha256 against MANIFEST.csv,
    or a corpus' real noise beds); return the real files in them,
    ``[{"file", "role", "span_s", "splits", "datasets"}]``, for the run's config. (``ingest``
    puts evaluation-only audio into the ``test`` split only.)

    ``shared_roots`` default to :func:`modeltools.data.noise.default_shared_data_dir`.
    A noise-folder file must come with the span it was cut to (its first half); a dataset
    ingested, or a corpus generated, before the split used whole files and is refused.
    """
    roots = [Path(r) for r in shared_roots] if shared_roots is not None else _default_roots()
    used: dict[tuple[str, str], dict[str, Any]] = {}
    wanted = set(splits)
    for ds in datasets:
        gen = ds.info.get("generator")
        cut = (
            FIRST_HALF
            if isinstance(gen, dict) and gen.get("real_noise_span") == SPAN_MARKER
            else None
        )
        for rec in ds.recordings:
            if rec.split not in wanted:
                continue
            if isinstance(gen, dict):
                found = [(f, cut) for f in _corpus_files(rec)]
            else:
                f = _ingested_file(ds, rec, roots)
                found = [(f, rec.meta.get("span_s"))] if f is not None else []
            for f, span in found:
                span = _checked_span(f, span, rec, roots, f"{ds.root}: recording {rec.id}", what)
                key = (f.rel, json.dumps(span))
                entry = used.setdefault(
                    key,
                    {"file": f.rel, "role": f.role, "span_s": span, "splits": [], "datasets": []},
                )
                for k, v in (("splits", rec.split), ("datasets", str(ds.root))):
                    if v not in entry[k]:
                        entry[k].append(v)
    return sorted(used.values(), key=lambda e: (e["file"], str(e["span_s"])))


def _checked_span(
    f: SharedFile, span: Any, rec: Recording, roots: list[Path], where: str, what: str
) -> Any:
    """The span of ``f`` that ``rec`` holds, as recorded; raises if it is not training audio."""
    if f.role == "evaluation":
        try:
            f.training_span(0.0, what)
        except RealAudioSplitError as exc:
            raise RealAudioSplitError(f"{where}: {exc}") from None
    dur = rec.meta.get("source_duration_s") or manifest_duration_s(f.rel, roots)
    if f.role == "training":
        return span if span is not None else ([0.0, float(dur)] if dur else "whole")
    if span == FIRST_HALF:
        return [0.0, round(dur / 2.0, 3)] if dur else FIRST_HALF
    if not _span_ok(span, dur):
        raise RealAudioSplitError(
            f"{where}: holds {f.rel} whole, but the second half of every noise file is "
            f"evaluation-only ({RULE}); re-run `chorus-models "
            f"{'ingest' if 'source_sha256' in rec.meta else 'synth --overwrite'}` (it now keeps "
            f"the first half only) before {what}"
        )
    return span
