"""The model bundle: the only thing the agent loads and the only thing OTA ships.

A bundle is a folder (docs/bundles.md describes every field)::

    manifest.json        this module's schema (format "chorus-bundle", format_version 2)
    labels.csv           species_code,scientific_name,common_name,genus,family,order
    separator.tflite     optional; (1, N) float waveform -> (1, M, N)
    frontend.tflite      optional shared classifier frontend (input "features"); (1, N) -> F
    classifier*.tflite   one file per ensemble member; (1, N) waveform or F -> (1, C) logits
    golden/input.npy     optional golden window (.npy or mono .wav) for the on-device smoke test
    golden/expected.npz  what each model must return for it (keys: "separator",
                         "<classifier>/<member index>")
    parity.json          optional report of the Keras-vs-TFLite parity check at export

Every file is listed in ``manifest["files"]`` with its sha256 and size, so the manifest (which
OTA signs) covers the whole bundle. Format 1 bundles (plain sha256 strings, no sizes) still load.
Both sides use this module: modeltools writes bundles with :func:`write_manifest`, the agent reads
them with :func:`load_bundle`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from agent.detection.combine import PAPER_MAX, CombinationPolicy
from agent.errors import BundleError

FORMAT = "chorus-bundle"
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
LABEL_COLUMNS = ("species_code", "scientific_name", "common_name", "genus", "family", "order")
# Labels whose score is taken from the unseparated mix only (ALGORITHMS.md §2.7, step 4).
MIX_ONLY_CODES = frozenset({"unknown"})
GOLDEN_INPUT_SUFFIXES = (".npy", ".wav")
INPUT_KINDS = ("waveform", "features")
# Semantic version: MAJOR.MINOR.PATCH with optional pre-release and build parts (semver.org).
_SEMVER = re.compile(
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Label:
    species_code: str
    scientific_name: str
    common_name: str
    genus: str = ""
    family: str = ""
    order: str = ""


@dataclass(frozen=True)
class FileEntry:
    """What the manifest promises about one file: its sha256 and (format 2 on) its size."""

    sha256: str
    size: int | None = None  # bytes; None in format 1 bundles


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
    # When set, each window is scaled to this peak before the separator and the channels are
    # scaled back after it (the model was trained on peak-normalized mixtures).
    input_peak: float | None = None


@dataclass(frozen=True)
class ClassifierSpec:
    name: str
    members: tuple[ModelFile, ...]  # ensemble members; logits are averaged
    labels_file: str
    labels: tuple[Label, ...]
    sample_rate_hz: int
    window_samples: int
    # "waveform": members take the window; "features": frontend_model turns the window into
    # features once per channel and every member takes those.
    input_kind: str = "waveform"
    # Informational: how the frontend was set up at training (mel bands, hop...).
    frontend: Mapping[str, Any] = field(default_factory=dict)
    frontend_model: ModelFile | None = None
    # Name of the logits output when a member has several outputs (signature or tensor name).
    output_name: str | None = None

    @property
    def mix_only_indices(self) -> tuple[int, ...]:
        return tuple(i for i, lab in enumerate(self.labels) if lab.species_code in MIX_ONLY_CODES)


@dataclass(frozen=True)
class GoldenSpec:
    input_file: str
    expected_file: str
    atol: float
    rtol: float = 0.0  # an output passes where |out - expected| <= atol + rtol * |expected|


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    sample_rate_hz: int
    window_samples: int
    separator: SeparatorSpec | None
    classifiers: tuple[ClassifierSpec, ...]
    files: Mapping[str, FileEntry]  # relative path -> sha256 (+ size)
    golden: GoldenSpec | None = None
    description: str = ""
    created_utc: str = ""
    format_version: int = FORMAT_VERSION
    min_agent_version: str | None = None
    runtime: Mapping[str, Scalar] = field(default_factory=dict)  # e.g. {"min_litert": "2.3.0"}
    parity_file: str | None = None
    # How separated channels vote, per classifier backend ("chorus": the bundle's own
    # classifiers, "birdnet": a BirdNET file); absent = the paper's max (agent.detection.combine).
    combination: Mapping[str, CombinationPolicy] = field(default_factory=dict)

    @property
    def window_s(self) -> float:
        return self.window_samples / self.sample_rate_hz

    def combination_for(self, backend: str) -> CombinationPolicy:
        """The bundle's combination policy for ``backend`` (the paper's max if it has none)."""
        return self.combination.get(backend, PAPER_MAX)


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


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``"1.2.3"`` (optionally ``-pre``/``+build``) -> (1, 2, 3); None if not semantic."""
    m = _SEMVER.match(text)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def agent_version() -> str:
    """The installed agent's version (read at call time so tests can patch it)."""
    import agent

    return str(agent.__version__)


