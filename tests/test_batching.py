"""The batchers: Windows, Streams, Padded and Vectorized, and the validation splits."""

import tracemalloc

import numpy as np
import pytest

from scratchlm import batching, corpora
from scratchlm.corpora import CorpusError


def _keras_windows(ids, maxlen, step):
    """The Keras seed's loop, for reference: materialised (N, T) windows and next tokens."""
    starts = range(0, len(ids) - maxlen, step)
    return np.array([ids[s : s + maxlen] for s in starts]), np.array([ids[s + maxlen] for s in starts])


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
    assert len(again) == len(first) and all(np.array_equal(a, b) for a, b in zip(first, again, strict=False))
    assert not np.array_equal(first[0], next(w.batches(1)).x)
    assert not np.array_equal(first[0], next(batching.Windows(ids, 20, 2, 16, seed=2).batches(0)).x)
    tail = [b.x for b in w.batches(0, start=5)]
    assert len(tail) == len(first) - 5 and all(np.array_equal(a, b) for a, b in zip(first[5:], tail, strict=False))


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
    ids = np.zeros(3_000_000, dtype=np.uint8)  # (N, T) int64 windows would take 480 MB
    tracemalloc.start()
    try:
        w = batching.Windows(ids, maxlen=60, step=3, batch_size=128)
        next(w.batches(0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert w.num_windows == 999_980
    assert peak < 5 * w.num_windows + (1 << 20)  # the int32 permutation plus one batch


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
        assert np.array_equal(batches[k + 1].x[:, 0], batches[k].x[:, -1] + 1)  # row b continues
    rows = np.concatenate([b.x for b in batches], axis=1)  # (B, 240)
    assert np.array_equal(rows, np.arange(4)[:, None] * 249 + np.arange(240))
    assert [b.x.tolist() for b in s.batches(3, start=20)] == [b.x.tolist() for b in batches[20:]]


def test_streams_too_short():
    with pytest.raises(CorpusError, match="at least 641"):
        batching.Streams(np.zeros(640), batch_size=64, seq_len=10)


def test_padded_batches_eos_both_ends_and_mask():
    seqs = [np.array([5, 6, 7]), np.array([8]), np.array([], dtype=int), np.array([9, 9, 9, 9, 9, 9])]
    p = batching.Padded(seqs, eos_id=2, pad_id=0, batch_size=3, maxlen=5, shuffle=False)
    assert p.num_sequences == 3 and p.num_batches == 1  # the empty one is dropped
    b = next(p.batches(0))
    assert b.x.tolist() == [[2, 5, 6, 7, 0], [2, 8, 0, 0, 0], [2, 9, 9, 9, 9]]
    assert b.y.tolist() == [[5, 6, 7, 2, 0], [8, 2, 0, 0, 0], [9, 9, 9, 9, 9]]  # cut at maxlen: no <eos>
    assert b.mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert b.targets == 11
    assert p.random_prompt(np.random.default_rng()).tolist() == [2]


def test_padded_shuffles_by_seed_and_epoch_and_visits_each_once():
    seqs = [np.full(i % 7 + 1, i) for i in range(50)]
    p = batching.Padded(seqs, eos_id=2, pad_id=0, batch_size=8, seed=4)
    firsts = lambda epoch: sorted(int(x) for b in p.batches(epoch) for x in b.x[:, 1])  # noqa: E731
    assert firsts(0) == list(range(50))
    order = lambda epoch: [b.x[:, 1].tolist() for b in p.batches(epoch)]  # noqa: E731
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
    assert a["fingerprint"] != b["fingerprint"] and {k: v for k, v in a.items() if k != "fingerprint"} == {
        k: v for k, v in b.items() if k != "fingerprint"
    }


def _ids(n=50, length=11, vocab=300, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab, (n, length)).astype(np.uint16)
    lengths = rng.integers(1, length + 1, n)
    ids[np.arange(length) >= lengths[:, None]] = 0  # padding at the end, as vectorize makes it
    return ids


def test_vectorized_batches_shift_mask_and_targets():
    ids = _ids()
    v = batching.Vectorized(ids, batch_size=8, shuffle=False)
    assert (v.num_sequences, v.length, v.num_batches) == (50, 11, 7) and v.ids.dtype == np.uint16
    assert (v.stateful, v.last_only, v.eos_id) == (False, False, None)
    batches = list(v.batches(0))
    assert [len(b.x) for b in batches] == [8] * 6 + [2]
    x = np.concatenate([b.x for b in batches])
    y = np.concatenate([b.y for b in batches])
    assert x.dtype == y.dtype == np.int64 and x.shape == (50, 10)
    assert np.array_equal(x, ids[:, :-1]) and np.array_equal(y, ids[:, 1:])
    for b in batches:
        assert np.array_equal(b.mask, b.x != 0) and b.targets == int((b.x != 0).sum())
    assert sum(b.targets for b in batches) == int((ids[:, :-1] != 0).sum())


def test_vectorized_shuffle_is_a_function_of_seed_and_epoch_and_resumes():
    ids = _ids(n=100)
    v = batching.Vectorized(ids, batch_size=16, seed=3)
    first = [b.x for b in v.batches(0)]
    again = [b.x for b in batching.Vectorized(ids, batch_size=16, seed=3).batches(0)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=False)) and len(first) == 7
    assert not np.array_equal(first[0], next(v.batches(1)).x)
    assert not np.array_equal(first[0], next(batching.Vectorized(ids, batch_size=16, seed=4).batches(0)).x)
    tail = [b for b in v.batches(0, start=4)]
    assert len(tail) == 3 and all(np.array_equal(a, b.x) for a, b in zip(first[4:], tail, strict=False))
    rows = sorted(map(tuple, np.concatenate(first)))
    assert rows == sorted(map(tuple, ids[:, :-1].astype(np.int64)))  # each review once per epoch


def test_vectorized_config_prompt_and_checks():
    ids = _ids()
    v = batching.Vectorized(ids, batch_size=8)
    c = v.config
    assert c["kind"] == "vectorized" and c["length"] == 11 and c["num_batches"] == 7 and len(c["fingerprint"]) == 64
    assert c["fingerprint"] != batching.Vectorized(_ids(seed=1), batch_size=8).config["fingerprint"]
    prompt = v.random_prompt(np.random.default_rng(0))
    assert prompt.dtype == np.int64 and 1 <= len(prompt) <= 2 and (prompt != 0).all()
    with_empty = np.vstack([ids, np.zeros((3, 11), np.uint16)])
    assert batching.Vectorized(with_empty).num_sequences == 50  # all-padding rows hold no target
    with pytest.raises(CorpusError, match="no review"):
        batching.Vectorized(np.zeros((4, 11), np.uint16))
    with pytest.raises(CorpusError, match="matrix"):
        batching.Vectorized(np.arange(10))
    with pytest.raises(CorpusError):
        batching.Vectorized(ids.astype(float))
    with pytest.raises(CorpusError, match="batch size"):
        batching.Vectorized(ids, batch_size=0)


def test_random_windows_are_get_batch_windows_drawn_by_seed_epoch_and_batch():
    """Issue 23 §1: x = ids[i:i+T], y = ids[i+1:i+T+1] from random starts; batch k of epoch e is a function of
    (seed, e, k) alone, so resuming from batch k gives the same batches; an epoch is N // (B·T) batches."""
    ids = np.arange(1000) % 251
    r = batching.RandomWindows(ids, batch_size=4, seq_len=10, seed=3)
    assert r.num_batches == 1000 // 40 and not r.stateful and not r.last_only
    epoch = list(r.batches(1))
    assert len(epoch) == r.num_batches
    for k, b in enumerate(epoch):
        starts = r.starts(1, k)
        assert b.x.shape == b.y.shape == (4, 10) and b.targets == 40 and b.mask is None
        np.testing.assert_array_equal(b.x, ids[starts[:, None] + np.arange(10)])
        np.testing.assert_array_equal(b.y, ids[starts[:, None] + np.arange(1, 11)])
        assert starts.min() >= 0 and starts.max() <= 1000 - 11
    again = list(batching.RandomWindows(ids, 4, 10, seed=3).batches(1, start=5))
    for a, b in zip(epoch[5:], again, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(next(r.batches(2)).x, epoch[0].x)  # a new draw each epoch
    assert not np.array_equal(next(batching.RandomWindows(ids, 4, 10, seed=4).batches(1)).x, epoch[0].x)
    assert batching.RandomWindows(ids, 4, 10, num_batches=7).num_batches == 7
    assert batching.RandomWindows(ids[:30], 4, 10).num_batches == 1  # less than one batch's worth of tokens


def test_random_windows_reach_every_start_and_check_their_input():
    ids = np.arange(12)
    r = batching.RandomWindows(ids, batch_size=8, seq_len=10, num_batches=50)
    seen = {int(s) for k in range(50) for s in r.starts(0, k)}
    assert seen == {0, 1}  # the last window's target is the last token
    assert (
        r.config["kind"] == "random"
        and r.config["fingerprint"] != batching.RandomWindows(ids[::-1], 8, 10).config["fingerprint"]
    )
    assert len(r.random_prompt(np.random.default_rng(0), 5)) == 5
    with pytest.raises(CorpusError, match="at least 11"):
        batching.RandomWindows(np.arange(10), 2, 10)
    with pytest.raises(CorpusError, match="integers"):
        batching.RandomWindows(np.arange(20.0), 2, 10)


@pytest.mark.parametrize(("n", "B", "T"), [(2, 4, 3), (50, 4, 5), (53, 4, 5), (101, 3, 100), (12, 1, 4)])
def test_whole_scores_every_target_once_in_order(n, B, T):
    """Issue 23 §4: the streams of Whole cover targets 1 … N-1 once each, each stream consecutive from one
    batch to the next; the mask marks exactly the steps past a stream's end."""
    ids = (np.arange(n) * 7) % 97
    w = batching.Whole(ids, B, T)
    seen, rows = [], [[] for _ in range(w.batch_size)]
    batches = list(w.batches())
    assert len(batches) == w.num_batches
    for b in batches:
        real = np.ones(b.x.shape, bool) if b.mask is None else b.mask
        assert b.targets == real.sum() and b.x.shape[1] <= T
        for r in range(len(b.x)):
            rows[r] += [(int(x), int(y)) for x, y in zip(b.x[r][real[r]], b.y[r][real[r]], strict=True)]
    for r in rows:
        seen += r
    assert seen == [(int(ids[i]), int(ids[i + 1])) for i in range(n - 1)]
    assert sum(b.targets for b in batches) == w.targets == n - 1
    with pytest.raises(CorpusError, match="at least 2"):
        batching.Whole(np.arange(1), 4, 5)
