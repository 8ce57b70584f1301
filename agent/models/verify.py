"""Bundle verification: everything a device checks before it trusts a bundle, in one report.

``verify_bundle`` loads the bundle (every file's size and sha256), refuses models with ops the
device runtime cannot run (Flex / custom ops), loads every model in LiteRT and checks its shapes
against the manifest, times one inference per model, runs the golden smoke test and checks the
runtime requirements and the parity report. Both ``chorus-agent check-bundle`` and
``chorus-models bundle verify`` print its report. LiteRT only: this never imports TensorFlow, so
it runs on the device exactly as on the workstation.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.errors import BundleError, ChorusError
from agent.models.golden import run_golden
from agent.models.manifest import MANIFEST_NAME, Bundle, load_bundle, parse_version
from agent.models.runtime import TFLiteModel, builtin_op_names, list_ops, runtime_library
from agent.models.stages import Classifier, RuntimeOptions, load_models

log = logging.getLogger(__name__)

# Op names that are never runnable builtins even though the schema lists them.
_NOT_BUILTIN = frozenset({"CUSTOM", "DELEGATE", "PLACEHOLDER_FOR_GREATER_OP_CODES"})


@dataclass(frozen=True)
class FileReport:
    """One listed file. Model fields are None for other files and for Edge TPU twins."""

    rel: str
    size_bytes: int
    sha256_ok: bool
    role: str  # what the manifest uses it for ("" if nothing)
    op_count: int | None = None
    op_names: frozenset[str] = frozenset()
    invoke_ms: float | None = None  # one inference on a zero window, after a warm-up run


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_bundle`. ``error`` is the first hard failure, if any."""

    path: Path
    name: str = ""
    version: str = ""
    format_version: int = 0
    runtime: str = ""
    files: list[FileReport] = field(default_factory=list)
    golden: str = ""
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None

    def format(self) -> str:
        """A human-readable table: one row per file, op names under each model, then the
        smoke test, notes and PASS/FAIL."""
        head = f"{self.path}: {self.name} {self.version} (format {self.format_version})"
        lines = [head + (f"; runtime {self.runtime}" if self.runtime else "")]
        if self.files:
            width = max(len(f.rel) for f in self.files)
            lines.append(
                f"  {'file':<{width}}  {'bytes':>10}  sha256  {'ops':>4}  {'invoke ms':>9}  role"
            )
        for f in self.files:
            ops = "" if f.op_count is None else str(f.op_count)
            ms = "" if f.invoke_ms is None else f"{f.invoke_ms:.1f}"
            sha = "ok" if f.sha256_ok else "BAD"
            lines.append(
                f"  {f.rel:<{width}}  {f.size_bytes:>10}  {sha:<6}  {ops:>4}  {ms:>9}  {f.role}"
            )
            if f.op_names:
                lines.append(f"  {'':<{width}}  ops: {' '.join(sorted(f.op_names))}")
        if self.golden:
            lines.append(f"  {self.golden}")
        lines += [f"  note: {n}" for n in self.notes]
        lines.append("PASS" if self.passed else f"FAIL: {self.error}")
        return "\n".join(lines)


def _roles(bundle: Bundle) -> dict[str, str]:
    m = bundle.manifest
    roles: dict[str, str] = {}
    if m.separator is not None:
        roles[m.separator.model.file] = "separator"
        if m.separator.model.edgetpu_file:
            roles[m.separator.model.edgetpu_file] = "separator (Edge TPU)"
    for c in m.classifiers:
        roles.setdefault(c.labels_file, f"labels of {c.name}")
        if c.frontend_model is not None:
            roles[c.frontend_model.file] = f"classifier {c.name} frontend"
            if c.frontend_model.edgetpu_file:
                roles[c.frontend_model.edgetpu_file] = f"classifier {c.name} frontend (Edge TPU)"
        for j, member in enumerate(c.members):
            roles[member.file] = f"classifier {c.name} member {j}"
            if member.edgetpu_file:
                roles[member.edgetpu_file] = f"classifier {c.name} member {j} (Edge TPU)"
    if m.golden is not None:
        roles[m.golden.input_file] = "golden input"
        roles[m.golden.expected_file] = "golden expected outputs"
    if m.parity_file:
        roles[m.parity_file] = "parity report"
    return roles


def _check_ops(bundle: Bundle, rel: str) -> list[str] | None:
    """The model's op names; BundleError if any is not a TFLite builtin (Flex, custom)."""
    ops = list_ops(bundle.file(rel))
    if ops is None:
        return None
    builtins = builtin_op_names()
    if builtins is None:  # no schema: builtins are UPPER_SNAKE, custom names are not
        bad = [o for o in ops if not re.fullmatch(r"[A-Z0-9_]+", o) or o in _NOT_BUILTIN]
    else:
        bad = [o for o in ops if o not in builtins or o in _NOT_BUILTIN]
    if bad:
        raise BundleError(
            f"{bundle.path}: {rel} uses ops that are not TFLite builtins: "
            f"{', '.join(sorted(set(bad)))} (Flex/SELECT_TF_OPS or custom ops; the device "
            "runtime cannot run them; convert with builtin ops only)"
        )
    return ops


def _invoke_ms(model: TFLiteModel) -> float:
    x = np.zeros(model.input.shape, np.float32)
    model.run(x)  # warm-up: the first run sets up XNNPACK
    t0 = time.perf_counter()
    model.run(x)
    return (time.perf_counter() - t0) * 1e3


