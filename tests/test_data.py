"""Corpora (bundled, download, cache, checksum, resume, offline) and the three batchers.

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
import tracemalloc

import numpy as np
import pytest

from scratchlm import batching, corpora
from scratchlm.corpora import CorpusError, DownloadError

BODY = b"".join(b"line %d of a small corpus served over http\n" % i for i in range(2000))   # ~90 kB
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
        if srv.break_after is not None:          # send part of the body, then drop the connection
            payload, srv.break_after = payload[:srv.break_after], None
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
    assert again == path and server.seen == [None]                 # the second call never asked the server


def test_fetch_checksum_mismatch_keeps_nothing(server, tmp_path):
    with pytest.raises(DownloadError, match="SHA-256"):
        corpora.fetch(server.url, cache_dir=tmp_path, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []                            # no corpus, no .part


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
    assert not [p for p in tmp_path.iterdir() if not p.name.endswith(".part")]     # nothing half-done in place
    assert corpora.fetch(server.url, cache_dir=tmp_path, sha256=SHA).read_bytes() == BODY
    assert server.seen[-1] == "bytes=30000-"


def test_fetch_offline_names_the_url_and_the_way_out(tmp_path):
    with socket.socket() as s:                       # a port nobody listens on
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
    monkeypatch.setattr(corpora, "_download", None)                     # any download attempt would fail
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
    damaged.write_bytes(damaged.read_bytes()[:-9])                        # truncated
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


# -- batchers ------------------------------------------------------------------------

def _keras_windows(ids, maxlen, step):
    """The Keras seed's loop, for reference: materialised (N, T) windows and next tokens."""
    starts = range(0, len(ids) - maxlen, step)
    return np.array([ids[s:s + maxlen] for s in starts]), np.array([ids[s + maxlen] for s in starts])


@pytest.mark.parametrize("n, maxlen, step, B", [(1000, 60, 3, 128), (200, 10, 1, 7), (61, 60, 3, 4), (95, 5, 7, 3)])
def test_windows_cover_the_keras_windows_once_per_epoch(n, maxlen, step, B):
    ids = np.random.default_rng(0).integers(0, 50, n).astype(np.uint8)
    X, Y = _keras_windows(ids, maxlen, step)
    w = batching.Windows(ids, maxlen, step, B, seed=3)
    assert w.num_windows == len(X) and w.num_batches == -(-len(X) // B)
    batches = list(w.batches(epoch=0))
    assert [len(b.y) for b in batches[:-1]] == [B] * (len(batches) - 1) and sum(b.targets for b in batches) == len(X)
    x = np.concatenate([b.x for b in batches])
    y = np.concatenate([b.y for b in batches])
    assert x.dtype == np.int64 and x.shape == (len(X), maxlen)
    got = sorted(map(tuple, np.column_stack([x, y])))
    assert got == sorted(map(tuple, np.column_stack([X, Y])))


def test_windows_order_is_a_function_of_seed_and_epoch():
    ids = np.arange(500) % 37
    w = batching.Windows(ids, 20, 2, 16, seed=1)
    first = [b.x for b in w.batches(0)]
    again = [b.x for b in batching.Windows(ids, 20, 2, 16, seed=1).batches(0)]
    assert len(again) == len(first) and all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], next(w.batches(1)).x)
    assert not np.array_equal(first[0], next(batching.Windows(ids, 20, 2, 16, seed=2).batches(0)).x)
    tail = [b.x for b in w.batches(0, start=5)]
    assert len(tail) == len(first) - 5 and all(np.array_equal(a, b) for a, b in zip(first[5:], tail))


def test_windows_all_positions_and_unshuffled():
    ids = np.arange(30)
    w = batching.Windows(ids, 4, 5, 2, shuffle=False, last_only=False)
    b = next(w.batches(0))
    assert b.x.tolist() == [[0, 1, 2, 3], [5, 6, 7, 8]] and b.y.tolist() == [[1, 2, 3, 4], [6, 7, 8, 9]]
    assert b.mask is None and b.targets == 8


def test_nietzsche_book_window_count():
    from scratchlm.text import CharTokenizer
    text = corpora.load_text("nietzsche").lower()
    tok = CharTokenizer.fit(text, reserved=False)
    w = batching.Windows(tok.encode(text), maxlen=60, step=3, batch_size=128)
    assert (len(text), tok.vocab_size, w.num_windows, w.num_batches) == (600902, 60, 200281, 1565)