# ---------------------------------------------------------------------------------------------
# Reading


class _Reader:
    """Typed access to the manifest JSON that names the offending key on error."""

    def __init__(self, data: Any, where: str, bundle: Path) -> None:
        if not isinstance(data, dict):
            raise BundleError(
                f"{bundle}: {MANIFEST_NAME}: {where or 'root'}: expected an object, "
                f"got {type(data).__name__}"
            )
        self.data, self.where, self.bundle = data, where, bundle

    def fail(self, key: str, what: str) -> BundleError:
        path = f"{self.where}.{key}" if self.where else key
        return BundleError(f"{self.bundle}: {MANIFEST_NAME}: {path}: {what}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise self.fail(key, "missing")
            return default
        value = self.data[key]
        floats = kind is float or (isinstance(kind, tuple) and float in kind)
        if floats and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(key, f"expected {name}, got {type(value).__name__}")
        return value

    def positive_int(self, key: str) -> int:
        value = self.get(key, int)
        if value <= 0:
            raise self.fail(key, f"must be > 0, got {value}")
        return int(value)

    def tolerance(self, key: str, default: Any = ...) -> float:
        value = float(self.get(key, float, default))
        if not (math.isfinite(value) and value >= 0):
            raise self.fail(key, f"must be a finite number >= 0, got {value}")
        return value

    def params(self, key: str, allow_lists: bool) -> dict[str, Any]:
        """An optional object of named parameters: strings, numbers, booleans (and, with
        ``allow_lists``, flat lists of those)."""
        raw = self.get(key, (dict, type(None)), None) or {}
        for name, value in raw.items():
            ok = _is_scalar(value) or (
                allow_lists and isinstance(value, list) and all(_is_scalar(v) for v in value)
            )
            if not ok:
                what = "a string, number or boolean" + (" (or a list of them)" * allow_lists)
                raise self.fail(f"{key}.{name}", f"expected {what}, got {type(value).__name__}")
        return dict(raw)

    def child(self, key: str) -> _Reader:
        return _Reader(
            self.get(key, dict), f"{self.where}.{key}" if self.where else key, self.bundle
        )


def _is_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (str, int, bool))


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


def _read_json(root: Path) -> Any:
    mpath = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleError(f"{root}: model bundle folder not found")
    try:
        return json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{root}: no {MANIFEST_NAME} (not a model bundle)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mpath}: not valid JSON: {exc}") from exc


def _format_version(r: _Reader) -> int:
    mpath = r.bundle / MANIFEST_NAME
    if r.get("format", str) != FORMAT:
        raise BundleError(f"{mpath}: format is {r.data.get('format')!r}, expected {FORMAT!r}")
    version = int(r.get("format_version", int))
    if version not in SUPPORTED_FORMAT_VERSIONS:
        supported = " and ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
        raise BundleError(
            f"{mpath}: format_version {version} is not supported by this agent "
            f"(supports {supported})" + ("; upgrade the agent" if version > FORMAT_VERSION else "")
        )
    return version


