"""``chorus-models fetch-xc``: download Xeno-Canto recordings for ``ingest``.

Uses the public API v3 (``GET /api/3/recordings?query=sp:"Genus species"&key=...&page=N``; a
key is required). For each species it pages through the results, keeps recordings at or above
``min_quality`` and prefers -- like the paper -- high-rated ones that list background species
(``also``), then downloads up to ``max_per_species`` of them and writes ``metadata.csv`` in
the format ``ingest`` reads (``background`` = XC's ``also``, ``rating`` = ``q``, ``licence``
= ``lic``).

Polite and resumable: at most one request per ``min_interval_s``; retries with exponential
back-off (honouring ``Retry-After``) on 429, 5xx and network errors; downloads go to a
``.part`` file renamed when complete, so a re-run skips finished files and species. The API key
never appears in logs or errors.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ChorusError
from modeltools.data.jobs import Journal, SkipLog, progress
from modeltools.data.taxonomy import atomic_write_text

log = logging.getLogger(__name__)

API_URL = "https://xeno-canto.org/api/3/recordings"
QUALITIES = ("A", "B", "C", "D", "E")
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
METADATA_COLUMNS = (
    "file",
    "xc_id",
    "scientific_name",
    "common_name",
    "background",
    "rating",
    "licence",
    "recordist",
    "type",
    "length",
    "country",
    "url",
)
USER_AGENT = "chorus-models-fetch-xc/1 (+bird sound separation research)"


class XenoCantoError(ChorusError):
    exit_code = 2


def quality_rank(q: str) -> int:
    """0 for A ... 4 for E; 5 for "no score" or anything else."""
    q = (q or "").strip().upper()
    return QUALITIES.index(q) if q in QUALITIES else len(QUALITIES)


class PoliteClient:
    """HTTP GET with a minimum interval between requests and retries with back-off."""

    def __init__(
        self,
        min_interval_s: float = 1.0,
        retries: int = 5,
        backoff_s: float = 2.0,
        max_backoff_s: float = 120.0,
        timeout_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        secrets: Sequence[str] = (),
    ) -> None:
        self.min_interval_s = min_interval_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.sleep, self.clock = sleep, clock
        self.secrets = [s for s in secrets if s]
        self._last: float | None = None
        self.requests = 0

    def redact(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***").replace(urllib.parse.quote(s), "***")
        return text

    def _wait_turn(self) -> None:
        if self._last is not None:
            wait = self._last + self.min_interval_s - self.clock()
            if wait > 0:
                self.sleep(wait)
        self._last = self.clock()

    def get(self, url: str, sink: Path | None = None) -> bytes:
        """Body of ``url`` (or stream it into ``sink``, returning b""). Raises XenoCantoError."""
        attempt = 0
        while True:
            self._wait_turn()
            self.requests += 1
            try:
                req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    if sink is None:
                        return bytes(resp.read())
                    with sink.open("wb") as f:
                        while chunk := resp.read(1 << 16):
                            f.write(chunk)
                    return b""
            except urllib.error.HTTPError as exc:
                body = exc.read()[:2000].decode("utf-8", "replace")
                if exc.code not in RETRY_STATUS or attempt >= self.retries:
                    raise XenoCantoError(self._describe(url, exc.code, body)) from None
                delay = self._retry_after(exc.headers.get("Retry-After"), attempt)
                log.info("HTTP %d from %s; retrying in %.1f s", exc.code, self._host(url), delay)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                if attempt >= self.retries:
                    raise XenoCantoError(
                        self.redact(f"{self._host(url)}: network error: {exc}")
                    ) from None
                delay = self._retry_after(None, attempt)
                log.info("network error (%s); retrying in %.1f s", self.redact(str(exc)), delay)
            attempt += 1
            self.sleep(delay)

    def _retry_after(self, header: str | None, attempt: int) -> float:
        backoff = min(self.backoff_s * 2**attempt, self.max_backoff_s)
        try:
            return max(float(header), backoff) if header else backoff
        except ValueError:
            return backoff

    def _host(self, url: str) -> str:
        p = urllib.parse.urlsplit(url)
        return f"{p.scheme}://{p.netloc}{p.path}"

    def _describe(self, url: str, code: int, body: str) -> str:
        msg = body
        try:
            data = json.loads(body)
            msg = f"{data.get('error', '')}: {data.get('message', '')}".strip(": ")
        except (ValueError, AttributeError):
            msg = " ".join(body.split())[:200]
        hint = " (check --api-key)" if code in (401, 403) else ""
        return self.redact(f"{self._host(url)}: HTTP {code}: {msg}{hint}")


@dataclass
class FetchOptions:
    api_key: str
    max_per_species: int = 250
    min_quality: str = "C"
    per_page: int = 500
    max_pages: int = 20
    extra_query: str = ""  # more XC search tags, e.g. 'type:song'
    api_url: str = API_URL


def search(client: PoliteClient, species: str, opts: FetchOptions) -> list[dict[str, Any]]:
    """All recordings of ``species`` (scientific name) from the API, page by page."""
    query = f'sp:"{species}"' + (f" {opts.extra_query}" if opts.extra_query else "")
    out: list[dict[str, Any]] = []
    page, pages = 1, 1
    while page <= min(pages, opts.max_pages):
        params = {"query": query, "key": opts.api_key, "page": page, "per_page": opts.per_page}
        body = client.get(f"{opts.api_url}?{urllib.parse.urlencode(params)}")
        try:
            data = json.loads(body)
        except ValueError:
            raise XenoCantoError(f"{opts.api_url}: response is not JSON") from None
        if not isinstance(data, dict) or "error" in data:
            msg = data.get("message", "") if isinstance(data, dict) else ""
            raise XenoCantoError(client.redact(f"{opts.api_url}: API error: {msg}"))
        out += [r for r in data.get("recordings", []) if isinstance(r, dict)]
        pages = int(data.get("numPages", 1) or 1)
        page += 1
    return out


def select(recordings: list[dict[str, Any]], opts: FetchOptions) -> list[dict[str, Any]]:
    """Quality >= min_quality, best first, those with background labels first within a grade."""
    limit = quality_rank(opts.min_quality)
    keep = [r for r in recordings if r.get("file") and quality_rank(r.get("q", "")) <= limit]

    def key(r: dict[str, Any]) -> tuple[int, int, int]:
        has_also = any(str(a).strip() for a in (r.get("also") or []))
        return quality_rank(r.get("q", "")), 0 if has_also else 1, int(str(r.get("id", 0)) or 0)

    return sorted(keep, key=key)[: opts.max_per_species]


def _extension(rec: dict[str, Any]) -> str:
    name = str(rec.get("file-name") or "")
    ext = Path(name).suffix.lower()
    return ext if ext in (".mp3", ".wav", ".flac", ".ogg") else ".mp3"


def _row(rec: dict[str, Any], rel: str) -> dict[str, str]:
    sci = f"{rec.get('gen', '')} {rec.get('sp', '')}".strip()
    lic = str(rec.get("lic") or "")
    return {
        "file": rel,
        "xc_id": str(rec.get("id", "")),
        "scientific_name": sci,
        "common_name": str(rec.get("en") or ""),
        "background": ";".join(str(a).strip() for a in (rec.get("also") or []) if str(a).strip()),
        "rating": str(rec.get("q") or ""),
        "licence": ("https:" + lic) if lic.startswith("//") else lic,
        "recordist": str(rec.get("rec") or ""),
        "type": str(rec.get("type") or ""),
        "length": str(rec.get("length") or ""),
        "country": str(rec.get("cnt") or ""),
        "url": str(rec.get("url") or ""),
    }


def _read_rows(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        return {r["xc_id"]: r for r in csv.DictReader(f) if r.get("xc_id")}


def _write_rows(path: Path, rows: dict[str, dict[str, str]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, METADATA_COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in sorted(rows.values(), key=lambda r: r["file"]):
        w.writerow(r)
    atomic_write_text(path, buf.getvalue())


def fetch(
    species: Sequence[str], out: str | Path, opts: FetchOptions, client: PoliteClient | None = None
) -> tuple[int, SkipLog]:
    """Fetch recordings of every species into ``out``; return (files present, skips)."""
    if not opts.api_key:
        raise XenoCantoError("an API key is required (--api-key or $XC_API_KEY)")
    if opts.min_quality.upper() not in QUALITIES:
        raise XenoCantoError(f"--min-quality must be one of {', '.join(QUALITIES)}")
    client = client or PoliteClient(secrets=[opts.api_key])
    client.secrets = list({*client.secrets, opts.api_key})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "metadata.csv"
    rows = _read_rows(meta_path)
    journal = Journal(out / ".fetch-xc.journal.jsonl")
    skips = SkipLog(log)
    settings = f"{opts.max_per_species}|{opts.min_quality}|{opts.extra_query}"
    for sp in progress(species, "species", total=len(species)):
        key = f"search|{sp}|{settings}"
        chosen = (journal.get(key) or {}).get("recordings")
        if chosen is None:
            chosen = select(search(client, sp, opts), opts)
            journal.add(key, {"recordings": chosen})
            if not chosen:
                log.warning("%s: no recordings at quality %s or better", sp, opts.min_quality)
        folder = sp.replace(" ", "_")
        for rec in progress(chosen, sp, total=len(chosen)):
            rel = f"audio/{folder}/XC{rec.get('id')}{_extension(rec)}"
            dest = out / rel
            if not (dest.is_file() and dest.stat().st_size > 0):
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_name(dest.name + ".part")
                url = str(rec["file"])
                url = "https:" + url if url.startswith("//") else url
                try:
                    client.get(url, sink=part)
                    if part.stat().st_size == 0:
                        raise XenoCantoError(f"XC{rec.get('id')}: empty download")
                    os.replace(part, dest)
                except XenoCantoError as exc:
                    part.unlink(missing_ok=True)
                    skips.skip("download failed", f"XC{rec.get('id')}: {exc}")
                    continue
            rows[str(rec.get("id"))] = _row(rec, rel)
        _write_rows(meta_path, rows)  # after every species: progress survives interruption
    _write_rows(meta_path, rows)
    return len(rows), skips