def _runtime_label_and_check(bundle: Bundle, report: VerifyReport) -> None:
    """Name the runtime in use and enforce the manifest's ``runtime.min_litert``."""
    lib = runtime_library()
    try:
        installed = importlib.metadata.version(lib.name) if lib.name != "tensorflow.lite" else ""
    except importlib.metadata.PackageNotFoundError:
        installed = ""
    report.runtime = f"{lib.name} {installed}".strip()
    needed = bundle.manifest.runtime.get("min_litert")
    if needed is None:
        return
    want = parse_version(str(needed))
    if want is None:
        raise BundleError(
            f"{bundle.path}: {MANIFEST_NAME}: runtime.min_litert: expected a version like "
            f"2.3.0, got {needed!r}"
        )
    have = re.match(r"([0-9]+)\.([0-9]+)\.([0-9]+)", installed)
    if lib.name != "ai-edge-litert" or have is None:
        report.notes.append(f"runtime.min_litert {needed} not checked (running on {lib.name})")
    elif tuple(int(g) for g in have.groups()) < want:
        raise BundleError(
            f"{bundle.path}: bundle needs ai-edge-litert >= {needed} (this is {installed}); "
            "upgrade the runtime"
        )


def _check_parity(bundle: Bundle, rel: str) -> str:
    try:
        data = json.loads(bundle.file(rel).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{bundle.path}: {rel}: parity report is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{bundle.path}: {rel}: parity report must be a JSON object")
    if data.get("passed") is False:
        raise BundleError(f"{bundle.path}: {rel}: the export failed its parity check")
    return f"parity report {rel}: {len(data)} entries" + (
        ", passed" if data.get("passed") is True else ""
    )


def _verify(report: VerifyReport, num_threads: int) -> None:
    bundle = load_bundle(report.path)  # sizes and sha256 of every listed file
    m = bundle.manifest
    report.name, report.version, report.format_version = m.name, m.version, m.format_version
    if m.format_version < 2:
        report.notes.append("format 1 bundle: files carry no sizes; rebuild it as format 2")
    if m.min_agent_version:
        report.notes.append(f"needs chorus-agent >= {m.min_agent_version}")
    _runtime_label_and_check(bundle, report)
    roles = _roles(bundle)
    listed = set(m.files) | {MANIFEST_NAME}
    for p in sorted(bundle.path.rglob("*")):
        rel = p.relative_to(bundle.path).as_posix()
        if p.is_file() and rel not in listed:
            report.notes.append(f"{rel} is not listed in the manifest (not verified; ignored)")

    ops: dict[str, list[str] | None] = {}
    for rel in sorted(m.files):
        if rel.endswith(".tflite") and "Edge TPU" not in roles.get(rel, ""):
            ops[rel] = _check_ops(bundle, rel)  # before loading: a Flex op fails allocation
    if any(v is None for v in ops.values()):
        report.notes.append("this runtime cannot list ops; Flex/custom ops not checked")

    # Shapes against the manifest: the stages refuse a mismatch with a message naming the file.
    models = load_models(
        bundle, RuntimeOptions(num_threads=num_threads), use_separator=m.separator is not None
    )
    loaded: dict[str, TFLiteModel] = {}
    if models.separator is not None and m.separator is not None:
        loaded[m.separator.model.file] = models.separator.model
    for clf in models.classifiers:
        if isinstance(clf, Classifier):
            for spec, model in zip(clf.spec.members, clf.members, strict=True):
                loaded[spec.file] = model
            if clf.frontend is not None and clf.spec.frontend_model is not None:
                loaded[clf.spec.frontend_model.file] = clf.frontend
    for rel in ops:
        if rel not in roles:
            report.notes.append(f"{rel} is not used by the manifest (ops checked, not loaded)")

    for rel in sorted(m.files):
        model_ops = ops.get(rel)
        loaded_model = loaded.get(rel)
        report.files.append(
            FileReport(
                rel=rel,
                size_bytes=bundle.file(rel).stat().st_size,
                sha256_ok=True,  # load_bundle raised otherwise
                role=roles.get(rel, ""),
                op_count=None if model_ops is None else len(model_ops),
                op_names=frozenset(model_ops or ()),
                invoke_ms=None if loaded_model is None else _invoke_ms(loaded_model),
            )
        )
        if "Edge TPU" in roles.get(rel, ""):
            report.notes.append(f"{rel}: Edge TPU model, not loaded (needs the Coral delegate)")

    result = run_golden(models)
    report.golden = (
        "no golden data in the bundle; smoke test skipped" if result is None else result.summary()
    )
    if m.parity_file:
        report.notes.append(_check_parity(bundle, m.parity_file))


def verify_bundle(
    path: str | Path, *, num_threads: int = 1, raise_on_error: bool = True
) -> VerifyReport:
    """Verify the bundle at ``path`` (see the module docstring) and return its report.

    The first hard failure raises :class:`BundleError` (one line naming the file and what is
    wrong); with ``raise_on_error=False`` it is returned as ``report.error`` instead, with the
    checks done so far.
    """
    report = VerifyReport(Path(path))
    try:
        _verify(report, num_threads)
    except ChorusError as exc:
        report.error = " ".join(str(exc).split("\n"))
        if raise_on_error:
            raise
    log.info("verified bundle %s: %s", report.path, "pass" if report.passed else report.error)
    return report
