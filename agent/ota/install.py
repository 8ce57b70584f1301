"""The checks between "received" and "installed", as plain functions (no MQTT, no threads).

:func:`check_announcement` runs before anything is downloaded (versions, limits);
:func:`verify_archive` after: safe unpacking, the signature over the manifest, every file's size
and sha256, the manifest's schema and minimum agent version, no unlisted files, and that the
archive holds the bundle the announcement named. Shapes, NaN, the golden test and the latency
budget are checked by :mod:`agent.ota.smoke` in a fresh interpreter.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from agent.errors import ChorusError
from agent.models.manifest import MANIFEST_NAME, Bundle, load_bundle, parse_version
from agent.ota.announce import Announcement
from agent.ota.archive import ArchiveError, unpack_archive
from agent.ota.signing import SIGNATURE_NAME, TrustedKeys, verify_bundle_signature

# gzip rarely shrinks models more than this; beyond it the archive is refused as a bomb.
UNPACK_RATIO = 8


class UpdateRefused(ChorusError):
    """An update refused before activation; the message is the reason published."""


def check_announcement(
    ann: Announcement,
    active: tuple[str, str],
    *,
    allow_downgrade: bool,
    refused_before: bool,
    max_bundle_bytes: int,
    max_chunk_bytes: int,
) -> None:
    """Refuse an announcement before downloading: too big, not newer, or rolled back here.

    Versions are compared within a bundle name only: another bundle (``chorus-edge`` after
    ``chorus-demo``) is a change of model, not a downgrade, whatever its version number.
    """
    if ann.size_bytes > max_bundle_bytes:
        raise UpdateRefused(
            f"archive is {ann.size_bytes} bytes, more than updates.max_bundle_bytes "
            f"({max_bundle_bytes})"
        )
    if not ann.via_url and ann.chunk_bytes > max_chunk_bytes:
        raise UpdateRefused(
            f"chunks of {ann.chunk_bytes} bytes exceed updates.max_chunk_bytes ({max_chunk_bytes})"
        )
    name, version = active
    new, old = parse_version(ann.version), parse_version(version)
    if (
        ann.name == name  # another bundle's version says nothing about this one's
        and not (ann.force or allow_downgrade)
        and new is not None
        and old is not None
        and new <= old
    ):
        what = "the same version as" if new == old else "older than"
        raise UpdateRefused(
            f"downgrade refused: {ann.name} {ann.version} is {what} the active {name} {version} "
            "(publish with --force to install it anyway)"
        )
    if refused_before and not ann.force:
        raise UpdateRefused(
            f"{ann.name} {ann.version} was rolled back on this device before "
            "(publish with --force to try it again)"
        )


def verify_archive(
    archive: Path, job_dir: Path, ann: Announcement, trusted: TrustedKeys
) -> tuple[Path, Bundle]:
    """Unpack ``archive`` under ``job_dir/unpacked`` and verify it (module docstring).
    Returns (the unpacked folder, the loaded bundle); raises a BundleError subclass."""
    unpacked = job_dir / "unpacked"
    if unpacked.exists():  # a previous attempt, interrupted: start clean
        shutil.rmtree(unpacked)
    written = unpack_archive(archive, unpacked, ann.size_bytes * UNPACK_RATIO)
    verify_bundle_signature(unpacked, trusted)
    bundle = load_bundle(unpacked)  # sizes + sha256 of every file, schema, min_agent_version
    listed = set(bundle.manifest.files) | {MANIFEST_NAME, SIGNATURE_NAME}
    unlisted = sorted(set(written) - listed)
    if unlisted:
        raise ArchiveError(
            f"archive holds files the signed manifest does not list: {', '.join(unlisted[:5])}"
        )
    m = bundle.manifest
    if (m.name, m.version) != (ann.name, ann.version):
        raise ArchiveError(
            f"archive holds {m.name} {m.version}, the announcement says {ann.name} {ann.version}"
        )
    return unpacked, bundle