def _check_agent_version(r: _Reader) -> str | None:
    """Refuse a bundle that declares it needs a newer agent than this one."""
    needed = r.get("min_agent_version", (str, type(None)), None)
    if needed is None:
        return None
    if not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", needed):
        raise r.fail("min_agent_version", f"expected a version like 1.2.3, got {needed!r}")
    want = tuple(int(p) for p in needed.split("."))
    installed = agent_version()
    # A development suffix ("0.2.0.dev1") still compares by its numeric release.
    have = re.match(r"([0-9]+)\.([0-9]+)\.([0-9]+)", installed)
    if have is not None and tuple(int(g) for g in have.groups()) < want:
        raise BundleError(
            f"{r.bundle}: bundle needs chorus-agent >= {needed} (this is {installed}); "
            "upgrade the agent"
        )
    return str(needed)


def _check_rel(r: _Reader, rel: str) -> None:
    """A listed path must be a plain relative POSIX path inside the bundle."""
    pure = PurePosixPath(rel)
    if (
        not rel
        or "\\" in rel
        or pure.is_absolute()
        or ".." in pure.parts
        or pure.as_posix() != rel
        or rel == MANIFEST_NAME
    ):
        raise r.fail(f"files.{rel}", "paths must be relative and stay inside the bundle")


def _file_entries(r: _Reader, format_version: int) -> dict[str, FileEntry]:
    files: dict[str, FileEntry] = {}
    for rel, raw in r.get("files", dict).items():
        _check_rel(r, rel)
        if format_version == 1:  # plain digests, no sizes
            if not isinstance(raw, str) or not _SHA256.match(raw):
                raise r.fail(f"files.{rel}", "expected a sha256 hex digest")
            files[rel] = FileEntry(raw)
            continue
        f = _Reader(raw, f"files.{rel}", r.bundle)
        digest = f.get("sha256", str)
        if not _SHA256.match(digest):
            raise f.fail("sha256", "expected 64 lowercase hex digits")
        size = f.get("size", int)
        if size < 0:
            raise f.fail("size", f"must be >= 0, got {size}")
        files[rel] = FileEntry(digest, int(size))
    return files


def _check_files(root: Path, files: Mapping[str, FileEntry], verify_hashes: bool) -> None:
    """Every listed file exists inside the bundle with the promised size (cheap, first) and
    sha256. A size mismatch is reported as a sha256 mismatch too: the bytes cannot match."""
    real_root = root.resolve()
    for rel, entry in files.items():
        fpath = root / rel
        if not fpath.is_file():
            raise BundleError(f"{root}: {rel} is listed in the manifest but missing")
        if not fpath.resolve().is_relative_to(real_root):
            raise BundleError(f"{root}: {rel} links outside the bundle")
        size = fpath.stat().st_size
        if entry.size is not None and size != entry.size:
            raise BundleError(
                f"{root}: {rel} does not match its sha256 in the manifest: it is {size} bytes, "
                f"the manifest says {entry.size} (truncated or altered)"
            )
        if verify_hashes and sha256_file(fpath) != entry.sha256:
            raise BundleError(f"{root}: {rel} does not match its sha256 in the manifest (corrupt?)")


def _separator(r: _Reader, sample_rate_hz: int, window_samples: int) -> SeparatorSpec | None:
    if r.data.get("separator") is None:
        return None
    s = r.child("separator")
    peak = s.get("input_peak", (float, type(None)), None)
    if peak is not None and not 0.0 < peak <= 1.0:
        raise s.fail("input_peak", f"must be in (0, 1] or null, got {peak}")
    return SeparatorSpec(
        model=_model_file(s),
        num_sources=s.positive_int("num_sources"),
        sample_rate_hz=int(s.get("sample_rate_hz", int, sample_rate_hz)),
        window_samples=int(s.get("window_samples", int, window_samples)),
        input_peak=peak,
    )


