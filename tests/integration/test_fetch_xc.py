"""``fetch-xc`` against a local HTTP server speaking the Xeno-Canto API v3 format.

Never the real site: the server below (http.server in a thread on 127.0.0.1) answers
``/api/3/recordings`` with responses in the recorded v3 format and serves small WAV files,
failing on purpose where a test needs retries. Time is faked (the client's ``sleep`` and
``clock``), so rate limiting and back-off are checked without waiting.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from modeltools.cli import main
from modeltools.data.dataset import read_dataset
from modeltools.data.ingest import ingest
from modeltools.data.xeno_canto import (
    FetchOptions,
    PoliteClient,
    XenoCantoError,
    fetch,
    select,
)

KEY = "sekret-key-123"


def _wav_bytes(seed: int) -> bytes:
    x = 0.2 * np.sin(np.arange(44100) * 2 * np.pi * (2000 + 100 * seed) / 44100)
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), 44100, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _rec(base: str, xc_id: int, gen: str, sp: str, q: str, also: list[str], file: bool = True):
    """A recording object in the API v3 format."""
    return {
        "id": str(xc_id),
        "gen": gen,
        "sp": sp,
        "ssp": "",
        "grp": "birds",
        "en": f"{gen} {sp} (en)",
        "rec": "Test Recordist",
        "cnt": "United States",
        "loc": "Somewhere",
        "lat": "44.0",
        "lon": "-93.0",
        "alt": "300",
        "type": "song",
        "sex": "",
        "stage": "",
        "method": "field recording",
        "url": f"//xeno-canto.org/{xc_id}",
        "file": f"{base}/{xc_id}/download" if file else "",
        "file-name": f"XC{xc_id}-test.wav",
        "sono": {"small": "", "med": "", "large": "", "full": None},
        "osci": {"small": None, "med": None, "large": None},
        "lic": "//creativecommons.org/licenses/by-nc-sa/4.0/",
        "q": q,
        "length": "0:01",
        "time": "06:00",
        "date": "2020-05-01",
        "uploaded": "2020-05-02",
        "also": also,
        "rmk": "",
        "animal-seen": "yes",
        "playback-used": "no",
        "temp": "",
        "regnr": "",
        "auto": "no",
        "dvc": "",
        "mic": "",
        "smp": "44100",
    }


class XCServer:
    """The fake API: two species (one with two result pages) and their audio."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.log: list[tuple[float, str]] = []
        self.fail: dict[str, list[int]] = {}  # path -> status codes to answer first
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        b = self.base
        self.pages = {
            "Vermivora chrysoptera": [
                [
                    _rec(b, 1, "Vermivora", "chrysoptera", "B", []),
                    _rec(b, 2, "Vermivora", "chrysoptera", "A", ["Vireo olivaceus"]),
                    _rec(b, 3, "Vermivora", "chrysoptera", "C", []),
                ],
                [
                    _rec(b, 4, "Vermivora", "chrysoptera", "A", []),
                    _rec(b, 5, "Vermivora", "chrysoptera", "no score", []),
                    _rec(b, 6, "Vermivora", "chrysoptera", "A", ["X y"], file=False),
                ],
            ],
            "Vireo olivaceus": [
                [
                    _rec(b, 10, "Vireo", "olivaceus", "A", []),
                    _rec(b, 11, "Vireo", "olivaceus", "A", ["Vermivora chrysoptera"]),
                ],
            ],
        }
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, code: int, body: bytes, ctype: str, headers: dict | None = None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                server.log.append((server.clock.now, self.path))
                queue = server.fail.get(url.path)
                if queue:
                    code = queue.pop(0)
                    headers = {"Retry-After": "7"} if code == 429 else {}
                    return self._send(code, b"busy", "text/plain", headers)
                if url.path == "/api/3/recordings":
                    q = urllib.parse.parse_qs(url.query)
                    if q.get("key") != [KEY]:
                        body = {
                            "error": "client_error",
                            "message": "Missing or invalid 'key' "
                            "parameter. Visit https://xeno-canto.org/account",
                        }
                        return self._send(401, json.dumps(body).encode(), "application/json")
                    species = q["query"][0].split('"')[1]
                    pages = server.pages.get(species, [[]])
                    page = int(q.get("page", ["1"])[0])
                    body = {
                        "numRecordings": str(sum(map(len, pages))),
                        "numSpecies": "1",
                        "page": page,
                        "numPages": len(pages),
                        "recordings": pages[page - 1],
                    }
                    return self._send(200, json.dumps(body).encode(), "application/json")
                parts = url.path.strip("/").split("/")
                if len(parts) == 2 and parts[1] == "download":
                    return self._send(200, _wav_bytes(int(parts[0])), "audio/wav")
                return self._send(404, b"not found", "text/plain")

        return Handler

    def requests(self, prefix: str = "") -> list[str]:
        return [p for _, p in self.log if p.startswith(prefix)]


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def xc(fake_time: FakeTime) -> Iterator[XCServer]:
    server = XCServer(fake_time)
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def _client(fake_time: FakeTime, retries: int = 5) -> PoliteClient:
    return PoliteClient(
        min_interval_s=1.0,
        retries=retries,
        backoff_s=2.0,
        sleep=fake_time.sleep,
        clock=fake_time.clock,
    )


def _opts(xc: XCServer, **kw: Any) -> FetchOptions:
    kw = {"max_per_species": 3, "min_quality": "B", **kw}
    return FetchOptions(api_key=KEY, api_url=f"{xc.base}/api/3/recordings", **kw)


SPECIES = ["Vermivora chrysoptera", "Vireo olivaceus"]


