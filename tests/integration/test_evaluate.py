"""``chorus-models evaluate``: the separate + classify report (Table 2), its files and figures.

Most tests run the shipped hand-set demo bundle (agent/bundles/demo: a band-split separator and
band-energy detectors, so its logits depend on the audio) on a small corpus of demo soundscapes
whose taxonomy lists the species in the *reverse* of the bundle's order, so a label mapping that
assumed equal orders would fail. The Keras rows (and Tables 1/3) use tiny runs trained for two
steps and exported with ``chorus-models export``, like tests/integration/test_export.py.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from agent.demo import DEMO_SAMPLE_RATE_HZ, demo_labels, synthesize_call, write_demo_wav
from agent.models.manifest import sha256_file
from modeltools.data.annotations import Annotation, segment_labels
from modeltools.data.dataset import Recording, Segment, write_dataset
from modeltools.data.taxonomy import Species, Taxonomy
from modeltools.evaluation.report import fmt

REPO = Path(__file__).resolve().parents[2]
DEMO_BUNDLE = REPO / "agent" / "bundles" / "demo"
SHARED = Path(os.environ.get("CHORUS_SHARED_DATA", REPO.parent / "shared" / "data"))
VARIANTS = ("mix_only", "separated_only", "mix_and_separated")

needs_shared = pytest.mark.skipif(
    not (SHARED / "scikit-maad" / "spinetail.txt").is_file(),
    reason=f"real shared data not found at {SHARED} (set CHORUS_SHARED_DATA)",
)


@pytest.fixture(scope="module")
def cli_main() -> Iterator[Callable[[list[str]], int]]:
    """``modeltools.cli.main`` with ``evaluate`` registered (a no-op once the CLI lists it)."""
    from modeltools import cli
    from modeltools.evaluation.cli import add_evaluate, run_evaluate

    mp = pytest.MonkeyPatch()
    if all(run is not run_evaluate for _, run in cli._COMMANDS):
        mp.setattr(cli, "_COMMANDS", [*cli._COMMANDS, (add_evaluate, run_evaluate)])
    yield cli.main
    mp.undo()


def _write_corpus(root: Path, species: list[Species], seeds: list[int], name: str) -> Path:
    """A test-split dataset of 60-s demo soundscapes, segments labelled from their truth."""
    recs, segs = [], []
    for seed in seeds:
        rel = f"soundscapes/test-{seed}.wav"
        scape = write_demo_wav(root / rel, 60.0, seed=seed)
        recs.append(
            Recording(
                id=f"scape-{seed}",
                path=rel,
                split="test",
                kind="soundscape",
                num_samples=len(scape.audio),
                sha256=sha256_file(root / rel),
            )
        )
        known = {s.code for s in species}
        anns = [Annotation(a, b, c) for c, a, b in scape.events if c in known]
        segs += [
            Segment(f"scape-{seed}", s, e, labels)
            for s, e, labels in segment_labels(anns, scape.duration_s)
        ]
    write_dataset(root, name, Taxonomy(species, name=name), recs, segs)
    return root


@pytest.fixture(scope="module")
def demo_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    species = [
        Species(lab.species_code, lab.scientific_name, lab.common_name, lab.genus, lab.family)
        for lab in reversed(demo_labels())
    ]
    return _write_corpus(tmp_path_factory.mktemp("demo-corpus"), species, [0, 1, 2], "demo")


@pytest.fixture(scope="module")
def fake_shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for ../shared/data: a spinetail-style Audacity track and a BirdNET CSV that
    names one demo species (by scientific name) and one real bird."""
    root = tmp_path_factory.mktemp("shared")
    rng = np.random.default_rng(0)
    (root / "scikit-maad").mkdir()
    sf.write(root / "scikit-maad" / "spinetail.wav", 0.01 * rng.standard_normal(44100 * 12), 44100)
    (root / "scikit-maad" / "spinetail.txt").write_text(
        "1.000000\t3.000000\tCRER\n\\\t2500.0\t8800.0\n"
        "6.000000\t6.300000\tSP\n\\\t6000.0\t12000.0\n"
        "10.900000\t11.500000\tCRER\n\\\t2500.0\t8800.0\n"
    )
    folder = root / "demo-birds"
    folder.mkdir()
    x = 0.003 * rng.standard_normal(DEMO_SAMPLE_RATE_HZ * 15)
    call = 0.3 * synthesize_call("dmwhis", 1.5, DEMO_SAMPLE_RATE_HZ, rng)
    x[DEMO_SAMPLE_RATE_HZ : DEMO_SAMPLE_RATE_HZ + len(call)] += call
    sf.write(folder / "calls.wav", x, DEMO_SAMPLE_RATE_HZ)
    (folder / "birdnet-v2.4_detections.csv").write_text(
        "file,start_s,end_s,scientific_name,common_name,confidence\n"
        "calls.wav,0.0,3.0,Synthetica flauta,Demo Whistler (synthetic),0.91\n"
        "calls.wav,6.0,9.0,Turdus merula,Eurasian Blackbird,0.80\n"
        "calls.wav,9.0,12.0,Synthetica flauta,Demo Whistler (synthetic),0.20\n"
    )
    return root