def _classifiers(r: _Reader, sample_rate_hz: int, window_samples: int) -> list[ClassifierSpec]:
    """The classifiers without their labels (read once the files are checked)."""
    raw_classifiers = r.get("classifiers", list)
    if not raw_classifiers:
        raise r.fail("classifiers", "at least one classifier is required")
    classifiers = []
    for i, raw in enumerate(raw_classifiers):
        c = _Reader(raw, f"classifiers[{i}]", r.bundle)
        members_raw = c.get("members", list)
        if not members_raw:
            raise c.fail("members", "at least one model is required")
        members = tuple(
            _model_file(_Reader(m, f"classifiers[{i}].members[{j}]", r.bundle))
            for j, m in enumerate(members_raw)
        )
        input_kind = c.get("input", str, "waveform")
        if input_kind not in INPUT_KINDS:
            raise c.fail("input", f"unsupported kind {input_kind!r}")
        frontend_model = None
        if c.data.get("frontend_model") is not None:
            frontend_model = _model_file(c.child("frontend_model"))
        if (input_kind == "features") != (frontend_model is not None):
            raise c.fail(
                "frontend_model",
                "required with input 'features'"
                if frontend_model is None
                else "only used with input 'features'",
            )
        classifiers.append(
            ClassifierSpec(
                name=c.get("name", str),
                members=members,
                labels_file=c.get("labels", str),
                labels=(),
                sample_rate_hz=int(c.get("sample_rate_hz", int, sample_rate_hz)),
                window_samples=int(c.get("window_samples", int, window_samples)),
                input_kind=input_kind,
                frontend=c.params("frontend", allow_lists=True),
                frontend_model=frontend_model,
                output_name=c.get("output", (str, type(None)), None),
            )
        )
    if len({c.name for c in classifiers}) != len(classifiers):
        raise r.fail("classifiers", "names must be unique")
    return classifiers


COMBINATION_BACKENDS = ("chorus", "birdnet")


def _combination(r: _Reader) -> dict[str, CombinationPolicy]:
    """``combination``: ``{backend: {channels, weight, offset, gate_rms_ratio, calibration}}``."""
    if r.data.get("combination") is None:
        return {}
    c = r.child("combination")
    out = {}
    for backend in c.data:
        if backend not in COMBINATION_BACKENDS:
            raise c.fail(backend, f"unknown backend (expected {', '.join(COMBINATION_BACKENDS)})")
        p = c.child(backend)
        known = {"channels", "weight", "offset", "gate_rms_ratio", "min_mix_logit", "calibration"}
        unknown = sorted(set(p.data) - known)
        if unknown:
            raise p.fail(unknown[0], "unknown key")
        fields = {
            "channels": p.get("channels", str, "sources"),
            "weight": p.get("weight", float, 1.0),
            "offset": p.get("offset", float, 0.0),
            "gate_rms_ratio": p.get("gate_rms_ratio", float, 0.0),
            "min_mix_logit": p.get("min_mix_logit", (float, type(None)), None),
        }
        problems = CombinationPolicy.problems_of(**fields)
        if problems:
            key, _, what = problems[0].partition(": ")
            raise p.fail(key, what)
        out[backend] = CombinationPolicy(**fields, calibration=p.get("calibration", dict, {}))
    return out


def _golden(r: _Reader) -> GoldenSpec | None:
    if r.data.get("golden") is None:
        return None
    g = r.child("golden")
    spec = GoldenSpec(
        g.get("input", str), g.get("expected", str), g.tolerance("atol"), g.tolerance("rtol", 0.0)
    )
    if PurePosixPath(spec.input_file).suffix.lower() not in GOLDEN_INPUT_SUFFIXES:
        raise g.fail("input", f"must be a .npy or .wav file, got {spec.input_file!r}")
    if PurePosixPath(spec.expected_file).suffix.lower() != ".npz":
        raise g.fail("expected", f"must be a .npz file, got {spec.expected_file!r}")
    return spec


