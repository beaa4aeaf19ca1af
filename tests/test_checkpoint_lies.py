"""Checkpoints that lie (issue 9): a header describing a model its arrays do not hold, arrays of the wrong
dtype or nobody's, metadata of the wrong shape. Each is refused with one line on stderr and exit code 2 by
`scratchlm info`, `sample` and `train --resume`, before anything is built or allocated, and every file in
the run directory stays byte for byte as it was. Checkpoints that tell the truth load exactly as before.
"""

import contextlib
import io
import json
import os
import shutil
import tracemalloc
import zipfile

import numpy as np
import pytest
from numpy.lib import format as npy_format
from test_checkpoint import _rewrite
from test_cli import cli, fails, snapshot

from scratchlm import CheckpointError, LanguageModel, budget, checkpoint, models, optim
from scratchlm.backend import Backend
from scratchlm.cli import main
from scratchlm.train.resume import encode_array

TEXT = (
    "It was the best of times, it was the worst of times; it was the age of wisdom, it was the age of foolishness.\n"
) * 40
B, HIDDEN = 4, [16, 12]
TINY = ["--hidden", *HIDDEN, "--embedding-dim", 8, "--batch-size", B, "--seq-len", 16, "--no-progress"]
COMMANDS = {"info": ["info"], "sample": ["sample", "--length", 5], "resume": ["train", "--resume"]}


