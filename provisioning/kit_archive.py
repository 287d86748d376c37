"""Kit zips on disk: write them, read them back safely, unpack them; and the kit error tree.

Reading rejects everything that could write outside the kit folder when unpacked by ``unzip`` or Python: absolute
paths, ``..`` components, drive letters, backslashes, symbolic links and device files, duplicate names, and more than
one top folder. The whole zip is read into memory (kits are a few tens of KB), so what is verified is exactly what
``write_kit_folder`` writes.

Exceptions:
    KitError: base of every kit error.
    KitBuildError: the workspace cannot be turned into signed kits.
    KitVerificationError: a kit zip is unsafe, altered, foreign or expired; the message names the file or reason.
"""

from __future__ import annotations

import os
import stat
import zipfile
from datetime import datetime
from pathlib import Path, PurePosixPath

MAX_KIT_BYTES = 64 * 1024 * 1024
"""Largest total uncompressed size accepted when reading a kit zip."""

KitFiles = dict[str, tuple[bytes, int]]
"""Kit-relative POSIX path to (content, permission bits)."""


class KitError(RuntimeError):
    """Base class of kit build and verification errors."""


class KitBuildError(KitError):
    """Raised when kits cannot be built from a workspace."""


class KitVerificationError(KitError):
    """Raised when a kit zip fails verification.

    Attributes:
        root_ca_fingerprint: SHA-256 fingerprint of the kit's root CA when it could be read, else None.
    """

    def __init__(self, message: str, root_ca_fingerprint: str | None = None) -> None:
        super().__init__(message)
        self.root_ca_fingerprint = root_ca_fingerprint


def write_kit_zip(path: Path, top: str, files: KitFiles, issued_at: datetime) -> None:
    """Write ``files`` under the folder ``top`` into the zip ``path`` atomically, keeping permission bits."""
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for relative, (content, mode) in sorted(files.items()):
            info = zipfile.ZipInfo(f"{top}/{relative}", date_time=issued_at.timetuple()[:6])
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
    os.replace(tmp, path)


def read_kit_zip(zip_path: Path) -> tuple[str, KitFiles]:
    """Read a kit zip into memory.

    Returns:
        The name of the kit's top folder and its files, keyed by path relative to that folder.

    Raises:
        KitVerificationError: naming the entry that is unsafe, or when the zip is unreadable or too large.
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise KitVerificationError(f"{zip_path} is not a readable zip file: {exc}") from None
    with archive:
        infos = archive.infolist()
        if sum(info.file_size for info in infos) > MAX_KIT_BYTES:
            raise KitVerificationError(f"{zip_path} unpacks to more than {MAX_KIT_BYTES} bytes: not a Consortia kit")
        tops: set[str] = set()
        entries: KitFiles = {}
        for info in infos:
            name = info.filename
            parts = PurePosixPath(name).parts
            if "\\" in name or name.startswith("/") or ".." in parts or (parts and ":" in parts[0]) or not parts:
                raise KitVerificationError(f"zip entry {name!r} points outside the kit folder (path traversal)")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise KitVerificationError(f"zip entry {name!r} is a symbolic link; kits contain plain files only")
            if info.is_dir():
                continue
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                raise KitVerificationError(f"zip entry {name!r} is not a plain file (mode {oct(mode)})")
            if len(parts) < 2:
                raise KitVerificationError(
                    f"zip entry {name!r} is outside the kit folder; a kit contains exactly one folder"
                )
            tops.add(parts[0])
            if len(tops) > 1:
                raise KitVerificationError(f"{zip_path} must contain exactly one kit folder, found {sorted(tops)}")
            relative = "/".join(parts[1:])
            if relative in entries:
                raise KitVerificationError(f"zip entry {name!r} appears twice")
            try:
                entries[relative] = (archive.read(info), (mode & 0o777) or 0o644)
            except (zipfile.BadZipFile, OSError) as exc:
                raise KitVerificationError(f"zip entry {name!r} is corrupt: {exc}") from None
    if not tops:
        raise KitVerificationError(f"{zip_path} contains no files: not a Consortia kit")
    return tops.pop(), entries


def write_kit_folder(top: str, entries: KitFiles, destination: Path) -> Path:
    """Write verified kit files into ``destination/<top>`` with their permission bits.

    Raises:
        FileExistsError: when the kit folder already exists (an existing kit is never overwritten).
    """
    target = Path(destination) / top
    if target.exists():
        raise FileExistsError(f"{target} already exists: move it away or choose another folder")
    for relative, (content, mode) in sorted(entries.items()):
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(path, mode)
    return target
