"""Corpora: bundled, download, cache, checksum, resume, offline; reading files safely.

Downloads are tested against a local HTTP server on 127.0.0.1 run in a thread:
no test touches the network.
"""

import gzip
import hashlib
import http.server
import os
import re
import socket
import threading

import pytest

from scratchlm import corpora
from scratchlm.corpora import CorpusError, DownloadError

BODY = b"".join(b"line %d of a small corpus served over http\n" % i for i in range(2000))  # ~90 kB
SHA = hashlib.sha256(BODY).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.body at /corpus.txt; honours Range when server.ranges is True; can break off."""

    def do_GET(self):
        srv = self.server
        if self.path != "/corpus.txt":
            self.send_error(404)
            return
        header = self.headers.get("Range")
        srv.seen.append(header)
        start = 0
        if header and srv.ranges:
            start = int(header.split("=")[1].split("-")[0])
            if start >= len(srv.body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(srv.body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(srv.body) - 1}/{len(srv.body)}")
        else:
            self.send_response(200)
        payload = srv.body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if srv.break_after is not None:  # send part of the body, then drop the connection
            payload, srv.break_after = payload[: srv.break_after], None
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.body, srv.ranges, srv.break_after, srv.seen = BODY, True, None, []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/corpus.txt"
    yield srv
    srv.shutdown()
    srv.server_close()


def test_fetch_downloads_verifies_and_caches(server, tmp_path):
    path = corpora.fetch(server.url, cache_dir=tmp_path, sha256=SHA)
    assert path.read_bytes() == BODY and not list(tmp_path.glob("*.part"))
    again = corpora.fetch(server.url, cache_dir=tmp_path, sha256=SHA)
    assert again == path and server.seen == [None]  # the second call never asked the server


def test_fetch_checksum_mismatch_keeps_nothing(server, tmp_path):
    with pytest.raises(DownloadError, match="SHA-256"):
        corpora.fetch(server.url, cache_dir=tmp_path, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []  # no corpus, no .part


def test_fetch_resumes_a_partial_download_with_range(server, tmp_path):
    name = f"{hashlib.sha256(server.url.encode()).hexdigest()[:12]}-corpus.txt"
    (tmp_path / (name + ".part")).write_bytes(BODY[:12345])
    path = corpora.fetch(server.url, cache_dir=tmp_path, sha256=SHA)
    assert server.seen == ["bytes=12345-"]
    assert path.read_bytes() == BODY and not (tmp_path / (name + ".part")).exists()


def test_fetch_starts_over_when_the_server_ignores_range(server, tmp_path):
    server.ranges = False
    name = f"{hashlib.sha256(server.url.encode()).hexdigest()[:12]}-corpus.txt"
    (tmp_path / (name + ".part")).write_bytes(b"garbage that must not survive")
    assert corpora.fetch(server.url, cache_dir=tmp_path, sha256=SHA).read_bytes() == BODY


def test_fetch_broken_transfer_is_continued_next_time(server, tmp_path):
    server.break_after = 30000
    with pytest.raises(DownloadError, match="run again to continue"):
        corpora.fetch(server.url, cache_dir=tmp_path, sha256=SHA)
    parts = list(tmp_path.glob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == 30000
    assert not [p for p in tmp_path.iterdir() if not p.name.endswith(".part")]  # nothing half-done in place
    assert corpora.fetch(server.url, cache_dir=tmp_path, sha256=SHA).read_bytes() == BODY
    assert server.seen[-1] == "bytes=30000-"


def test_fetch_offline_names_the_url_and_the_way_out(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/corpus.txt"
    with pytest.raises(DownloadError) as err:
        corpora.fetch(url, cache_dir=tmp_path, timeout=5)
    assert url in str(err.value) and corpora.LOCAL_HINT in str(err.value)
    with pytest.raises(DownloadError, match="pass it with --corpus PATH"):
        corpora.load_text(url, cache_dir=tmp_path, local_hint="pass it with --corpus PATH")


def test_fetch_http_error(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        corpora.fetch(server.url.replace("corpus", "missing"), cache_dir=tmp_path)


def test_named_corpus_is_checked_and_refetched_when_damaged(server, tmp_path, monkeypatch):
    monkeypatch.setitem(corpora.CORPORA, "tiny", corpora.Source(server.url, SHA, "tiny.txt"))
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "tiny.txt").write_bytes(b"damaged copy")
    assert corpora.fetch("tiny") == tmp_path / "cache" / "tiny.txt"
    assert (tmp_path / "cache" / "tiny.txt").read_bytes() == BODY
    assert corpora.load_text("tiny") == BODY.decode()


def test_unknown_corpus_name(tmp_path):
    with pytest.raises(CorpusError, match="nietzsche"):
        corpora.fetch("war-and-peace", cache_dir=tmp_path)
    with pytest.raises(CorpusError, match="no such file"):
        corpora.load_text(str(tmp_path / "missing.txt"))


@pytest.mark.parametrize("name", sorted(corpora.CORPORA))
def test_bundled_corpora_need_no_network_nor_cache(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(corpora, "_download", None)  # any download attempt would fail
    source = corpora.CORPORA[name]
    path = corpora.fetch(name)
    assert source.bundled and path == corpora.bundled_path(name) and path.name == source.filename + ".gz"
    raw = gzip.decompress(path.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == source.sha256
    assert corpora.load_text(name) == raw.decode().replace("\r\n", "\n").replace("\r", "\n")
    assert not (tmp_path / "cache").exists()


def test_the_corpora_readme_records_every_source_and_checksum():
    readme = (corpora.bundled_path("nietzsche").parent / "README.md").read_text()
    for name, source in corpora.CORPORA.items():
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}` |"))
        assert source.url in row and source.sha256 in row and f"`{source.filename}.gz`" in row


def test_a_damaged_bundled_corpus_is_refused(tmp_path, monkeypatch):
    damaged = tmp_path / "nietzsche.txt.gz"
    damaged.write_bytes(gzip.compress(b"not what was shipped\n"))
    monkeypatch.setattr(corpora, "bundled_path", lambda name: damaged)
    with pytest.raises(CorpusError, match=re.escape(corpora.CORPORA["nietzsche"].sha256) + ".*reinstall"):
        corpora.load_text("nietzsche")
    damaged.write_bytes(damaged.read_bytes()[:-9])  # truncated
    with pytest.raises(CorpusError, match="not a whole gzip file"):
        corpora.fetch("nietzsche")


def test_read_text_reads_gzip_files(tmp_path):
    (tmp_path / "mine.txt.gz").write_bytes(gzip.compress("caf\u00e9\r\nbar\n".encode()))
    assert corpora.load_text(str(tmp_path / "mine.txt.gz")) == "caf\u00e9\nbar\n"
    (tmp_path / "fake.txt.gz").write_text("plain text under a .gz name")
    with pytest.raises(CorpusError, match="not a whole gzip file"):
        corpora.read_text(tmp_path / "fake.txt.gz")


def test_read_text_normalises_line_ends_and_reports_problems(tmp_path):
    (tmp_path / "crlf.txt").write_bytes(b"one\r\ntwo\rthree\n")
    assert corpora.read_text(tmp_path / "crlf.txt") == "one\ntwo\nthree\n"
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(CorpusError, match="not UTF-8"):
        corpora.read_text(tmp_path / "latin1.txt")
    with pytest.raises(CorpusError, match="directory"):
        corpora.read_text(tmp_path)
    with pytest.raises(CorpusError, match="no such file"):
        corpora.read_text(tmp_path / "nope.txt")


def test_a_corpus_that_is_no_regular_file_is_refused_before_a_byte_is_read(tmp_path):
    """A FIFO (no writer: reading would wait forever) and /dev/zero (endless) are refused at once."""
    os.mkfifo(tmp_path / "pipe.txt")
    with pytest.raises(CorpusError, match="FIFO .*not a regular file"):
        corpora.read_text(tmp_path / "pipe.txt")
    (tmp_path / "zero.txt").symlink_to("/dev/zero")
    with pytest.raises(CorpusError, match="character device, not a regular file"):
        corpora.read_text(tmp_path / "zero.txt")


@pytest.mark.parametrize("name", ["big.txt", "big.txt.gz"])
def test_a_corpus_larger_than_half_the_available_memory_is_refused(tmp_path, monkeypatch, name):
    text = b"abc\n" * 1000
    (tmp_path / name).write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    monkeypatch.setattr(corpora, "_memory_limit", lambda: len(text) - 1)
    with pytest.raises(CorpusError, match="half the memory available"):
        corpora.read_text(tmp_path / name)
    monkeypatch.setattr(corpora, "_memory_limit", lambda: len(text))
    assert corpora.read_text(tmp_path / name) == text.decode()