def test_windows_stream_instead_of_materialising():
    ids = np.zeros(3_000_000, dtype=np.uint8)           # (N, T) int64 windows would take 480 MB
    tracemalloc.start()
    try:
        w = batching.Windows(ids, maxlen=60, step=3, batch_size=128)
        next(w.batches(0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert w.num_windows == 999_980
    assert peak < 5 * w.num_windows + (1 << 20)          # the int32 permutation plus one batch


def test_too_short_for_windows():
    with pytest.raises(CorpusError, match="at least 61"):
        batching.Windows(np.zeros(60, dtype=np.uint8), maxlen=60)


def test_streams_continue_row_by_row():
    ids = np.arange(1000)
    s = batching.Streams(ids, batch_size=4, seq_len=10)
    assert s.stream_len == 249 and s.num_batches == 24
    batches = list(s.batches(0))
    for b in batches:
        assert np.array_equal(b.y, b.x + 1) and b.x.shape == (4, 10) and b.targets == 40
    for k in range(len(batches) - 1):
        assert np.array_equal(batches[k + 1].x[:, 0], batches[k].x[:, -1] + 1)      # row b continues
    rows = np.concatenate([b.x for b in batches], axis=1)                            # (B, 240)
    assert np.array_equal(rows, np.arange(4)[:, None] * 249 + np.arange(240))
    assert [b.x.tolist() for b in s.batches(3, start=20)] == [b.x.tolist() for b in batches[20:]]


def test_streams_too_short():
    with pytest.raises(CorpusError, match="at least 641"):
        batching.Streams(np.zeros(640), batch_size=64, seq_len=10)


def test_padded_batches_eos_both_ends_and_mask():
    seqs = [np.array([5, 6, 7]), np.array([8]), np.array([], dtype=int), np.array([9, 9, 9, 9, 9, 9])]
    p = batching.Padded(seqs, eos_id=2, pad_id=0, batch_size=3, maxlen=5, shuffle=False)
    assert p.num_sequences == 3 and p.num_batches == 1                               # the empty one is dropped
    b = next(p.batches(0))
    assert b.x.tolist() == [[2, 5, 6, 7, 0], [2, 8, 0, 0, 0], [2, 9, 9, 9, 9]]
    assert b.y.tolist() == [[5, 6, 7, 2, 0], [8, 2, 0, 0, 0], [9, 9, 9, 9, 9]]      # cut at maxlen: no <eos>
    assert b.mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert b.targets == 11
    assert p.random_prompt(np.random.default_rng()).tolist() == [2]


def test_padded_shuffles_by_seed_and_epoch_and_visits_each_once():
    seqs = [np.full(i % 7 + 1, i) for i in range(50)]
    p = batching.Padded(seqs, eos_id=2, pad_id=0, batch_size=8, seed=4)
    firsts = lambda epoch: sorted(int(x) for b in p.batches(epoch) for x in b.x[:, 1])   # noqa: E731
    assert firsts(0) == list(range(50))
    order = lambda epoch: [b.x[:, 1].tolist() for b in p.batches(epoch)]                # noqa: E731
    assert order(0) == order(0) and order(0) != order(1)


def test_padded_needs_sequences_and_reserved_ids():
    with pytest.raises(CorpusError, match="no non-empty"):
        batching.Padded([np.array([], dtype=int)], 2, 0)
    with pytest.raises(CorpusError, match="reserved"):
        batching.Padded([np.array([4])], None, None)


def test_splits():
    train, val = batching.split_tail(np.arange(100), 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    assert batching.split_tail(np.arange(10), 0)[1].size == 0
    seqs = [np.array([i]) for i in range(20)]
    tr, va = batching.split_sequences(seqs, 0.25, seed=1)
    assert len(tr) == 15 and len(va) == 5
    assert sorted(int(s[0]) for s in tr + va) == list(range(20))
    with pytest.raises(CorpusError):
        batching.split_tail(np.arange(10), 1.0)


def test_config_fingerprints_the_data():
    a = batching.Windows(np.arange(100) % 9, 10, 3, 8).config
    b = batching.Windows((np.arange(100) + 1) % 9, 10, 3, 8).config
    assert a["fingerprint"] != b["fingerprint"] and {k: v for k, v in a.items() if k != "fingerprint"} == \
        {k: v for k, v in b.items() if k != "fingerprint"}


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