def test_fetch_prefers_rated_recordings_with_background_and_is_polite(
    xc: XCServer, fake_time: FakeTime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    xc.fail = {"/4/download": [503, 503], "/10/download": [429]}
    n, skips = fetch(SPECIES, tmp_path, _opts(xc), _client(fake_time))
    assert n == 5 and len(skips) == 0
    with (tmp_path / "metadata.csv").open() as f:
        import csv

        rows = list(csv.DictReader(f))
    assert sorted(int(r["xc_id"]) for r in rows) == [1, 2, 4, 10, 11]
    # The order of preference: A with background first, then A, then B; C, "no score" and
    # recordings without a file never.
    recs = [r for page in xc.pages["Vermivora chrysoptera"] for r in page]
    assert [r["id"] for r in select(recs, _opts(xc, max_per_species=10))] == ["2", "4", "1"]
    assert [r["id"] for r in select(recs, _opts(xc, max_per_species=2))] == ["2", "4"]
    assert [r["id"] for r in select(recs, _opts(xc, min_quality="C"))] == ["2", "4", "1"]
    assert [r["id"] for r in select(recs, _opts(xc, min_quality="E", max_per_species=9))] == [
        "2",
        "4",
        "1",
        "3",
    ]
    r2 = next(r for r in rows if r["xc_id"] == "2")
    assert r2["file"] == "audio/Vermivora_chrysoptera/XC2.wav"
    assert (
        r2["background"] == "Vireo olivaceus" and r2["scientific_name"] == "Vermivora chrysoptera"
    )
    assert r2["licence"] == "https://creativecommons.org/licenses/by-nc-sa/4.0/"
    for r in rows:
        assert sf.info(tmp_path / r["file"]).samplerate == 44100
    assert not list(tmp_path.rglob("*.part"))
    # Both result pages of the first species were read, one of the second.
    api = xc.requests("/api/3/recordings")
    assert len(api) == 3 and sum("page=2" in p for p in api) == 1
    # Retries: two 503s with back-off 2 s then 4 s; a 429 honours Retry-After: 7.
    assert xc.requests("/4/download") == ["/4/download"] * 3
    assert 2.0 in fake_time.sleeps and 4.0 in fake_time.sleeps and 7.0 in fake_time.sleeps
    # Rate limit: consecutive requests at least 1 s apart (on the fake clock).
    times = [t for t, _ in xc.log]
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(times))
    assert KEY not in caplog.text


def test_rerun_resumes_without_requests_and_repairs_missing_files(
    xc: XCServer, fake_time: FakeTime, tmp_path: Path
) -> None:
    fetch(SPECIES, tmp_path, _opts(xc), _client(fake_time))
    before = len(xc.log)
    fetch(SPECIES, tmp_path, _opts(xc), _client(fake_time))
    assert len(xc.log) == before  # searches journalled, files present: nothing to ask
    target = tmp_path / "audio/Vireo_olivaceus/XC10.wav"
    target.unlink()
    target.with_name("XC10.wav.part").write_bytes(b"half a download")
    n, _ = fetch(SPECIES, tmp_path, _opts(xc), _client(fake_time))
    assert xc.requests()[before:] == ["/10/download"]
    assert n == 5 and target.is_file() and not target.with_name("XC10.wav.part").exists()


def test_a_download_that_keeps_failing_is_skipped(
    xc: XCServer, fake_time: FakeTime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    xc.fail = {"/1/download": [503] * 10}
    caplog.set_level(logging.WARNING)
    n, skips = fetch(SPECIES, tmp_path, _opts(xc), _client(fake_time, retries=2))
    assert n == 4 and skips.counts == {"download failed": 1}
    assert xc.requests("/1/download") == ["/1/download"] * 3  # first try + 2 retries
    assert sum("XC1:" in r.getMessage() for r in caplog.records) == 1


def test_bad_key_is_one_clear_line_without_the_key(
    xc: XCServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rc = main(
        [
            "fetch-xc",
            "--species",
            "Vermivora chrysoptera",
            "--api-key",
            "wrong-key-987",
            "--out",
            str(tmp_path),
            "--api-url",
            f"{xc.base}/api/3/recordings",
            "--rate-limit-s",
            "0",
            "--retries",
            "0",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HTTP 401" in err[0] and "check --api-key" in err[0]
    assert "wrong-key-987" not in err[0]
    with pytest.raises(XenoCantoError, match="API key is required"):
        fetch(SPECIES, tmp_path, FetchOptions(api_key=""))


def test_cli_fetch_then_ingest(xc: XCServer, tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "xc"
    rc = main(
        [
            "fetch-xc",
            "--species",
            *SPECIES,
            "--api-key",
            KEY,
            "--out",
            str(out),
            "--api-url",
            f"{xc.base}/api/3/recordings",
            "--rate-limit-s",
            "0",
            "--max-per-species",
            "2",
            "--min-quality",
            "A",
        ]
    )
    assert rc == 0 and "4 recordings written" in capsys.readouterr().out
    res = ingest(out, tmp_path / "ds")  # metadata.csv is found next to the audio
    ds = read_dataset(res.root)
    by_xc = {r.meta["xc_id"]: r for r in ds.recordings}
    assert set(by_xc) == {"2", "4", "10", "11"}
    assert by_xc["2"].primary == ("vermivora_chrysoptera",)
    assert by_xc["2"].background == ("vireo_olivaceus",)
    assert by_xc["11"].background == ("vermivora_chrysoptera",)
    assert all(r.kind == "focal" and r.sample_rate_hz == 22050 for r in ds.recordings)