def _check_v2_metadata(r: _Reader) -> None:
    """Format 2 promises a semantic version and, when given, an ISO 8601 creation time."""
    version = r.get("version", str)
    if parse_version(version) is None:
        raise r.fail("version", f"expected a semantic version like 1.2.3, got {version!r}")
    created = r.get("created_utc", str, "")
    if created:
        try:
            datetime.fromisoformat(created)
        except ValueError:
            raise r.fail("created_utc", f"expected an ISO 8601 time, got {created!r}") from None


def load_bundle(path: str | Path, verify_hashes: bool = True) -> Bundle:
    """Read and validate a bundle folder. Raises :class:`BundleError` naming what is wrong.

    Checks the format version, that the bundle does not need a newer agent, every field's type
    and range, that every file the manifest uses is listed, and each listed file's size and
    (unless ``verify_hashes`` is False) sha256.
    """
    root = Path(path)
    r = _Reader(_read_json(root), "", root)
    format_version = _format_version(r)
    min_agent = _check_agent_version(r)
    if format_version >= 2:
        _check_v2_metadata(r)
    files = _file_entries(r, format_version)
    sample_rate_hz = r.positive_int("sample_rate_hz")
    window_samples = r.positive_int("window_samples")
    separator = _separator(r, sample_rate_hz, window_samples)
    classifiers = _classifiers(r, sample_rate_hz, window_samples)
    golden = _golden(r)
    runtime = r.params("runtime", allow_lists=False)
    parity = r.get("parity", (str, type(None)), None)
    combination = _combination(r)

    # Every file the manifest refers to must be listed (and so covered by the signature).
    referenced = [c.labels_file for c in classifiers]
    model_files = [separator.model] if separator else []
    for c in classifiers:
        model_files += [*c.members, *([c.frontend_model] if c.frontend_model else [])]
    for spec in model_files:
        referenced += [spec.file] + ([spec.edgetpu_file] if spec.edgetpu_file else [])
    if golden:
        referenced += [golden.input_file, golden.expected_file]
    if parity:
        referenced.append(parity)
    for rel in referenced:
        if rel not in files:
            raise BundleError(f"{root / MANIFEST_NAME}: {rel} is used but not listed in files")
    _check_files(root, files, verify_hashes)

    manifest = Manifest(
        name=r.get("name", str),
        version=r.get("version", str),
        sample_rate_hz=sample_rate_hz,
        window_samples=window_samples,
        separator=separator,
        classifiers=tuple(
            ClassifierSpec(**{**c.__dict__, "labels": read_labels(root / c.labels_file)})
            for c in classifiers
        ),
        files=files,
        golden=golden,
        description=r.get("description", str, ""),
        created_utc=r.get("created_utc", str, ""),
        format_version=format_version,
        min_agent_version=min_agent,
        runtime=runtime,
        parity_file=parity,
        combination=combination,
    )
    return Bundle(root, manifest)


# ---------------------------------------------------------------------------------------------
# Writing (used by modeltools; kept here so both sides share one definition)


def write_manifest(bundle_dir: str | Path, fields: dict[str, Any]) -> Path:
    """Write ``manifest.json`` (format 2) for ``bundle_dir``: ``fields`` plus the format keys and
    every file's sha256 and size.

    ``fields`` holds everything but ``format``, ``format_version`` and ``files`` (given ones are
    replaced); every other file in the folder is listed in ``files``. The result is validated by
    :func:`load_bundle` and refused (BundleError) if invalid.
    """
    root = Path(bundle_dir)
    files = {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() != MANIFEST_NAME
    }
    rest = {k: v for k, v in fields.items() if k not in ("format", "format_version", "files")}
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, **rest, "files": files}
    out = root / MANIFEST_NAME
    out.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    load_bundle(root)  # refuse to leave an invalid bundle behind
    return out
