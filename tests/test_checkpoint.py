"""Checkpoints: round trips, resuming exactly, atomic writes, and files that must be refused."""

import importlib.util
import io
import json
import os
import zipfile

import numpy as np
import pytest

from scratchlm import CheckpointError, LanguageModel, checkpoint, models, optim
from scratchlm.backend import Backend


def trained(tmp_path=None):
    model = LanguageModel(11, embedding_dim=5, hidden_sizes=[8, 6], seed=1)
    opt = optim.Adam(lr=0.01, global_clipnorm=1.0)
    rng = Backend.rng(9)
    for _ in range(3):
        x = rng.integers(0, 11, (4, 7))
        _, grads = model.loss_and_grads(x, np.roll(x, -1, 1))
        opt.step(model.params, grads)
    return model, opt, rng


def test_round_trip_restores_everything(tmp_path):
    model, opt, rng = trained()
    path = tmp_path / "run" / "model.npz"
    model.save(path, optimizer=opt, rng=rng, metadata={"epoch": 3, "note": "ok"})
    ck = models.load(path)
    assert ck.model.config == model.config
    for name, p in model.params.items():
        np.testing.assert_array_equal(ck.model.params[name], p)
        assert ck.model.params[name].dtype == p.dtype
    assert ck.metadata == {"epoch": 3, "note": "ok"}
    assert ck.optimizer.iterations == opt.iterations == 3
    assert ck.rng.bit_generator.state == rng.bit_generator.state
    x = np.arange(14).reshape(2, 7) % 11
    np.testing.assert_array_equal(ck.model.forward(x)[0], model.forward(x)[0])
    assert LanguageModel.load(path).config == model.config


def test_resume_continues_exactly(tmp_path):
    """Training 3 steps, saving, loading and training 3 more == training 6 steps straight."""

    def steps(model, opt, rng, n):
        losses = []
        for _ in range(n):
            x = rng.integers(0, 11, (4, 7))
            loss, grads = model.loss_and_grads(x, np.roll(x, -1, 1))
            opt.step(model.params, grads)
            losses.append(loss)
        return losses

    model, opt, rng = trained()
    model.save(tmp_path / "ck.npz", optimizer=opt, rng=rng)
    straight = steps(model, opt, rng, 3)
    ck = models.load(tmp_path / "ck.npz")
    resumed = steps(ck.model, ck.optimizer, ck.rng, 3)
    assert resumed == straight
    for name, p in model.params.items():
        np.testing.assert_array_equal(ck.model.params[name], p)


def test_float64_model_round_trip(tmp_path):
    model = LanguageModel(5, hidden_sizes=[3], dtype="float64", stateful=True)
    model.save(tmp_path / "m.npz")
    loaded = LanguageModel.load(tmp_path / "m.npz")
    assert loaded.backend.dtype == np.float64 and loaded.stateful and loaded.embedding is None


def test_overwrite_is_atomic_and_leaves_no_temp_file(tmp_path, monkeypatch):
    model, opt, _ = trained()
    path = tmp_path / "model.npz"
    model.save(path)
    good = path.read_bytes()

    def exploding_savez(f, **arrays):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(checkpoint.numpy, "savez", exploding_savez)
    with pytest.raises(KeyboardInterrupt):
        model.save(path, optimizer=opt)
    assert path.read_bytes() == good  # the old checkpoint is intact
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]  # and no temporary file is left


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        LanguageModel.load(tmp_path / "nope.npz")
    with pytest.raises(CheckpointError, match="not a file"):
        LanguageModel.load(tmp_path)


def test_truncated_file(tmp_path):
    model, _, _ = trained()
    path = tmp_path / "m.npz"
    model.save(path)
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 5):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            LanguageModel.load(path)


def test_garbage_and_foreign_files(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError):
        LanguageModel.load(junk)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.ones(3))
    with pytest.raises(CheckpointError, match="not a scratchlm checkpoint"):
        LanguageModel.load(foreign)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        LanguageModel.load(text)


def _rewrite(path, dest, change):
    """Copy a checkpoint, letting ``change(arrays, header)`` edit its contents."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(arrays.pop("header.json").tobytes())
    change(arrays, header)
    arrays["header.json"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(dest, **arrays)


def test_wrong_version_missing_or_misshapen_parameters(tmp_path):
    model, _, _ = trained()
    path = tmp_path / "m.npz"
    model.save(path)
    cases = {
        "version": lambda a, h: h.update(version=99),
        "missing": lambda a, h: a.pop("param/dense/bias"),
        "shape": lambda a, h: a.update({"param/dense/bias": np.zeros(3, np.float32)}),
        "config": lambda a, h: h["model"].update(hidden_sizes="many"),
    }
    for name, change in cases.items():
        dest = tmp_path / f"{name}.npz"
        _rewrite(path, dest, change)
        with pytest.raises(CheckpointError):
            LanguageModel.load(dest)


def test_pickled_payload_is_never_unpickled(tmp_path):
    """An .npz whose arrays need unpickling is refused, never executed."""
    path = tmp_path / "evil.npz"
    evil = np.array([{"payload": 1}], dtype=object)
    buf = io.BytesIO()
    np.save(buf, evil, allow_pickle=True)
    model, _, _ = trained()
    model.save(path)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("param/dense/extra.npy", buf.getvalue())
    with pytest.raises(CheckpointError, match="pickle|Object arrays"):
        LanguageModel.load(path)


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("cupy") is None, reason="needs CuPy and a GPU")
def test_loads_across_backends(tmp_path):
    model, _, _ = trained()
    model.save(tmp_path / "m.npz")
    gpu = LanguageModel.load(tmp_path / "m.npz", backend="cupy")
    x = np.arange(14).reshape(2, 7) % 11
    np.testing.assert_allclose(gpu.backend.to_host(gpu.forward(x)[0]), model.forward(x)[0], atol=1e-5)
    gpu.save(tmp_path / "g.npz")
    back = LanguageModel.load(tmp_path / "g.npz", backend="numpy")
    for name, p in model.params.items():
        np.testing.assert_array_equal(back.params[name], p)


def test_version_1_files_written_before_model_kinds_still_load(tmp_path):
    """Version 1 headers hold no model kind: they are LSTM LanguageModels."""
    model = LanguageModel(9, 4, [6, 5], seed=3)
    model.save(tmp_path / "v2.npz", optimizer=optim.Adam())

    def as_version_1(arrays, header):
        header["version"] = 1
        del header["model"]["kind"], header["model"]["cell"]

    _rewrite(tmp_path / "v2.npz", tmp_path / "v1.npz", as_version_1)
    loaded = models.load(tmp_path / "v1.npz")
    assert type(loaded.model) is LanguageModel and loaded.model.config == model.config
    assert all(np.array_equal(loaded.model.params[k], p) for k, p in model.params.items())