def rewrite(path, change):
    """Rewrite the checkpoint at ``path`` in place, letting ``change(arrays, header)`` edit its contents."""
    _rewrite(path, path, change)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A stateful two-layer character run stopped mid-epoch: last.npz holds a position and a carried state."""
    root = tmp_path_factory.mktemp("lies")
    corpus = root / "dickens.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(
            [
                str(a)
                for a in ["train", corpus, "--run-dir", root / "run", "--max-steps", 12, "--sample-length", 0, *TINY]
            ]
        )
    assert code == 0
    return root / "run"


@pytest.fixture
def run(trained, tmp_path):
    """A fresh copy of the trained run directory."""
    return shutil.copytree(trained, tmp_path / "run")


def check_refused(capsys, run, change, refused, *words):
    """Make last.npz lie with ``change``: the commands in ``refused`` fail with one line naming ``words``, the
    other read-only ones still work, and no file of the run changes."""
    rewrite(run / "last.npz", change)
    before = snapshot(run)
    for name, argv in COMMANDS.items():
        if name in refused:
            fails(cli(capsys, *argv, run), *words)
        elif name != "resume":  # a resume that works would train on
            code, _, err = cli(capsys, *argv, run)
            assert code == 0, err
    assert snapshot(run) == before


def model(**fields):
    return lambda arrays, header: header["model"].update(fields)


def top(**fields):
    return lambda arrays, header: header.update(fields)


def without(field):
    return lambda arrays, header: header["model"].pop(field)


def arrays_as(dtype, which="param/"):
    def change(arrays, header):
        for key in arrays:
            if key.startswith(which):
                arrays[key] = arrays[key].astype(dtype)

    return change


def put(key, value):
    return lambda arrays, header: arrays.update({key: value})


def drop(key):
    return lambda arrays, header: arrays.pop(key)


def optimizer(**fields):
    return lambda arrays, header: header["optimizer"].update(fields)


EVERYWHERE = {"info", "sample", "resume"}
HEADER_LIES = {
    "an LSTM of 10^9 units": (model(hidden_sizes=[10**9, 12]), ["hidden_sizes", "param/lstm_0/kernel"]),
    "an extra layer": (model(hidden_sizes=HIDDEN + [8]), ["parameter arrays", "hidden_sizes"]),
    "a layer fewer": (model(hidden_sizes=HIDDEN[:1]), ["parameter arrays"]),
    "another vocabulary size": (model(vocab_size=26), ["param/embedding/embeddings", "vocab_size=26"]),
    "one-hot input": (model(embedding_dim=None), ["parameter arrays", "embedding_dim=None"]),
    "another embedding size": (model(embedding_dim=9), ["param/embedding/embeddings", "shape (25, 8)"]),
    "wider layers": (model(hidden_sizes=[16, 13]), ["param/lstm_1/kernel", "hidden_sizes=[16, 13]"]),
    "hidden_sizes a string": (model(hidden_sizes="many"), ["'hidden_sizes'", "'many'"]),
    "no hidden_sizes": (model(hidden_sizes=[]), ["'hidden_sizes'", "non-empty"]),
    "a layer of 0 units": (model(hidden_sizes=[16, 0]), ["'hidden_sizes'"]),
    "float layer sizes": (model(hidden_sizes=[16.0, 12]), ["'hidden_sizes'"]),
    "vocab_size true": (model(vocab_size=True), ["'vocab_size'"]),
    "negative vocab_size": (model(vocab_size=-3), ["'vocab_size'", "-3"]),
    "dtype float16": (model(dtype="float16"), ["'dtype'", "'float16'"]),
    "dtype float64, arrays float32": (model(dtype="float64"), ["param/", "float32", "float64"]),
    "stateful 'yes'": (model(stateful="yes"), ["'stateful'"]),
    "negative seed": (model(seed=-1), ["'seed'"]),
    "no seed": (without("seed"), ["no field 'seed'"]),
    "an unknown model field": (model(attention_heads=2), ["attention_heads"]),
    "a dropout rate of 1.5": (model(dropout=1.5), ["'dropout'", "[0, 0.99]"]),
    "model a list": (top(model=[1, 2]), ["model config", "JSON object"]),
    "version true": (top(version=True), ["version True"]),
    "an unknown header field": (top(extra=1), ["extra"]),
    "metadata a list": (top(metadata=["tokenizer"]), ["metadata", "JSON object"]),
    "metadata a string": (top(metadata="tokenizer"), ["metadata"]),
    "metadata a number": (top(metadata=3), ["metadata"]),
    "no metadata": (lambda a, h: h.pop("metadata"), ["metadata"]),
    "rng garbage": (top(rng={"bit_generator": "Nope"}), ["RNG"]),
}
ARRAY_LIES = {
    "int64 parameters": (arrays_as(np.int64), ["int64", "float32"]),
    "float16 parameters": (arrays_as(np.float16), ["float16"]),
    "complex parameters": (arrays_as(np.complex64), ["complex64"]),
    "bool parameters": (arrays_as(bool), ["bool"]),
    "float64 parameters in a float32 model": (arrays_as(np.float64), ["float64", "float32"]),
    "float64 optimizer slots": (arrays_as(np.float64, "optimizer/"), ["optimizer/", "float64"]),
    "a parameter of the wrong shape": (put("param/dense/bias", np.zeros(7, np.float32)), ["param/dense/bias"]),
    "a missing parameter": (drop("param/lstm_1/bias"), ["parameter arrays"]),
    "a renamed parameter": (
        lambda a, h: a.update({"param/lstm_1/biases": a.pop("param/lstm_1/bias")}),
        ["param/lstm_1/bias"],
    ),
    "an extra parameter": (put("param/lstm_0/extra", np.zeros(3, np.float32)), ["parameter arrays"]),
    "an unknown array": (put("notes", np.zeros(3, np.float32)), ["unexpected array notes"]),
    "a slot of no parameter": (
        put("optimizer/m/lstm_9/kernel", np.zeros(3, np.float32)),
        ["unexpected array optimizer/m/lstm_9/kernel"],
    ),
    "a slot Adam does not keep": (
        put("optimizer/velocity/dense/bias", np.zeros(25, np.float32)),
        ["unexpected array optimizer/velocity/dense/bias", "adam keeps m, v, vhat"],
    ),
    "a slot of the wrong shape": (put("optimizer/m/dense/bias", np.zeros(3, np.float32)), ["optimizer/m/dense/bias"]),
    "an int slot": (put("optimizer/v/dense/bias", np.zeros(25, np.int32)), ["optimizer/v/dense/bias", "int32"]),
    "slots without an optimizer": (top(optimizer=None), ["unexpected array optimizer/", "none is saved"]),
}
OPTIMIZER_LIES = {
    "an unknown optimizer": (optimizer(name="lion"), ["lion"]),
    "a negative lr": (optimizer(lr=-1), ["lr"]),
    "lr a string": (optimizer(lr="fast"), ["lr"]),
    "negative iterations": (optimizer(iterations=-3), ["'iterations'"]),
    "no iterations": (lambda a, h: h["optimizer"].pop("iterations"), ["'iterations'"]),
    "amsgrad 'yes'": (optimizer(amsgrad="yes"), ["amsgrad", "'yes'"]),
    "an unknown hyperparameter": (optimizer(warmup=5), ["warmup"]),
    "optimizer a list": (top(optimizer=["adam"]), ["optimizer state", "JSON object"]),
    "iterations of 400 digits": (optimizer(iterations=10**400), ["'iterations'", "2**63", "..."]),
}


@pytest.mark.parametrize("case", [*HEADER_LIES, *ARRAY_LIES, *OPTIMIZER_LIES])
def test_header_and_array_lies_are_refused_everywhere(run, capsys, case):
    change, words = {**HEADER_LIES, **ARRAY_LIES, **OPTIMIZER_LIES}[case]
    check_refused(capsys, run, change, EVERYWHERE, "last.npz", *words)


def test_a_huge_header_allocates_nothing(run, capsys):
    """hidden_sizes [10^9] would need 238 GiB - 1.7 TiB: refused using a few MB."""
    rewrite(run / "last.npz", model(hidden_sizes=[10**9, 12]))
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="hidden_sizes"):
            models.load(run / "last.npz")
        for argv in COMMANDS.values():
            fails(cli(capsys, *argv, run), "hidden_sizes")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6


def test_thousands_of_layers_in_the_header_are_refused_before_listing_them(run, capsys, monkeypatch):
    stored = sum(key.startswith("param/") for key in models.read(run / "last.npz")[1])
    rewrite(run / "last.npz", model(hidden_sizes=[16] * 10**6))
    listed = []
    shapes = LanguageModel.parameter_shapes

    def counted(config):
        for item in shapes(config):
            listed.append(item)
            yield item

    monkeypatch.setattr(LanguageModel, "parameter_shapes", staticmethod(counted))
    fails(cli(capsys, "info", run), "parameter arrays")
    assert len(listed) == stored + 1  # stopped one past the stored arrays


def metadata(**fields):
    return lambda arrays, header: header["metadata"].update(fields)


def position(**fields):
    return lambda arrays, header: header["metadata"]["train"].update(fields)


def tokenizer(**fields):
    return lambda arrays, header: header["metadata"]["tokenizer"].update(fields)


METADATA_LIES = {  # lie -> (change, commands that refuse it, words of the message)
    "position a list": (metadata(train=[0, 0]), {"info", "resume"}, ["metadata['train']", "JSON object"]),
    "position without step": (lambda a, h: h["metadata"]["train"].pop("step"), {"info", "resume"}, ["no field 'step'"]),
    "epoch a string": (position(epoch="3"), {"info", "resume"}, ["'epoch'", "'3'"]),
    "a negative batch": (position(batch=-1), {"info", "resume"}, ["'batch'", "-1"]),
    "fractional targets": (position(epoch_targets=1.5), {"info", "resume"}, ["'epoch_targets'"]),
    "best_val_loss a string": (position(best_val_loss="low"), {"info", "resume"}, ["'best_val_loss'"]),
    "history not a list": (position(history="none"), {"info", "resume"}, ["'history'"]),
    "a broken epoch record": (position(history=[{"epoch": 1}]), {"info", "resume"}, ["record 0", "'step'"]),
    "a batch beyond the data": (position(batch=10**6), {"resume"}, ["1,000,000", "beyond"]),
    "a step count of 400 digits": (position(step=10**400), {"info", "resume"}, ["'step'"]),
    "tokenizer a list": (metadata(tokenizer=["a", "b"]), EVERYWHERE, ["tokenizer", "list"]),
    "tokenizer without chars": (lambda a, h: h["metadata"]["tokenizer"].pop("chars"), EVERYWHERE, ["'chars'"]),
    "chars a string": (tokenizer(chars="abc"), EVERYWHERE, ["'chars'", "'abc'"]),
    "lower 'no'": (tokenizer(lower="no"), EVERYWHERE, ["'lower'", "'no'"]),
    "an unknown tokenizer kind": (tokenizer(kind="unigram"), EVERYWHERE, ["'unigram'"]),
}


@pytest.mark.parametrize("case", METADATA_LIES)
def test_metadata_lies_are_refused_where_they_are_read(run, capsys, case):
    change, refused, words = METADATA_LIES[case]
    check_refused(capsys, run, change, refused, *words)


def test_data_settings_of_the_wrong_shape_are_refused(run, capsys):
    rewrite(run / "last.npz", metadata(data="streams"))
    before = snapshot(run)
    fails(cli(capsys, "info", run), "metadata['data']")
    fails(cli(capsys, "train", "--resume", run), "metadata['data']")
    assert snapshot(run) == before


def test_sample_refuses_data_settings_of_the_wrong_shape(run, capsys):
    rewrite(run / "last.npz", metadata(data="streams"))
    fails(cli(capsys, "sample", run), "metadata['data']")


def test_settings_of_the_wrong_shape_are_refused_by_info_and_resume(run, capsys):
    check_refused(capsys, run, metadata(cli=["corpus"]), {"info", "resume"}, "metadata['cli']")


def settings(**fields):
    return lambda arrays, header: header["metadata"]["cli"].update(fields)


@pytest.mark.parametrize(
    "change, words",
    [
        (settings(batch_size="64"), ["'batch_size'", "'64'"]),
        (settings(batching="bpe"), ["'batching'"]),
        (settings(temperature=[-1]), ["'temperature'"]),
        (settings(val_fraction=2), ["'val_fraction'"]),
        (lambda a, h: h["metadata"]["cli"].pop("corpus"), ["'corpus'", "got nothing"]),
        (lambda a, h: h["metadata"].pop("tokenizer"), ["no tokenizer"]),
    ],
    ids=["batch size a string", "unknown batching", "negative temperature", "fraction 2", "no corpus", "no tokenizer"],
)
def test_settings_that_lie_are_refused_by_resume(run, capsys, change, words):
    rewrite(run / "last.npz", change)
    before = snapshot(run)
    fails(cli(capsys, "train", "--resume", run), *words)
    assert snapshot(run) == before


CONTRADICTIONS = {  # the run's settings (metadata['cli']) against its model, tokenizer or data -> words
    "a sequence length its data do not have": (
        settings(seq_len=10**9),
        ["seq_len 1000000000", "its data (metadata['data']) has 16"],
    ),
    "another batch size": (settings(batch_size=8), ["batch_size 8", "its data (metadata['data']) has 4"]),
    "another batching": (settings(batching="windows"), ["batching 'windows'", "has 'streams'"]),
    "other layers": (settings(hidden=[32]), ["hidden [32]", "the model in its header has [16, 12]"]),
    "another cell": (settings(cell="gru"), ["cell 'gru'", "has 'lstm'"]),
    "one-hot input": (settings(embedding_dim=0), ["embedding_dim None", "has 8"]),
    "dropout": (settings(dropout=0.5), ["dropout 0.5", "has 0.0"]),
    "float64": (settings(dtype="float64"), ["dtype 'float64'", "has 'float32'"]),
    "a transformer": (settings(model="transformer"), ["model 'transformer'", "has 'recurrent'"]),
    "words": (settings(tokenizer="word"), ["tokenizer 'word'", "its tokenizer (metadata['tokenizer']) has 'char'"]),
    "lower-cased": (settings(lower=True), ["lower True", "has False"]),
    "a sequence length of 400 digits": (settings(seq_len=10**400), ["'seq_len'", "2**63", "..."]),
    "epochs beyond 2**63": (settings(epochs=2**63), ["'epochs'", "2**63"]),
    "a learning rate of 0": (settings(lr=0), ["'lr'", "> 0"]),
    "hidden a number": (settings(hidden=16), ["'hidden'", "list"]),
}


@pytest.mark.parametrize("case", CONTRADICTIONS)
def test_settings_that_contradict_the_checkpoint_are_refused_by_resume(run, capsys, case):
    change, words = CONTRADICTIONS[case]
    check_refused(capsys, run, change, {"resume"}, "last.npz", *words)


def test_a_sequence_too_long_for_memory_is_refused_before_anything_is_built(run, capsys):
    """metadata['cli'] and metadata['data'] agree on 10^9 tokens a chunk: resume cannot fit, says so, allocates
    nothing, and names the size the run fixed."""

    def longer(arrays, header):
        header["metadata"]["cli"]["seq_len"] = header["metadata"]["data"]["seq_len"] = 10**9

    rewrite(run / "last.npz", longer)
    before = snapshot(run)
    tracemalloc.start()
    try:
        err = fails(
            cli(capsys, "train", "--resume", run),
            "one training step's activations",
            "--batch-size 4, --seq-len 1,000,000,000",
            "resume it on a machine with more memory",
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6 and "the gradients" in err
    assert snapshot(run) == before


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    """A Transformer run stopped after 3 steps (sequences of 12 ids)."""
    root = tmp_path_factory.mktemp("transformer")
    corpus = root / "lines.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(
            [
                str(a)
                for a in [
                    "train",
                    corpus,
                    "--run-dir",
                    root / "run",
                    "--model",
                    "transformer",
                    "--embedding-dim",
                    8,
                    "--dense-dim",
                    16,
                    "--seq-len",
                    12,
                    "--batch-size",
                    4,
                    "--max-steps",
                    3,
                    "--sample-length",
                    0,
                    "--no-progress",
                ]
            ]
        )
    assert code == 0
    return root / "run"


@pytest.mark.parametrize(
    "change, words",
    [
        (settings(model="recurrent"), ["model 'recurrent'", "the model in its header has 'transformer'"]),
        (settings(seq_len=10**9), ["seq_len 1000000000", "the model in its header has 12"]),
        (settings(heads=3), ["heads 3", "has 2"]),
        (settings(key_dim=4), ["key_dim 4", "has 8"]),
        (settings(block="gpt"), ["block 'gpt'", "has 'book'"]),
    ],
    ids=["a recurrent model", "a sequence length", "heads", "key_dim", "block"],
)
def test_a_transformer_run_whose_settings_contradict_its_model_is_refused_by_resume(
    transformer, tmp_path, capsys, change, words
):
    run = shutil.copytree(transformer, tmp_path / "run")
    rewrite(run / "last.npz", change)
    before = snapshot(run)
    fails(cli(capsys, "train", "--resume", run), "last.npz", *words)
    for argv in (["info"], ["sample", "--prime", "it was", "--length", 5]):  # they do not read these settings
        code, _, err = cli(capsys, argv[0], run, *argv[1:])
        assert code == 0, err
    assert snapshot(run) == before


@pytest.mark.parametrize("command", ["info", "sample", "resume"])
def test_a_tokenizer_of_another_size_than_the_model_is_refused(run, capsys, command):
    rewrite(run / "last.npz", tokenizer(chars=list("abc")))
    fails(cli(capsys, *COMMANDS[command], run), "6 tokens, its model 25")


def carried(change):
    """A lie in the carried LSTM state: ``change(state)`` edits metadata['state'] (one [h, c] per layer)."""
    return lambda arrays, header: change(header["metadata"]["state"])


def encoded(shape, dtype=np.float32):
    return encode_array(np.zeros(shape, dtype))


STATE_LIES = {
    "state a dict": (metadata(state={"h": 0}), ["metadata['state']", "list of 2 entries"]),
    "a layer too many": (carried(lambda s: s.append(None)), ["metadata['state']"]),
    "a layer too few": (carried(lambda s: s.pop()), ["metadata['state']"]),
    "three arrays for a layer": (carried(lambda s: s[0].append(s[0][0])), ["metadata['state']", "[h, c]"]),
    "another batch size": (
        carried(lambda s: s[0].__setitem__(0, encoded((B + 1, 16)))),
        ["carried h of LSTM layer 0", "shape (4, 16)"],
    ),
    "another layer's width": (
        carried(lambda s: s[1].__setitem__(1, encoded((B, 16)))),
        ["carried c of LSTM layer 1", "shape (4, 12)"],
    ),
    "float64 state": (
        carried(lambda s: s[0].__setitem__(0, encoded((B, 16), np.float64))),
        ["LSTM layer 0", "float32", "'<f8'"],
    ),
    "int state": (carried(lambda s: s[0].__setitem__(0, encoded((B, 16), np.int32))), ["'<i4'"]),
    "a shape its bytes do not fill": (
        carried(lambda s: s[0][0].update(shape=[B, 16], base64="AAAA")),
        ["3 bytes instead of 256"],
    ),
    "base64 garbage": (carried(lambda s: s[0][0].update(base64="!!not base64!!")), ["base64"]),
    "an array of no known form": (carried(lambda s: s[0].__setitem__(0, [1, 2])), ["layer 0", "base64"]),
    "state in a model that is not stateful": (model(stateful=False), ["not stateful"]),
}


@pytest.mark.parametrize("case", STATE_LIES)
def test_carried_state_lies_are_refused_by_resume(run, capsys, case):
    change, words = STATE_LIES[case]
    check_refused(capsys, run, change, {"resume"}, *words)


# -- files that are no checkpoint at all ---------------------------------------------------------------------


def test_text_or_npy_files_are_no_npz_archive(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello, this is text\n")
    np.save(tmp_path / "weights.npy", np.ones(3))
    for name in ("notes.txt", "weights.npy"):
        with pytest.raises(CheckpointError, match="not an .npz archive") as info:
            models.load(tmp_path / name)
        assert "pickle" not in str(info.value)
        for argv in (["info"], ["sample"]):
            err = fails(cli(capsys, *argv, tmp_path / name), "not a scratchlm checkpoint", "not an .npz archive")
            assert "pickle" not in err
    (tmp_path / "empty.npz").write_bytes(b"")
    fails(cli(capsys, "info", tmp_path / "empty.npz"), "is empty")


def test_an_unreadable_file_says_so(run, capsys, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(checkpoint, "open", denied, raising=False)
    before = snapshot(run)
    for argv in COMMANDS.values():
        err = fails(cli(capsys, *argv, run), f"cannot read {run / 'last.npz'}: Permission denied (fix its permissions)")
        assert "corrupt" not in err
    assert snapshot(run) == before


def test_a_file_without_read_permission(run, capsys):
    path = run / "last.npz"
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user who reads files without read permission (root)")
        fails(cli(capsys, "info", run), "Permission denied (fix its permissions)")
    finally:
        path.chmod(0o644)


def npz(path, members):
    """Write a zip archive of raw ``members`` (name -> bytes)."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def npy_bytes(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_an_array_that_claims_more_than_its_entry_holds(tmp_path):
    claims = io.BytesIO()
    npy_format.write_array_header_1_0(claims, {"descr": "<f4", "fortran_order": False, "shape": (10**10,)})
    header = npy_bytes(np.frombuffer(json.dumps({"format": "scratchlm-checkpoint"}).encode(), np.uint8))
    npz(tmp_path / "big.npz", {"header.json.npy": header, "param/dense/bias.npy": claims.getvalue() + bytes(16)})
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="param/dense/bias claims shape"):  # 40 GB, from 16 bytes
            models.read(tmp_path / "big.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6


def test_entries_that_are_no_arrays_and_headers_that_are_no_json(run):
    path = run / "last.npz"
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("README.txt", b"hello")
    with pytest.raises(CheckpointError, match="unexpected entry 'README.txt'"):
        models.read(path)
    for raw, words in (
        (np.arange(3, dtype=np.int64), "not a byte string"),
        (np.frombuffer(b"[" * 100000 + b"]" * 100000, np.uint8), "unreadable checkpoint header"),
        (np.frombuffer(b"\xff\xfe{}", np.uint8), "unreadable checkpoint header"),
    ):
        np.savez(path, **{"header.json": raw})
        with pytest.raises(CheckpointError, match=words):
            models.read(path)


def test_arrays_larger_than_the_memory_available(run, capsys, monkeypatch):
    monkeypatch.setattr(budget, "available_bytes", lambda: 1000)
    before = snapshot(run)
    for argv in COMMANDS.values():
        fails(cli(capsys, *argv, run), "memory")
    assert snapshot(run) == before


# -- checkpoints that tell the truth ------------------------------------------------------------------------

CONFIGS = [
    dict(vocab_size=11, embedding_dim=5, hidden_sizes=[8, 6]),
    dict(vocab_size=7, embedding_dim=None, hidden_sizes=[4]),
    dict(vocab_size=9, embedding_dim=3, hidden_sizes=[5, 4, 3], dtype="float64", stateful=True, seed=None),
]
OPTIMIZERS = [
    None,
    optim.SGD(lr=0.1, momentum=0.9, nesterov=True),
    optim.RMSprop(centered=True, momentum=0.5),
    optim.Adam(amsgrad=True, global_clipnorm=1.0),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_parameter_shapes_and_description_match_the_model(config):
    model = LanguageModel(**config)
    assert list(LanguageModel.parameter_shapes(model.config)) == [(k, p.shape) for k, p in model.params.items()]
    assert models.describe(model.config) == repr(model)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: o.name if o else "none")
def test_what_save_writes_loads_exactly(tmp_path, config, opt):
    model = LanguageModel(**config)
    rng = Backend.rng(3)
    if opt is not None:
        opt = optim.from_state(*opt.state_dict())  # a fresh copy with the same settings
        for _ in range(2):
            x = rng.integers(0, model.vocab_size, (2, 5))
            model.reset_state()
            _, grads = model.loss_and_grads(x, np.roll(x, -1, 1))
            opt.step(model.params, grads)
    model.save(tmp_path / "m.npz", optimizer=opt, rng=rng, metadata={"note": [1, 2]})
    header, arrays = models.read(tmp_path / "m.npz")
    assert header["model"] == model.config and header["metadata"] == {"note": [1, 2]}
    ck = models.load(tmp_path / "m.npz")
    for name, p in model.params.items():
        assert ck.model.params[name].dtype == p.dtype
        np.testing.assert_array_equal(ck.model.params[name], p)
        np.testing.assert_array_equal(arrays[f"param/{name}"], p)
    if opt is not None:
        assert ck.optimizer.hyperparameters() == opt.hyperparameters() and ck.optimizer.iterations == 2
        assert sorted(ck.optimizer.slots) == sorted(opt.slots)
        for key, s in opt.slots.items():
            np.testing.assert_array_equal(ck.optimizer.slots[key], s)
    assert ck.rng.bit_generator.state == rng.bit_generator.state


def test_info_describes_the_model_as_loading_it_would(trained, capsys):
    code, out, err = cli(capsys, "info", trained)
    assert code == 0, err
    ck = models.load(trained / "last.npz")
    params = sum(p.size for p in ck.model.params.values())
    assert f"  {ck.model}, {params:,} parameters, stateful\n" in out
    assert f"  {ck.optimizer.name} (" in out and f"{ck.optimizer.iterations:,} steps" in out
