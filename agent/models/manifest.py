"""The model bundle: the only thing the agent loads and the only thing OTA ships.

A bundle is a folder::

    manifest.json        this module's schema (format "chorus-bundle", format_version 1)
    labels.csv           species_code,scientific_name,common_name,genus,family,order
    separator.tflite     optional; (1, N) float waveform -> (1, M, N)
    classifier*.tflite   one file per ensemble member; (1, N) waveform -> (1, C) logits
    golden/input.npy     optional golden window for the on-device smoke test
    golden/expected.npz  what each model must return for it (keys: "separator",
                         "<classifier>/<member index>")

Every file is listed in ``manifest["files"]`` with its sha256, so the manifest (which OTA signs)
covers the whole bundle. Both sides use this module: modeltools writes bundles with
:func:`write_manifest`, the agent reads them with :func:`load_bundle`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import BundleError

FORMAT = "chorus-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
LABEL_COLUMNS = ("species_code", "scientific_name", "common_name", "genus", "family", "order")
# Labels whose score is taken from the unseparated mix only (ALGORITHMS.md §2.7, step 4).
MIX_ONLY_CODES = frozenset({"unknown"})


@dataclass(frozen=True)
class Label:
    species_code: str
    scientific_name: str
    common_name: str
    genus: str = ""
    family: str = ""
    order: str = ""


@dataclass(frozen=True)
class ModelFile:
    """One .tflite file plus its optional Edge TPU-compiled twin."""

    file: str
    edgetpu_file: str | None = None


@dataclass(frozen=True)
class SeparatorSpec:
    model: ModelFile
    num_sources: int  # M, separated channels the model outputs
    sample_rate_hz: int
    window_samples: int


@dataclass(frozen=True)
class ClassifierSpec:
    name: str
    members: tuple[ModelFile, ...]  # ensemble members; logits are averaged
    labels_file: str
    labels: tuple[Label, ...]
    sample_rate_hz: int
    window_samples: int
    input_kind: str = "waveform"  # only "waveform" in format 1

    @property
    def mix_only_indices(self) -> tuple[int, ...]:
        return tuple(i for i, lab in enumerate(self.labels) if lab.species_code in MIX_ONLY_CODES)


@dataclass(frozen=True)
class GoldenSpec:
    input_file: str
    expected_file: str
    atol: float


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    sample_rate_hz: int
    window_samples: int
    separator: SeparatorSpec | None
    classifiers: tuple[ClassifierSpec, ...]
    files: Mapping[str, str]  # relative path -> sha256 hex
    golden: GoldenSpec | None = None
    description: str = ""
    created_utc: str = ""

    @property
    def window_s(self) -> float:
        return self.window_samples / self.sample_rate_hz


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    def file(self, rel: str) -> Path:
        return self.path / rel


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Reading


class _Reader:
    """Typed access to the manifest JSON that names the offending key on error."""

    def __init__(self, data: Any, where: str, bundle: Path) -> None:
        if not isinstance(data, dict):
            raise BundleError(f"{bundle}: manifest {where or 'root'} must be an object")
        self.data, self.where, self.bundle = data, where, bundle

    def _fail(self, key: str, what: str) -> BundleError:
        path = f"{self.where}.{key}" if self.where else key
        return BundleError(f"{self.bundle}: manifest.json: {path}: {what}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise self._fail(key, "missing")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self._fail(key, f"expected {name}, got {type(value).__name__}")
        return value

    def positive_int(self, key: str) -> int:
        value = self.get(key, int)
        if value <= 0:
            raise self._fail(key, f"must be > 0, got {value}")
        return int(value)

    def child(self, key: str) -> _Reader:
        return _Reader(
            self.get(key, dict), f"{self.where}.{key}" if self.where else key, self.bundle
        )


def _model_file(r: _Reader) -> ModelFile:
    return ModelFile(
        file=r.get("file", str), edgetpu_file=r.get("edgetpu_file", (str, type(None)), None)
    )


def read_labels(path: Path) -> tuple[Label, ...]:
    """Load a label CSV.

    Header: ``species_code,scientific_name,common_name`` and optionally ``genus,family,order``.
    """
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            header = tuple(rows[0].keys()) if rows else ()
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BundleError(f"{path}: cannot read label table: {exc}") from exc
    required = LABEL_COLUMNS[:3]
    missing = [c for c in required if c not in header]
    if not rows or missing:
        raise BundleError(
            f"{path}: label table needs a header with {', '.join(required)}"
            + (f" (missing {', '.join(missing)})" if rows else " and at least one row")
        )
    labels = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        code = (row.get("species_code") or "").strip()
        if not code:
            raise BundleError(f"{path}:{line}: empty species_code")
        if code in seen:
            raise BundleError(f"{path}:{line}: duplicate species_code {code!r}")
        seen.add(code)
        labels.append(Label(**{c: (row.get(c) or "").strip() for c in LABEL_COLUMNS}))
    return tuple(labels)


def load_bundle(path: str | Path, verify_hashes: bool = True) -> Bundle:
    """Read and validate a bundle folder. Raises :class:`BundleError` naming what is wrong."""
    root = Path(path)
    mpath = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleError(f"{root}: model bundle folder not found")
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{root}: no {MANIFEST_NAME} (not a model bundle)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mpath}: not valid JSON: {exc}") from exc
    r = _Reader(data, "", root)
    if r.get("format", str) != FORMAT:
        raise BundleError(f"{mpath}: format is {data.get('format')!r}, expected {FORMAT!r}")
    if r.get("format_version", int) != FORMAT_VERSION:
        raise BundleError(
            f"{mpath}: format_version {data['format_version']} is not supported by this agent "
            f"(supports {FORMAT_VERSION}); upgrade the agent"
        )
    files_raw = r.get("files", dict)
    files: dict[str, str] = {}
    for rel, digest in files_raw.items():
        if not isinstance(digest, str) or len(digest) != 64:
            raise BundleError(f"{mpath}: files.{rel}: expected a sha256 hex digest")
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise BundleError(f"{mpath}: files.{rel}: paths must stay inside the bundle")
        files[rel] = digest

    sample_rate_hz = r.positive_int("sample_rate_hz")
    window_samples = r.positive_int("window_samples")

    separator = None
    if data.get("separator") is not None:
        s = r.child("separator")
        separator = SeparatorSpec(
            model=_model_file(s),
            num_sources=s.positive_int("num_sources"),
            sample_rate_hz=int(s.get("sample_rate_hz", int, sample_rate_hz)),
            window_samples=int(s.get("window_samples", int, window_samples)),
        )

    classifiers = []
    raw_classifiers = r.get("classifiers", list)
    if not raw_classifiers:
        raise BundleError(f"{mpath}: classifiers: at least one classifier is required")
    for i, raw in enumerate(raw_classifiers):
        c = _Reader(raw, f"classifiers[{i}]", root)
        members_raw = c.get("members", list)
        if not members_raw:
            raise BundleError(f"{mpath}: classifiers[{i}].members: at least one model is required")
        members = tuple(
            _model_file(_Reader(m, f"classifiers[{i}].members[{j}]", root))
            for j, m in enumerate(members_raw)
        )
        labels_file = c.get("labels", str)
        input_kind = c.get("input", str, "waveform")
        if input_kind != "waveform":
            raise BundleError(f"{mpath}: classifiers[{i}].input: unsupported kind {input_kind!r}")
        classifiers.append(
            ClassifierSpec(
                name=c.get("name", str),
                members=members,
                labels_file=labels_file,
                labels=(),  # filled below once files are checked
                sample_rate_hz=int(c.get("sample_rate_hz", int, sample_rate_hz)),
                window_samples=int(c.get("window_samples", int, window_samples)),
                input_kind=input_kind,
            )
        )
    if len({c.name for c in classifiers}) != len(classifiers):
        raise BundleError(f"{mpath}: classifiers: names must be unique")

    golden = None
    if data.get("golden") is not None:
        g = r.child("golden")
        golden = GoldenSpec(g.get("input", str), g.get("expected", str), g.get("atol", float))

    # Every file the manifest refers to must be listed (and so covered by the signature).
    referenced = [c.labels_file for c in classifiers]
    for spec in ([separator.model] if separator else []) + [
        m for c in classifiers for m in c.members
    ]:
        referenced += [spec.file] + ([spec.edgetpu_file] if spec.edgetpu_file else [])
    if golden:
        referenced += [golden.input_file, golden.expected_file]
    for rel in referenced:
        if rel not in files:
            raise BundleError(f"{mpath}: {rel} is used but not listed in files")
    for rel, digest in files.items():
        fpath = root / rel
        if not fpath.is_file():
            raise BundleError(f"{root}: {rel} is listed in the manifest but missing")
        if verify_hashes and sha256_file(fpath) != digest:
            raise BundleError(f"{root}: {rel} does not match its sha256 in the manifest (corrupt?)")

    classifiers = [
        ClassifierSpec(**{**c.__dict__, "labels": read_labels(root / c.labels_file)})
        for c in classifiers
    ]
    manifest = Manifest(
        name=r.get("name", str),
        version=r.get("version", str),
        sample_rate_hz=sample_rate_hz,
        window_samples=window_samples,
        separator=separator,
        classifiers=tuple(classifiers),
        files=files,
        golden=golden,
        description=r.get("description", str, ""),
        created_utc=r.get("created_utc", str, ""),
    )
    return Bundle(root, manifest)


# ---------------------------------------------------------------------------------------------
# Writing (used by modeltools; kept here so both sides share one definition)


def write_manifest(bundle_dir: str | Path, fields: dict[str, Any]) -> Path:
    """Write ``manifest.json`` for ``bundle_dir``: ``fields`` plus format keys and file hashes.

    ``fields`` holds everything but ``format``, ``format_version`` and ``files``; every other file
    in the folder is hashed into ``files``. The result is validated by :func:`load_bundle`.
    """
    root = Path(bundle_dir)
    files = {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, **fields, "files": files}
    out = root / MANIFEST_NAME
    out.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    load_bundle(root)  # refuse to leave an invalid bundle behind
    return out