@pytest.fixture(scope="module")
def report(
    cli_main: Callable[[list[str]], int],
    demo_corpus: Path,
    fake_shared: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("eval")
    out, md = root / "out", root / "docs" / "results.md"
    argv = ["-q", "evaluate", "--bundle", str(DEMO_BUNDLE), "--data", str(demo_corpus)]
    argv += ["--out", str(out), "--markdown", str(md), "--threads", "1", "--figures", "2"]
    argv += ["--real", "--shared-data", str(fake_shared)]
    assert cli_main(argv) == 0
    return {
        "out": out,
        "md": md,
        "json": json.loads((out / "results.json").read_text()),
        "csv": list(csv.DictReader((out / "results.csv").open())),
    }


def _entry(result: dict[str, Any], name_part: str) -> dict[str, Any]:
    return next(d for d in result["datasets"] if name_part in d["name"])


def _result(entry: dict[str, Any], source: str, variant: str) -> dict[str, Any]:
    return next(r for r in entry["results"] if r["source"] == source and r["variant"] == variant)


def _num(x: Any) -> float:
    return float(x)  # "NaN" / "Infinity" strings included


# ---------------------------------------------------------------------------------------------
# The demo bundle on the demo corpus


@pytest.mark.needs_tf  # Figure 1's PCEN spectrograms
def test_mix_only_equals_species_metrics_of_the_bundle_run_directly(
    report: dict[str, Any], demo_corpus: Path
) -> None:
    from agent.models.manifest import load_bundle
    from agent.models.stages import RuntimeOptions, load_models
    from modeltools.classifier.evaluate import segment_set, species_metrics
    from modeltools.data.dataset import read_dataset
    from modeltools.evaluation.metrics import dprime_summary

    ds = read_dataset(demo_corpus)
    audio, labels = segment_set([ds], "test")
    clf = load_models(load_bundle(DEMO_BUNDLE), RuntimeOptions(1), use_separator=False)
    stage = clf.classifiers[0]
    logits = np.stack([stage.classify(x[np.newaxis])[0] for x in audio])
    # Corpus columns -> bundle order (the corpus lists the species in reverse).
    space = ds.taxonomy.label_spaces["species"]
    y = labels[:, [space.index(lab.species_code) for lab in stage.labels]]
    zeros = np.zeros((len(y), 1))  # species_metrics drops column 0 ("unknown")
    expected = species_metrics(np.hstack([zeros, logits]), np.hstack([zeros, y]))
    assert not math.isnan(expected["cmap"])  # the comparison is not NaN == NaN

    entry = _entry(report["json"], "demo")
    got = _result(entry, "TFLite bundle", "mix_only")
    assert entry["segments"] == len(audio) and entry["status"] == "scored"
    assert got["cmap"] == pytest.approx(expected["cmap"], abs=1e-12)
    assert got["lwlrap"] == pytest.approx(expected["lwlrap"], abs=1e-12)
    assert got["top1"] == pytest.approx(expected["top1"], abs=1e-12)
    d = dprime_summary(logits, y)
    assert _num(got["dprime"]) == pytest.approx(d["dprime_of_mean_auc"], abs=1e-12)
    per_class = {pc["code"]: pc for pc in got["per_class"]}
    assert set(per_class) == {lab.species_code for lab in stage.labels}
    for j, lab in enumerate(stage.labels):
        assert per_class[lab.species_code]["positives"] == int(y[:, j].sum())


def test_variants_follow_combine_channels(report: dict[str, Any], demo_corpus: Path) -> None:
    from modeltools.evaluation.separate_classify import (
        combined_scores,
        corpus_sets,
        evaluate,
        score,
    )

    sets = corpus_sets([demo_corpus], "test")
    ev = evaluate(DEMO_BUNDLE, sets, threads=1)
    ch = ev.logits[(sets[0].name, "TFLite bundle")]
    assert ch.logits.shape[1] == 5  # the mix + 4 separated channels
    mix = combined_scores(ch, "mix_only")
    sep = combined_scores(ch, "separated_only")
    both = combined_scores(ch, "mix_and_separated")
    np.testing.assert_array_equal(mix, ch.logits[:, 0])
    np.testing.assert_array_equal(sep, ch.logits[:, 1:].max(axis=1))
    np.testing.assert_array_equal(both, ch.logits.max(axis=1))
    assert np.all(both >= mix) and np.all(both >= sep)
    assert np.any(sep != mix) and np.any(both > mix)  # separation changes the scores
    # The report's numbers are these scores, scored over the corpus labels in bundle order.
    space = [c.code for c in sets[0].classes]
    cols = [space.index(c.code) for c in ch.classes]
    entry = _entry(report["json"], "demo")
    for variant, s in (("separated_only", sep), ("mix_and_separated", both)):
        expected = score(s, sets[0].labels[:, cols], [c.code for c in ch.classes])
        got = _result(entry, "TFLite bundle", variant)
        for key in ("cmap", "lwlrap", "top1"):
            assert _num(got[key]) == pytest.approx(expected[key], abs=1e-12)


@pytest.mark.needs_tf
def test_markdown_csv_and_json_agree(report: dict[str, Any]) -> None:
    result, rows = report["json"], report["csv"]
    md = (report["out"] / "report.md").read_text()
    scored = [(d, r) for d in result["datasets"] for r in d["results"]]
    assert len([r for r in rows if r["status"] == "scored"]) == len(scored)
    for d, r in scored:
        row = next(
            x
            for x in rows
            if (x["dataset"], x["source"], x["variant"]) == (d["name"], r["source"], r["variant"])
        )
        cells = [fmt(_num(r[k])) for k in ("cmap", "lwlrap", "dprime", "top1")]
        for k, cell in zip(("cmap", "lwlrap", "dprime", "top1"), cells, strict=True):
            assert fmt(float(row[k])) == cell
        # The dataset's Markdown table has the same row.
        section = md.split(f"## {d['name']}\n", 1)[1].split("\n## ", 1)[0]
        line = f"| {r['source']} | {r['variant_title']} | " + " | ".join(cells) + " |"
        assert line in section
    # Three decimals in the Markdown, full precision in the JSON.
    assert re.search(r"\| \d\.\d{3} \|", md)
    cmap = _result(_entry(result, "demo"), "TFLite bundle", "mix_only")["cmap"]
    assert cmap != round(cmap, 3)


@pytest.mark.needs_tf
def test_figures_are_written_and_linked_from_both_markdown_files(report: dict[str, Any]) -> None:
    figures = report["json"]["figures"]
    kinds = [f["kind"] for f in figures]
    assert kinds.count("separation_example") == 2
    assert {"per_class_ap", "pr_curves"} <= set(kinds)
    for f in figures:
        assert (report["out"] / f["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for md in (report["out"] / "report.md", report["md"]):
        links = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md.read_text())
        assert len(links) == len(figures)
        for link in links:
            assert (md.parent / link).resolve().is_file(), link
    assert "../out/figures/" in report["md"].read_text()


@pytest.mark.needs_tf
def test_real_sets_say_plainly_what_cannot_be_scored(report: dict[str, Any]) -> None:
    result = report["json"]
    spin = _entry(result, "spinetail")
    assert spin["status"] == "not_scored" and spin["results"] == []
    assert "none of the bundle's 6 species" in spin["message"]
    assert "Cranioleuca erythrops" in spin["message"]
    md = report["md"].read_text()
    section = md.split(f"## {spin['name']}\n", 1)[1].split("\n## ", 1)[0]
    assert "**Not scored:**" in section and "| mix only |" not in section
    # BirdNET pseudo-labels share one species with the bundle (by scientific name): scored,
    # and marked as weak labels everywhere.
    bn = _entry(result, "BirdNET")
    assert bn["labels"] == "weak" and bn["status"] == "scored"
    assert bn["scored_species"] == ["Synthetica flauta"]
    assert "Turdus merula" in bn["unscored_species"]
    section = md.split(f"## {bn['name']}\n", 1)[1].split("\n## ", 1)[0]
    assert "**Weak labels.**" in section and "not ground truth" in section
    assert {r["labels"] for r in report["csv"] if r["dataset"] == bn["name"]} == {"weak"}
    assert result["real_data"]["status"] == "found"


def test_a_corpus_sharing_no_species_is_refused(
    cli_main: Callable[[list[str]], int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    species = [
        Species("zzaaa", "Nullus alpha", "Alpha", "Nullus"),
        Species("zzbbb", "Nullus beta", "Beta", "Nullus"),
    ]
    corpus = _write_corpus(tmp_path / "corpus", species, [0], "other")
    out = tmp_path / "out"
    argv = ["evaluate", "--bundle", str(DEMO_BUNDLE), "--data", str(corpus), "--out", str(out)]
    assert cli_main([*argv, "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("chorus-models: error: ")
    assert "none of the bundle's 6 species" in err[0] and "nothing can be scored" in err[0]
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Real-data parsing


def test_real_sets_parse_audacity_boxes_and_birdnet_rows(fake_shared: Path) -> None:
    from modeltools.evaluation.real import real_sets

    spin, bn = real_sets(fake_shared, min_confidence=0.5)
    # 12 s -> segments 0-5, 5-10, 10-12 (a 2-s tail is dropped: shorter than 2.5 s).
    assert spin.segment_names == ("spinetail.wav @ 0.0 s", "spinetail.wav @ 5.0 s")
    assert [c.code for c in spin.classes] == ["CRER"]
    assert spin.labels[:, 0].tolist() == [True, False]  # SP (5-10 s) names no species
    assert any("'SP'" in n and "not scored" in n for n in spin.notes)
    assert spin.audio().shape == (2, 110250)
    assert bn.label_kind == "weak" and "not ground truth" in bn.label_source
    assert [c.code for c in bn.classes] == ["Synthetica flauta", "Turdus merula"]
    # 15 s: 0-5 has the confident whistler chunk, 5-10 the blackbird (6-9 s); the 0.2
    # whistler row (9-12 s) is below the threshold, so 10-15 s has no label.
    assert bn.labels.tolist() == [[True, False], [False, True], [False, False]]
    assert real_sets(fake_shared, min_confidence=0.1)[1].labels[2].tolist() == [True, False]


@pytest.mark.needs_shared_data
@needs_shared
def test_the_real_spinetail_annotation() -> None:
    from modeltools.evaluation.real import spinetail_set

    spin = spinetail_set(SHARED)
    assert len(spin.segment_names) == 4  # 19.5 s: three 5-s segments and a 4.5-s tail
    assert spin.labels[:, 0].tolist() == [True, True, True, True]  # four CRER songs
    assert any(n.startswith("14 short calls") for n in spin.notes)


# ---------------------------------------------------------------------------------------------
# Keras rows, Tables 1 and 3: tiny trained runs and their exported bundle


@pytest.fixture(scope="module")
def runs(
    cli_main: Callable[[list[str]], int], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    pytest.importorskip("tensorflow")
    root = tmp_path_factory.mktemp("runs")
    corpus = root / "corpus"
    args = ["--species", "3", "--other-species", "1", "--focal-per-species", "2", "1"]
    args += ["--focal-per-other", "1", "0", "--soundscapes", "1", "1", "2"]
    args += ["--soundscape-s", "30", "--noise-clips", "1", "1", "--noise-clip-s", "10"]
    args += ["--no-real-noise", "--workers", "1"]
    assert cli_main(["-q", "synth", "--out", str(corpus), *args]) == 0
    sep, cls, bundle = root / "sep", root / "cls", root / "bundle"
    common = ["--data", str(corpus), "--threads", "1"]
    sep_args = ["--preset", "tiny", "--out", str(sep), "--steps", "2", "--val-examples", "0"]
    assert cli_main(["-q", "train-separator", *sep_args, *common]) == 0
    cls_args = ["--preset", "tiny", "--out", str(cls), "--members", "2", "--steps", "2"]
    assert cli_main(["-q", "train-classifier", *cls_args, "--no-progress", *common]) == 0
    exp = ["--separator", str(sep), "--classifier", str(cls), "--out", str(bundle)]
    exp += ["--flavours", "float32", "--separator-flavour", "float32"]
    exp += ["--classifier-flavour", "float32", "--representative", "4"]
    exp += ["--eval-moms", "2", "--eval-segments", "6"]
    assert cli_main(["-q", "export", *exp, *common]) == 0
    return {"corpus": corpus, "sep": sep, "cls": cls, "bundle": bundle}


@pytest.mark.slow
@pytest.mark.needs_tf
def test_keras_rows_and_tables_1_and_3(
    cli_main: Callable[[list[str]], int], runs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    argv = ["-q", "evaluate", "--bundle", str(runs["bundle"]), "--data", str(runs["corpus"])]
    argv += ["--out", str(out), "--threads", "1", "--no-plots", "--limit", "6"]
    argv += ["--classifier", str(runs["cls"]), "--separator", str(runs["sep"])]
    argv += ["--separator-variant", str(runs["sep"]), "--moms", "2"]
    argv += ["--ablation", str(runs["cls"] / "member-0")]
    assert cli_main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    entry = result["datasets"][0]
    assert entry["segments"] == 6
    pairs = {(r["source"], r["variant"]) for r in entry["results"]}
    assert pairs == {(s, v) for s in ("TFLite bundle", "Keras") for v in VARIANTS}
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["source"] for r in rows} == {"TFLite bundle", "Keras"}
    md = (out / "report.md").read_text()
    assert "| Keras | mix + separation |" in md
    assert "## Separator variants (Table 1)" in md and "## Classifier ablations (Table 3" in md
    (t1,) = result["separator_variants"]
    assert t1["preset"] == "tiny" and t1["moms"] == 2 and math.isfinite(t1["momi_16k_db"])
    (t3,) = result["classifier_ablations"]
    assert t3["members"] == 1 and t3["lowpass"] is True
    assert (out / "separator_variants.csv").is_file()
    assert (out / "classifier_ablations.csv").is_file()


@pytest.mark.slow
@pytest.mark.needs_tf
def test_keras_channels_match_the_float32_bundle(runs: dict[str, Path]) -> None:
    """Same channels, same gain, same classifier: the float32 bundle and the Keras runs give the
    same channels and per-channel logits (a wrong per-window gain or channel order would not).
    The tiny 2-step classifier is nearly input-independent, so the channels are compared too."""
    from modeltools.evaluation.separate_classify import (
        corpus_sets,
        evaluate,
        keras_channels,
        load_keras,
    )

    sets = corpus_sets([runs["corpus"]], "test", limit=3)
    ev = evaluate(
        runs["bundle"],
        sets,
        classifier_runs=[runs["cls"]],
        separator_run=runs["sep"],
        threads=1,
    )
    tfl = ev.logits[(sets[0].name, "TFLite bundle")].logits
    ker = ev.logits[(sets[0].name, "Keras")].logits
    assert tfl.shape == ker.shape == (3, 5, 4)
    np.testing.assert_allclose(ker, tfl, atol=2e-3)
    # The channels themselves: the agent's Separator.separate vs the Keras path.
    km = load_keras([runs["cls"]], runs["sep"], input_peak=0.5)
    audio = sets[0].audio()
    keras_ch = keras_channels(km, audio)
    sep = ev.models.separator
    assert sep is not None and sep.spec.input_peak == 0.5
    for x, ch in zip(audio, keras_ch, strict=True):
        agent_ch = np.concatenate([x[np.newaxis], sep.separate(x)])
        err = np.sum((agent_ch - ch) ** 2) / np.sum(agent_ch**2)
        assert err < 1e-6  # > 60 dB SNR
    # Without the per-window gain the separator sees other levels and gives other channels.
    km.input_peak = None
    raw = keras_channels(km, audio)
    assert np.abs(raw[:, 1:] - keras_ch[:, 1:]).max() > 1e-3 * np.abs(keras_ch[:, 1:]).max()
