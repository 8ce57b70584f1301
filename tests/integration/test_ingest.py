"""``chorus-models ingest``: formats, labels, annotations, bad input, re-runs, shared data."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from modeltools.cli import main
from modeltools.data.agreement import compare, read_detections
from modeltools.data.annotations import read_raven
from modeltools.data.dataset import read_dataset
from modeltools.data.ingest import IngestError, IngestOptions, ingest
from modeltools.data.windows import windows_for_dataset

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CHORUS_SHARED_DATA", REPO.parent / "shared" / "data"))
KNOWN = REPO / "modeltools" / "data" / "known"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared data folder {SHARED} is absent (../shared/data)"
)

TAXONOMY = """species_code,scientific_name,common_name,genus,family,order
gowwar,Vermivora chrysoptera,Golden-winged Warbler,Vermivora,Parulidae,Passeriformes
buwwar,Vermivora cyanoptera,Blue-winged Warbler,Vermivora,Parulidae,Passeriformes
reevir1,Vireo olivaceus,Red-eyed Vireo,Vireo,Vireonidae,Passeriformes
"""


def tone(seconds: float, rate: int, channels: int = 1, f: float = 3000.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * f * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def write(path: Path, x: np.ndarray, rate: int, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), rate, **kw)
    return path


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    write(src / "a.wav", tone(2.0, 44100, 2), 44100, subtype="PCM_16")
    write(src / "b.flac", tone(1.5, 48000), 48000)
    write(src / "sub/c.ogg", tone(1.2, 32000), 32000, format="OGG", subtype="VORBIS")
    write(src / "d.mp3", tone(2.5, 44100), 44100, format="MP3", subtype="MPEG_LAYER_III")
    (src / "metadata.csv").write_text(
        "file,scientific_name,common_name,background,q,lic\n"
        "a.wav,Vermivora chrysoptera,Golden-winged Warbler,Vireo olivaceus,A,//cc/by\n"
        "b.flac,Vermivora cyanoptera,Blue-winged Warbler,,B,\n"
        "sub/c.ogg,Vireo olivaceus,Red-eyed Vireo,Vermivora chrysoptera;Vermivora cyanoptera,C,\n"
        "d.mp3,Vermivora chrysoptera,Golden-winged Warbler,,A,\n",
        encoding="utf-8",
    )
    (tmp_path / "taxonomy.csv").write_text(TAXONOMY, encoding="utf-8")
    return src


def test_ingest_decodes_every_format_and_maps_labels(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert (
        main(
            ["ingest", str(source), "--out", str(out), "--taxonomy", str(tmp_path / "taxonomy.csv")]
        )
        == 0
    )
    ds = read_dataset(out)
    recs = {r.id: r for r in ds.recordings}
    assert set(recs) == {"a.wav", "b.flac", "sub/c.ogg", "d.mp3"}
    expected_s = {"a.wav": 2.0, "b.flac": 1.5, "sub/c.ogg": 1.2, "d.mp3": 2.5}
    for rid, rec in recs.items():
        info = sf.info(out / rec.path)
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
        assert rec.duration_s == pytest.approx(expected_s[rid], abs=0.06)
        assert rec.kind == "focal" and rec.split == "train"
        from modeltools.data.audio_io import sha256_file

        assert rec.sha256 == sha256_file(out / rec.path)
        assert rec.meta["source_sha256"] == sha256_file(source / rid)
    assert recs["a.wav"].primary == ("gowwar",) and recs["a.wav"].background == ("reevir1",)
    assert recs["sub/c.ogg"].background == ("gowwar", "buwwar")
    assert recs["a.wav"].meta["rating"] == "A" and recs["a.wav"].meta["licence"] == "//cc/by"
    assert recs["a.wav"].meta["source_channels"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["taxonomy"]["version"] == ds.taxonomy.version
    assert manifest["sample_rate_hz"] == 22050
    assert (out / "manifest.csv").read_text().count("\n") == 5


def test_without_taxonomy_one_is_derived_from_the_labels(source: Path, tmp_path: Path) -> None:
    res = ingest(source, tmp_path / "ds")
    tax = read_dataset(res.root).taxonomy
    code = "vermivora_chrysoptera"
    assert tax[code].genus == "Vermivora" and tax[code].common_name == "Golden-winged Warbler"
    assert {s.role for s in tax.species} == {"target"}  # every species is somebody's primary


def test_bad_input_is_skipped_with_one_warning_each(
    source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wav = (source / "a.wav").read_bytes()
    (source / "trunc.wav").write_bytes(wav[: len(wav) // 2])
    mp3 = (source / "d.mp3").read_bytes()
    (source / "trunc.mp3").write_bytes(mp3[: len(mp3) // 3])
    (source / "empty.wav").write_bytes(b"")
    (source / "garbage.flac").write_bytes(os.urandom(5000))
    write(source / "lowrate.wav", tone(1.0, 4000, f=1000), 4000)
    write(source / "unknown_sp.wav", tone(1.0, 22050), 22050)
    write(source / "soundscape.wav", tone(6.0, 22050), 22050)
    (source / "soundscape.txt").write_text("not an annotation file\n")
    with (source / "metadata.csv").open("a", encoding="utf-8") as f:
        f.write("trunc.wav,Vermivora chrysoptera,,,,\n")
        f.write("trunc.mp3,Vermivora chrysoptera,,,,\n")
        f.write("empty.wav,Vermivora chrysoptera,,,,\n")
        f.write("garbage.flac,Vermivora chrysoptera,,,,\n")
        f.write("lowrate.wav,Vermivora chrysoptera,,,,\n")
        f.write("unknown_sp.wav,Turdus merula,,,,\n")
        f.write("missing.wav,Vermivora chrysoptera,,,,\n")
        f.write(",Vermivora chrysoptera,,,,\n")
    caplog.set_level(logging.WARNING)
    res = ingest(source, tmp_path / "ds", IngestOptions(taxonomy=tmp_path / "taxonomy.csv"))
    assert res.written == 4  # the four good files, untouched by the bad ones
    bad = [
        "trunc.wav",
        "trunc.mp3",
        "empty.wav",
        "garbage.flac",
        "lowrate.wav",
        "unknown_sp.wav",
        "missing.wav",
        "soundscape.txt",
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name in bad:
        assert sum(name in w for w in warnings) == 1, (name, warnings)
    assert sum("empty file column" in w for w in warnings) == 1
    assert len(warnings) == 9
    assert res.skips.counts == {
        "unreadable audio": 5,
        "unknown species": 1,
        "missing audio": 1,
        "metadata row without file": 1,
        "bad annotation file": 1,
    }
    assert "truncated" in next(w for w in warnings if "trunc.wav" in w)
    assert "truncated" in next(w for w in warnings if "trunc.mp3" in w)
    assert "4000 Hz" in next(w for w in warnings if "lowrate.wav" in w)
    ds = read_dataset(res.root)
    assert {r.id for r in ds.recordings} == {"a.wav", "b.flac", "sub/c.ogg", "d.mp3"}


def test_cli_reports_missing_metadata_columns_in_one_line(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (source / "metadata.csv").write_text("name,rating\na.wav,A\n", encoding="utf-8")
    assert main(["ingest", str(source), "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing column(s): file; species_code or scientific_name" in err[0]


def test_rerun_is_idempotent_and_does_not_decode_again(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    ingest(source, out)
    wavs = sorted((out / "audio").rglob("*.wav"))
    stamps = {p: p.stat().st_mtime_ns for p in wavs}
    first = json.loads((out / "manifest.json").read_text())
    res = ingest(source, out)
    assert res.written == 4
    assert {p: p.stat().st_mtime_ns for p in wavs} == stamps  # nothing rewritten
    second = json.loads((out / "manifest.json").read_text())
    first.pop("created_utc"), second.pop("created_utc")
    assert first == second
    (source / "b.flac").unlink()  # a source that went away drops out of the manifest
    write(source / "e.wav", tone(1.0, 16000), 16000)
    res = ingest(source, out)
    ids = {r.id: r.kind for r in res.recordings}
    assert "b.flac" not in ids and ids["e.wav"] == "unlabelled"


def test_species_folder_layout(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "Vermivora chrysoptera/x1.wav", tone(1.0, 22050), 22050)
    write(src / "reevir1/x2.wav", tone(1.0, 22050), 22050)
    write(src / "Turdus merula/x3.wav", tone(1.0, 22050), 22050)
    write(src / "loose.wav", tone(1.0, 22050), 22050)
    (tmp_path / "taxonomy.csv").write_text(TAXONOMY, encoding="utf-8")
    res = ingest(
        src,
        tmp_path / "ds",
        IngestOptions(layout="species-folders", taxonomy=tmp_path / "taxonomy.csv"),
    )
    got = {r.id: (r.kind, r.primary) for r in res.recordings}
    assert got == {
        "Vermivora chrysoptera/x1.wav": ("focal", ("gowwar",)),
        "reevir1/x2.wav": ("focal", ("reevir1",)),
        "loose.wav": ("unlabelled", ()),
    }
    assert res.skips.counts == {"unknown species": 1}


RAVEN = (
    "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\t"
    "Species\n"
    "1\tWaveform 1\t1\t1.0\t2.0\t\t\tgowwar\n"
    "1\tSpectrogram 1\t1\t1.0\t2.0\t2000\t6000\tgowwar\n"
    "2\tSpectrogram 1\t1\t4.9\t7.0\t2000\t6000\treevir1\n"
    "3\tSpectrogram 1\t1\t9.95\t10.6\t2000\t6000\tXXXX\n"
)


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".selections.txt", RAVEN),
        (".csv", "start_s,end_s,label\n1.0,2.0,gowwar\n4.9,7.0,reevir1\n9.95,10.6,XXXX\n"),
        (".txt", "1.0\t2.0\tgowwar\n\\\t2000\t6000\n4.9\t7.0\treevir1\n9.95\t10.6\tXXXX\n"),
    ],
)
def test_annotated_soundscapes_become_5s_segments(
    tmp_path: Path, suffix: str, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    write(src / "dawn.wav", tone(12.6, 22050), 22050)
    (src / f"dawn{suffix}").write_text(text, encoding="utf-8")
    (tmp_path / "taxonomy.csv").write_text(TAXONOMY, encoding="utf-8")
    caplog.set_level(logging.WARNING)
    res = ingest(src, tmp_path / "ds", IngestOptions(taxonomy=tmp_path / "taxonomy.csv"))
    ds = read_dataset(res.root)
    (rec,) = ds.recordings
    assert rec.kind == "soundscape" and "csv" in rec.annotations
    segs = [(s.start_s, s.end_s, s.labels, s.unknown_labels) for s in ds.segments]
    assert segs == [
        (0.0, 5.0, ("gowwar",), ()),  # reevir1 overlaps 0.1 s only: below both rules
        (5.0, 10.0, ("reevir1",), ()),  # XXXX overlaps 0.05 s of 0.65 s: not counted
        (10.0, 12.6, (), ("XXXX",)),  # the unknown label is flagged, not dropped silently
    ]
    assert sum("XXXX" in r.getMessage() for r in caplog.records) == 1


# ---------------------------------------------------------------------------------------------
# The real recordings in ../shared/data


@needs_shared
@pytest.mark.needs_shared_data
def test_ingest_shared_xeno_canto_with_known_metadata(tmp_path: Path) -> None:
    res = ingest(
        SHARED / "xeno-canto",
        tmp_path / "xc",
        IngestOptions(
            metadata=KNOWN / "xeno-canto-shared.csv",
            taxonomy=KNOWN / "xeno-canto-shared-taxonomy.csv",
            split="test",  # evaluation-only audio (REAL-AUDIO.md): the test split only
        ),
    )
    recs = {r.id: r for r in res.recordings}
    assert res.written == 4 and len(res.skips) == 0
    gwwa = [r for r in recs.values() if r.primary == ("gowwar",)]
    assert len(gwwa) == 3 and all(r.kind == "focal" for r in gwwa)
    assert recs["XC13738_golden-winged-warbler.mp3"].background == ("reevir1", "chswar")
    scape = recs["XC563936_soundscape.mp3"]
    assert scape.kind == "unlabelled" and "daejun" in scape.background
    assert recs["XC13738_golden-winged-warbler.mp3"].duration_s == pytest.approx(54.83, abs=0.05)


@needs_shared
@pytest.mark.needs_shared_data
def test_activity_on_golden_winged_warbler_agrees_with_birdnet(tmp_path: Path) -> None:
    res = ingest(
        SHARED / "xeno-canto",
        tmp_path / "xc",
        IngestOptions(metadata=KNOWN / "xeno-canto-shared.csv", split="test"),
    )
    windows, skips = windows_for_dataset(read_dataset(res.root), ("focal",))
    assert len(skips) == 0 and 3 <= len(windows) <= 15
    det = read_detections(
        SHARED / "xeno-canto" / "birdnet-v2.4_detections.csv", "Vermivora chrysoptera", 0.5
    )
    agreement = compare(windows, det)
    assert agreement.precision >= 0.8, agreement.summary()
    assert agreement.per_file["XC13738_golden-winged-warbler"][1] == 5


@needs_shared
@pytest.mark.needs_shared_data
def test_ingest_shared_scikit_maad(tmp_path: Path) -> None:
    res = ingest(SHARED / "scikit-maad", tmp_path / "maad")
    ds = read_dataset(res.root)
    kinds = [r.kind for r in ds.recordings]
    assert kinds.count("soundscape") == 1 and kinds.count("unlabelled") == 96
    segs = [s for s in ds.segments if s.recording_id == "spinetail.wav"]
    assert [(s.start_s, s.end_s) for s in segs] == [
        (0, 5),
        (5, 10),
        (10, 15),
        (15, pytest.approx(19.54, abs=0.01)),
    ]
    assert all("CRER" in s.labels for s in segs)  # four long spinetail songs, one per segment


@needs_shared
@pytest.mark.needs_shared_data
def test_raven_reader_on_a_real_selection_table() -> None:
    anns = read_raven(
        SHARED
        / "opensoundscape-tests/annotations/MSD-0003_20180427_2minstart00.Table.1.selections.txt"
    )
    assert {a.label for a in anns} >= {"WOTH", "EATO"}
    assert all(a.end_s > a.start_s and a.high_freq_hz > a.low_freq_hz for a in anns)


def test_ingest_refuses_a_folder_without_audio(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(IngestError, match="no audio files"):
        ingest(tmp_path, tmp_path / "out")


def test_activity_cli_on_loose_files_and_on_a_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for k, centres in enumerate(([4.0, 11.0], [3.0, 9.0, 15.0])):
        x = 0.003 * rng.standard_normal(18 * 22050)
        for c in centres:
            seg = tone(1.5, 22050, f=3000 + 500 * k) * np.hanning(int(1.5 * 22050))
            start = int((c - 0.75) * 22050)
            x[start : start + seg.shape[0]] += seg
        write(src / f"song{k}.wav", x, 22050)
    (src / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    out = tmp_path / "w.csv"
    assert main(["activity", str(src), "--out", str(out)]) == 0
    assert "5 windows from 2 recordings, 1 skipped" in capsys.readouterr().out
    from modeltools.data.windows import read_windows_csv

    peaks = sorted(round(w.peak_sample / 22050) for w in read_windows_csv(out))
    assert peaks == [3, 4, 9, 11, 15]
    assert main(["activity", str(src / "song0.wav")]) == 2  # loose files need --out
    # On a dataset: windows.csv lands in the dataset folder.
    (src / "broken.wav").unlink()
    (src / "metadata.csv").write_text(
        "file,species_code\nsong0.wav,aaa\nsong1.wav,bbb\n", encoding="utf-8"
    )
    ingest(src, tmp_path / "ds")
    assert main(["activity", str(tmp_path / "ds")]) == 0
    assert len(read_windows_csv(tmp_path / "ds" / "windows.csv")) == 5


def test_a_folder_of_unlabelled_noise(tmp_path: Path) -> None:
    write(tmp_path / "src/rain.wav", tone(2.0, 24000), 24000)
    write(tmp_path / "src/wind.flac", tone(2.0, 16000), 16000)
    assert (
        main(
            [
                "ingest",
                str(tmp_path / "src"),
                "--out",
                str(tmp_path / "ds"),
                "--kind",
                "noise",
                "--split",
                "test",
            ]
        )
        == 0
    )
    ds = read_dataset(tmp_path / "ds")
    assert [(r.kind, r.split) for r in ds.recordings] == [("noise", "test")] * 2
    assert len(ds.taxonomy) == 0
