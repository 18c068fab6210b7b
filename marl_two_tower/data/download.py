"""Download and extract the official GroupLens MovieLens archives (DESIGN §2 "Download").

``download("ml-1m")`` fetches the zip, checks its pinned MD5 (the checksums
GroupLens publishes next to each archive), and extracts it into ``<root>/ml-1m``.

Nothing half-written is ever visible under its final name: the archive streams
into a temporary file (:func:`marl_two_tower.utils.io.atomic_write`) that is renamed
only after its checksum matched, and the folder is extracted into a temporary
directory that is renamed into place before a marker file records completion. A
second call finds the marker and returns at once without touching the network.
Extraction refuses absolute paths, ``..`` traversal and links.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from marl_two_tower.errors import UserError
from marl_two_tower.utils.io import atomic_write, write_text_atomic
from marl_two_tower.utils.runtime import interactive_output


@dataclass(frozen=True)
class Remote:
    """Where an archive lives and the MD5 it must have."""

    url: str
    md5: str


DATASETS: dict[str, Remote] = {
    "ml-100k": Remote(
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "0e33842e24a9c977be4e0107933c0723",
    ),
    "ml-1m": Remote(
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        "c4d9eecfca2ab87c1945afe126590906",
    ),
}
MARKER = ".download-complete"  # written last, holds the verified MD5
_CHUNK = 1 << 20


class DownloadError(UserError, RuntimeError):
    """A download failed, its checksum did not match, or the archive is unsafe (a
    :class:`UserError`: the CLI prints it as one ``error:`` line)."""


def download(
    name: str,
    root: str | Path = "data",
    url: str | None = None,
    force: bool = False,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch and extract dataset ``name`` into ``<root>/<name>``; return that folder.

    Args:
        name: ``"ml-100k"`` or ``"ml-1m"`` (any name when both ``url`` and ``md5``
            are given).
        root: parent folder of the extracted dataset (created if missing).
        url: override the archive URL (tests point it at a local server).
        force: download and extract again, replacing ``<root>/<name>``.
        md5: override the pinned checksum (tests).
        progress: show a tqdm progress bar.
        timeout: seconds to wait on the connection.

    Raises:
        DownloadError: network failure, checksum mismatch, unsafe or corrupt archive
            (nothing is left behind in ``root``), or ``<root>/<name>`` already exists
            without the completion marker and ``force`` is False.
    """
    if url is None or md5 is None:
        remote = DATASETS.get(name)
        if remote is None:
            raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
        url, md5 = url or remote.url, md5 or remote.md5
    md5 = md5.lower()

    root = Path(root)
    target = root / name
    marker = target / MARKER
    if not force and marker.is_file() and marker.read_text().strip() == md5:
        return target
    if target.exists() and not marker.is_file() and not force:
        # Not ours (e.g. unpacked by hand): never delete it without being asked.
        raise DownloadError(
            f"{target} exists but was not completed by download(); "
            "remove it or re-run with --force (force=True from Python) to replace it"
        )
    root.mkdir(parents=True, exist_ok=True)

    archive = root / f"{name}.zip"  # kept, verified, for reference
    _fetch(url, md5, archive, name, progress, timeout)
    try:
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            content = _extract(archive, tmp_dir)
            if target.exists():  # stale or forced: replace as a whole
                shutil.rmtree(target)
            os.replace(content, target)  # a folder: renamed whole, not written file by file
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    except BaseException:
        archive.unlink(missing_ok=True)  # unusable archive: leave nothing behind
        raise
    write_text_atomic(marker, md5 + "\n")
    return target


def _fetch(url: str, md5: str, archive: Path, name: str, progress: bool, timeout: float) -> None:
    """Stream ``url`` into ``archive`` atomically; the file appears only if its MD5 matched."""
    digest = hashlib.md5()
    try:
        with atomic_write(archive, "wb") as out, \
                urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=name,
                      disable=not (progress and interactive_output()), mininterval=1.0) as bar:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            got = digest.hexdigest()
            if got != md5:  # raised inside atomic_write: the temporary file is deleted
                raise DownloadError(
                    f"checksum mismatch for {url}: expected MD5 {md5}, got {got}; "
                    "the file was deleted (corrupt or changed upstream)"
                )
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise DownloadError(f"could not download {url}: {exc}") from exc


def _safe_members(zf: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    """All members, after checking none can write outside the extraction folder."""
    members = zf.infolist()
    for m in members:
        name = m.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
            raise DownloadError(f"{archive}: unsafe path {m.filename!r} in archive")
        if stat.S_ISLNK(m.external_attr >> 16):
            raise DownloadError(f"{archive}: link {m.filename!r} in archive is not allowed")
    return members


def _extract(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` into ``dest``; return the dataset folder inside it.

    GroupLens zips hold one top-level folder (``ml-1m/``); that folder is the
    dataset. An archive without one is taken as the dataset itself.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            members = _safe_members(zf, archive)
            zf.extractall(dest, members=members)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive}: not a valid zip archive ({exc})") from exc
    entries = [p for p in dest.iterdir() if not p.name.startswith("__MACOSX")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    # Move the loose files one level down so that ``dest`` itself can be removed.
    inner = dest / ".content"
    inner.mkdir()
    for p in entries:
        os.replace(p, inner / p.name)
    return inner
