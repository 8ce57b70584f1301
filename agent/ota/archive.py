"""The transfer format of a signed bundle: a deterministic ``tar.gz``, and a careful unpacker.

:func:`pack_bundle` writes ``manifest.json``, ``signature.json`` and exactly the files the
manifest lists, sorted, with zeroed owners and times, so packing the same bundle twice gives the
same bytes (and the same sha256: a researcher can pack, upload, and announce the URL later).

:func:`unpack_archive` never calls ``extractall`` (Python 3.11 has no safe default filter): it
checks every member first and refuses the whole archive for a link (symbolic or hard), a
device, FIFO or other non-regular member, an absolute path, a ``..`` component, a backslash, a
duplicate name, too many members or more content than allowed; then it writes the regular files
itself (``O_EXCL``, mode 0644, fsynced) under a fresh folder.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO

from agent.errors import BundleError
from agent.models.manifest import MANIFEST_NAME, load_bundle
from agent.ota.signing import SIGNATURE_NAME

MAX_MEMBERS = 10_000


class ArchiveError(BundleError):
    """The archive is malformed or holds something a bundle must not (links, odd paths)."""


def pack_bundle(bundle_dir: Path, out_path: Path) -> tuple[str, int]:
    """Write the bundle's transfer archive to ``out_path``; return (sha256, size in bytes).

    Refuses an unsigned bundle or one whose files do not match its manifest.
    """
    bundle = load_bundle(bundle_dir)
    if not (bundle_dir / SIGNATURE_NAME).is_file():
        raise ArchiveError(f"{bundle_dir}: bundle is not signed (chorus-models bundle sign)")
    names = [MANIFEST_NAME, SIGNATURE_NAME, *sorted(bundle.manifest.files)]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with (
        tmp.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        dirs_done: set[str] = set()
        for name in names:
            for parent in reversed(PurePosixPath(name).parents[:-1]):
                if str(parent) not in dirs_done:
                    dirs_done.add(str(parent))
                    info = tarfile.TarInfo(str(parent))
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
            path = bundle_dir / name
            if path.is_symlink() or not path.is_file():
                raise ArchiveError(f"{bundle_dir}: {name} is not a regular file")
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
            with path.open("rb") as f:
                tar.addfile(info, f)
    os.replace(tmp, out_path)
    return sha256_of(out_path), out_path.stat().st_size


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _member_path(name: str) -> PurePosixPath:
    """The member's relative path, or ArchiveError for anything that could escape."""
    if not name or "\\" in name or "\x00" in name:
        raise ArchiveError(f"archive member {name!r}: invalid name")
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        raise ArchiveError(f"archive member {name!r}: absolute path (refused)")
    # "./x" (GNU tar run in the folder) is harmless; anything else must already be normal.
    stripped = name[2:] if name.startswith("./") else name
    stripped = stripped.rstrip("/")
    pure = PurePosixPath(stripped)
    if ".." in pure.parts:
        raise ArchiveError(f"archive member {name!r}: '..' in the path (path traversal, refused)")
    if stripped in ("", ".") or pure.as_posix() != stripped:
        raise ArchiveError(f"archive member {name!r}: not a plain relative path")
    return pure


def check_members(tar: tarfile.TarFile, max_bytes: int) -> list[tuple[tarfile.TarInfo, str]]:
    """Every member checked (see the module docstring); returns (member, relative path) pairs."""
    members: list[tuple[tarfile.TarInfo, str]] = []
    seen: set[str] = set()
    total = 0
    for info in tar:
        if len(members) >= MAX_MEMBERS:
            raise ArchiveError(f"archive has more than {MAX_MEMBERS} members")
        rel = _member_path(info.name).as_posix()
        if info.issym() or info.islnk():
            raise ArchiveError(
                f"archive member {info.name!r} is a link to {info.linkname!r} (links are refused)"
            )
        if not (info.isreg() or info.isdir()):
            raise ArchiveError(f"archive member {info.name!r} is not a regular file or folder")
        if rel in seen:
            raise ArchiveError(f"archive member {info.name!r} appears twice")
        seen.add(rel)
        if info.isreg():
            total += info.size
            if total > max_bytes:
                raise ArchiveError(f"archive content exceeds {max_bytes} bytes (refused)")
        members.append((info, rel))
    return members


def unpack_archive(archive: Path, dest: Path, max_bytes: int) -> list[str]:
    """Unpack ``archive`` into the new folder ``dest`` after checking every member; return the
    relative paths of the files written. ``dest`` must not exist."""
    try:
        tar = tarfile.open(archive, mode="r:gz")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"{archive.name}: not a gzip tar archive: {exc}") from None
    written: list[str] = []
    with tar:
        try:
            members = check_members(tar, max_bytes)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ArchiveError(f"{archive.name}: corrupt archive: {exc}") from None
        dest.mkdir(parents=True, exist_ok=False)
        for info, rel in members:
            target = dest / rel
            if info.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(info)
            if src is None:  # cannot happen for a regular member; refuse rather than guess
                raise ArchiveError(f"archive member {info.name!r} has no data")
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                with os.fdopen(fd, "wb") as out:
                    _copy(src, out, info.size)
                    out.flush()
                    os.fsync(out.fileno())
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise ArchiveError(f"{archive.name}: corrupt member {info.name!r}: {exc}") from None
            written.append(rel)
    return written


def _copy(src: IO[bytes], out: IO[bytes], size: int) -> None:
    left = size
    while left > 0:
        block = src.read(min(left, 1 << 20))
        if not block:
            raise EOFError(f"member ends {left} bytes early")
        out.write(block)
        left -= len(block)
