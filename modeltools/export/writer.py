"""Writing what :mod:`modeltools.export.bundle` produced: the bundle folder (models, labels,
golden window, parity report, manifest), the per-flavour files, the Edge TPU twins.

The bundle is assembled in a temporary folder beside its destination, loaded by the agent's own
loader and smoke-tested, and only then renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modeltools.export.convert import Converted, ExportError
from modeltools.export.parity import report_markdown

if TYPE_CHECKING:
    from modeltools.export.bundle import ExportOptions

log = logging.getLogger(__name__)

WINDOW_SAMPLES = 110250
SAMPLE_RATE_HZ = 22050
MIN_AGENT_VERSION = "0.1.0"
GOLDEN_ATOL = 0.2  # logits and waveform samples; see write_bundle


def labels_csv(taxonomy: Any, species_classes: Sequence[str]) -> str:
    import csv
    import io

    from agent.models.manifest import LABEL_COLUMNS

    labels = {lab.species_code: lab for lab in taxonomy.bundle_labels()}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LABEL_COLUMNS)
    for code in species_classes:
        if code not in labels:
            raise ExportError(f"classifier class {code!r} is not in the corpus taxonomy")
        lab = labels[code]
        w.writerow([getattr(lab, c) for c in LABEL_COLUMNS])
    return buf.getvalue()


def frontend_params(channel_norm: bool = True) -> dict[str, Any]:
    """The frontend's definition for the manifest; the agent computes it natively from these
    (agent.models.frontend) or runs frontend.tflite."""
    from modeltools.classifier import frontend as fe

    return {
        "kind": "mel-pcen-whiten (frontend.tflite, float32)",
        "sample_rate_hz": fe.SAMPLE_RATE_HZ,
        "hop_samples": fe.HOP_SAMPLES,
        "frame_samples": fe.FRAME_SAMPLES,
        "fft_length": fe.FFT_LENGTH,
        "front_pad_samples": fe.FRONT_PAD_SAMPLES,
        "mel_bands": fe.MEL_BANDS,
        "lower_edge_hz": fe.LOWER_EDGE_HZ,
        "upper_edge_hz": fe.UPPER_EDGE_HZ,
        "pcen_alpha": 0.5,
        "pcen_smooth_coef": 0.1,
        "pcen_delta": 2.0,
        "pcen_root": 2.0,
        "pcen_floor": 1e-6,
        "pcen_fir_taps": fe.PCEN_FIR_TAPS,
        "channel_norm": channel_norm,
        "clean_thresh": 1.0,
    }


def compile_edgetpu_twins(folder: Path, named: list[tuple[str, Converted]]) -> dict[str, str]:
    """Compile the int8 models for the Edge TPU when the compiler is installed (per model:
    what mapped, or why not); writes ``<stem>_edgetpu.tflite`` next to the CPU model."""
    from modeltools.export.edgetpu import compile_model, compiler_path

    if compiler_path() is None:
        return {"all": "edgetpu_compiler not installed: CPU models only"}
    out = {}
    for stem, conv in named:
        if conv.flavour != "int8":
            out[stem] = f"not compiled: {conv.flavour} (the Edge TPU needs int8)"
            continue
        try:
            res = compile_model(conv.data, stem)
        except (RuntimeError, OSError) as exc:
            out[stem] = f"not compiled: {exc}"
            continue
        (folder / f"{stem}_edgetpu.tflite").write_bytes(res.data)
        out[stem] = res.summary()
        log.info("%s: Edge TPU: %s", stem, out[stem])
    return out


def tpu_file(folder: Path, stem: str) -> str | None:
    name = f"{stem}_edgetpu.tflite"
    return name if (folder / name).is_file() else None


def write_flavours(
    folder: Path,
    sep: dict[str, Converted],
    cls: dict[str, list[Converted]],
    report: dict,
    frontend: Converted | None,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if frontend is not None:
        (folder / "frontend_float32.tflite").write_bytes(frontend.data)
    for fl, conv in sep.items():
        (folder / f"separator_{fl}.tflite").write_bytes(conv.data)
    for fl, convs in cls.items():
        for k, conv in enumerate(convs):
            (folder / f"classifier_{k}_{fl}.tflite").write_bytes(conv.data)
    (folder / "parity.json").write_text(json.dumps(report, indent=1) + "\n")


def write_bundle(
    opts: ExportOptions,
    sep: Converted | None,
    num_sources: int,
    frontend: Converted,
    members: list[Converted],
    labels_csv: str,
    eval_audio: np.ndarray,
    report: dict[str, Any],
) -> None:
    from agent.models.golden import smoke_test
    from agent.models.manifest import load_bundle, write_manifest
    from agent.models.stages import RuntimeOptions, load_models
    from modeltools.data.audio_io import read_segment, write_wav

    opts.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{opts.out.name}.", dir=opts.out.parent))
    try:
        named = ([("separator", sep)] if sep is not None else []) + [
            (f"classifier_{k}", conv) for k, conv in enumerate(members)
        ]
        for stem, conv in named:
            (tmp / f"{stem}.tflite").write_bytes(conv.data)
        (tmp / "frontend.tflite").write_bytes(frontend.data)
        report["edgetpu"] = compile_edgetpu_twins(tmp, named)
        (tmp / "labels.csv").write_text(labels_csv)
        # Golden window: the loudest labelled test segment, as the agent will read it (16-bit).
        (tmp / "golden").mkdir()
        pick = int(np.argmax(np.max(np.abs(eval_audio), axis=1)))
        write_wav(tmp / "golden" / "input.wav", eval_audio[pick], SAMPLE_RATE_HZ)
        x = read_segment(tmp / "golden" / "input.wav", 0, WINDOW_SAMPLES)
        (tmp / "parity.json").write_text(json.dumps(report, indent=1) + "\n")
        (tmp / "parity.md").write_text(report_markdown(report))
        fields: dict[str, Any] = {
            "name": opts.name,
            "version": opts.version,
            "description": opts.description
            or "Chorus edge bundle: MixIT separator + classifier ensemble trained by modeltools.",
            "created_utc": report["created_utc"],
            "min_agent_version": MIN_AGENT_VERSION,
            "runtime": {
                "interpreter": "tflite-builtins",
                "min_litert": "2.3.0",
                "separator_flavour": report["selected"]["separator"] or "",
                "classifier_flavour": report["selected"]["classifier"],
            },
            "sample_rate_hz": SAMPLE_RATE_HZ,
            "window_samples": WINDOW_SAMPLES,
            "separator": None
            if sep is None
            else {
                "file": "separator.tflite",
                "edgetpu_file": tpu_file(tmp, "separator"),
                "num_sources": num_sources,
                "input_peak": opts.input_peak,
            },
            "classifiers": [
                {
                    "name": opts.name,
                    "members": [
                        {
                            "file": f"classifier_{k}.tflite",
                            "edgetpu_file": tpu_file(tmp, f"classifier_{k}"),
                        }
                        for k in range(len(members))
                    ],
                    "labels": "labels.csv",
                    "input": "features",
                    "frontend_model": {"file": "frontend.tflite"},
                    "frontend": frontend_params(
                        bool(report.get("classifier_source", {}).get("channel_norm", True))
                    ),
                }
            ],
            "golden": {
                "input": "golden/input.wav",
                "expected": "golden/expected.npz",
                "atol": GOLDEN_ATOL,
            },
            "parity": "parity.json",
            "provenance": {
                "separator": report.get("separator_source"),
                "classifier": report.get("classifier_source"),
            },
        }
        # The golden outputs are what the *agent's own code* returns on the golden window
        # (default options: numpy frontend, the per-window gain), so the bundle is first
        # written without them, loaded by the agent, run, and then completed. The tolerance
        # covers the frontend choice (native vs frontend.tflite moves int8 logits by ~0.1)
        # and interpreter/thread differences.
        golden = fields.pop("golden")
        write_manifest(tmp, fields)
        models = load_models(load_bundle(tmp), RuntimeOptions(), use_separator=sep is not None)
        expected: dict[str, np.ndarray] = {}
        if models.separator is not None:
            expected["separator"] = models.separator.separate(x)
        for clf in models.classifiers:
            for e, logits in enumerate(clf.member_logits(x[np.newaxis])):  # type: ignore[attr-defined]
                expected[f"{clf.name}/{e}"] = logits[0]
        _save_expected(tmp / "golden" / "expected.npz", expected)
        write_manifest(tmp, {**fields, "golden": golden})
        models = dataclasses.replace(models, bundle=load_bundle(tmp))  # same interpreters
        log.info("bundle smoke test: %s", smoke_test(models))
        tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is read by the agent's user
        if opts.out.exists():
            shutil.rmtree(opts.out)
        tmp.rename(opts.out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _save_expected(path: Path, expected: dict[str, np.ndarray]) -> None:
    # float16 halves the separator's golden output; its rounding (~1e-3 relative) is far
    # below the tolerance.
    np.savez_compressed(
        path,
        **{
            k: v.astype(np.float16 if k == "separator" else np.float32) for k, v in expected.items()
        },
    )
