"""Downloader against a local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import hashlib
import stat
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from marl_two_tower.data.download import DATASETS, MARKER, DownloadError, download
from marl_two_tower.data.movielens import load_ml100k


class Server:
    """Serves files from a folder and counts the requests it answers."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests = 0
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=folder))
        self.thread = threading.Thread(  # short poll: shutdown() returns quickly
            target=self.httpd.serve_forever, args=(0.05,), daemon=True
        )
        self.thread.start()

    def url(self, name: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    folder = tmp_path / "www"
    folder.mkdir()
    s = Server(folder)
    yield s
    s.close()


def make_zip(path: Path, members: dict[str, bytes], links: tuple[str, ...] = ()) -> str:
    """Write a zip with ``members`` (and symlink entries ``links``); return its MD5."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return hashlib.md5(path.read_bytes()).hexdigest()


TINY = {"ml-100k/u.data": b"1\t10\t5\t874965758\n", "ml-100k/README": b"tiny\n"}


def test_pinned_checksums() -> None:
    assert DATASETS["ml-100k"].md5 == "0e33842e24a9c977be4e0107933c0723"
    assert DATASETS["ml-1m"].md5 == "c4d9eecfca2ab87c1945afe126590906"
    assert all(r.url.startswith("https://files.grouplens.org/") for r in DATASETS.values())


def test_download_verifies_extracts_and_is_idempotent(tmp_path: Path, server: Server) -> None:
    md5 = make_zip(server.folder / "ml-100k.zip", TINY)
    root = tmp_path / "data"
    url = server.url("ml-100k.zip")
    out = download("ml-100k", root=root, url=url, md5=md5, progress=False)
    assert out == root / "ml-100k"
    assert (out / "u.data").read_bytes() == TINY["ml-100k/u.data"]
    assert (out / MARKER).read_text().strip() == md5
    assert sorted(p.name for p in root.iterdir()) == ["ml-100k", "ml-100k.zip"]  # no temp left
    assert server.requests == 1

    assert download("ml-100k", root=root, url=url, md5=md5, progress=False) == out
    assert server.requests == 1  # already complete: no second request

    (out / "u.data").write_bytes(b"tampered")
    download("ml-100k", root=root, url=url, md5=md5, force=True, progress=False)
    assert server.requests == 2
    assert (out / "u.data").read_bytes() == TINY["ml-100k/u.data"]


def test_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path: Path, server: Server) -> None:
    make_zip(server.folder / "ml-100k.zip", TINY)
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download("ml-100k", root=root, url=server.url("ml-100k.zip"), md5="0" * 32,
                 progress=False)
    assert list(root.iterdir()) == []


@pytest.mark.parametrize(
    ("members", "links", "match"),
    [
        ({"ml-100k/u.data": b"x", "../evil": b"pwned"}, (), "unsafe path '../evil'"),
        ({"ml-100k/../../evil": b"pwned"}, (), "unsafe path"),
        ({"/tmp/evil": b"pwned"}, (), "unsafe path '/tmp/evil'"),
        ({"ml-100k/u.data": b"x"}, ("ml-100k/link",), "link 'ml-100k/link'"),
    ],
)
def test_unsafe_archive_is_refused(
    tmp_path: Path, server: Server, members: dict[str, bytes], links: tuple[str, ...], match: str
) -> None:
    md5 = make_zip(server.folder / "ml-100k.zip", members, links)
    root = tmp_path / "a" / "data"
    with pytest.raises(DownloadError, match=match):
        download("ml-100k", root=root, url=server.url("ml-100k.zip"), md5=md5, progress=False)
    assert list(root.iterdir()) == []
    assert not (tmp_path / "a" / "evil").exists() and not (tmp_path / "evil").exists()


def test_http_error_and_unknown_name(tmp_path: Path, server: Server) -> None:
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="could not download"):
        download("ml-1m", root=root, url=server.url("missing.zip"), md5="0" * 32, progress=False)
    assert list(root.iterdir()) == []
    with pytest.raises(ValueError, match="unknown dataset"):
        download("ml-42m", root=root)


def test_foreign_folder_is_not_replaced_without_force(tmp_path: Path, server: Server) -> None:
    md5 = make_zip(server.folder / "ml-100k.zip", TINY)
    mine = tmp_path / "ml-100k" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("keep me")
    url = server.url("ml-100k.zip")
    with pytest.raises(DownloadError, match="re-run with --force"):
        download("ml-100k", root=tmp_path, url=url, md5=md5, progress=False)
    assert mine.read_text() == "keep me" and server.requests == 0
    out = download("ml-100k", root=tmp_path, url=url, md5=md5, force=True, progress=False)
    assert (out / "u.data").is_file() and not mine.exists()


def test_archive_without_top_folder(tmp_path: Path, server: Server) -> None:
    md5 = make_zip(server.folder / "flat.zip", {"u.data": b"1\t10\t5\t1\n"})
    out = download("flat", root=tmp_path, url=server.url("flat.zip"), md5=md5, progress=False)
    assert (out / "u.data").is_file() and out == tmp_path / "flat"


def test_download_then_load_real_ml100k(tmp_path: Path, server: Server, ml100k_dir: Path) -> None:
    """End to end on a zip built from the shared files (in tmp, never in the repo)."""
    files = {f"ml-100k/{n}": (ml100k_dir / n).read_bytes() for n in ("u.data", "u.item", "u.user")}
    md5 = make_zip(server.folder / "ml-100k.zip", files)
    out = download("ml-100k", root=tmp_path, url=server.url("ml-100k.zip"), md5=md5,
                   progress=False)
    ds = load_ml100k(out)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (943, 1682, 100000)
