"""The memory budget of a training run (issue 21 §3, §6): what one step holds, measured against the estimates,
and `scratchlm train` refusing sizes that cannot fit with one line that lists each part, before it vectorizes,
encodes or allocates anything and before it writes a file.
"""

import gc
import tracemalloc

import numpy as np
import pytest
from test_cli import cli, fails

from scratchlm import LanguageModel, TransformerLM, budget, get_backend, optim
from scratchlm.datasets import imdb
from scratchlm.kernels.numba.parallel import workspace
from scratchlm.models.recurrent import CELLS
from scratchlm.text import CharTokenizer

WORDS = "the movie was great bad plot actor film good story long boring fun".split()


def measured_step(model, B, T, last_only=False):
    """Bytes the second training step of ``model`` on a (B, T) batch holds at its peak beyond the parameters'
    gradients (its work buffers released first, so that it allocates them again)."""
    V = model.vocab_size
    rng = np.random.default_rng(0)
    x = rng.integers(1, V, (B, T))
    x[:, T - T // 8 :] = 0  # some padding: it is token 0 of the Transformer
    y = rng.integers(0, V, (B,) if last_only else (B, T))
    opt = optim.get("adam", lr=1e-3)
    grads = sum(p.nbytes for p in model.params.values())
    for measured in (False, True):
        if measured:
            workspace.release()
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
        try:
            _, g = model.loss_and_grads(x, y, last_only=last_only, training=True)
            opt.step(model.params, g)
            del g
        finally:
            peak = tracemalloc.get_traced_memory()[1] - base if measured else 0
            tracemalloc.stop()
    return peak - grads


STEPS = {  # name -> (model, B, T, last_only)
    "lstm, token table": (lambda be: LanguageModel(80, 64, [256], backend=be), 64, 100, False),
    "two layers": (lambda be: LanguageModel(80, 64, [256, 128], backend=be), 32, 100, False),
    "one-hot, last step": (lambda be: LanguageModel(60, None, [128], backend=be), 128, 60, True),
    "words, no table": (lambda be: LanguageModel(3000, 32, [64], backend=be), 16, 50, False),
    "gru": (lambda be: LanguageModel(50, 16, [64], cell="gru", backend=be), 16, 50, False),
    "dropout": (lambda be: LanguageModel(50, 16, [64], dropout=0.2, backend=be), 32, 50, False),
    "transformer, book": (lambda be: TransformerLM(500, 200, 32, 64, 2, backend=be), 8, 199, False),
    "transformer, 2 gpt blocks": (
        lambda be: TransformerLM(500, 200, 32, 64, 2, 16, 2, "gpt", backend=be),
        8,
        199,
        False,
    ),
    "transformer, words": (lambda be: TransformerLM(3000, 50, 32, 64, 2, backend=be), 8, 49, False),
}


@pytest.mark.parametrize("kernels", ["fused", "reference"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", STEPS)
def test_the_estimate_of_a_step_follows_its_measured_peak(case, dtype, kernels):
    make, B, T, last_only = STEPS[case]
    model = make(get_backend("numpy", dtype, kernels))
    got = measured_step(model, B, T, last_only)
    estimate = budget.step_bytes(model.config, B, T, kernels == "fused", last_only)
    assert 1 / 1.5 <= estimate / got <= 1.5, (budget.human(estimate), budget.human(got))


def test_the_constants_are_the_code_s():
    xent_numba = pytest.importorskip("scratchlm.kernels.numba.xent")
    assert budget.LOSS_CHUNK == xent_numba.CHUNK
    assert budget.GATES == {name: cell.gates for name, cell in CELLS.items()}


def recurrent(V, E, hidden, cell="lstm"):
    return dict(
        kind="recurrent",
        cell=cell,
        vocab_size=V,
        embedding_dim=E,
        hidden_sizes=hidden,
        dtype="float32",
        stateful=True,
        seed=0,
        dropout=0.0,
    )


SEED = dict(
    kind="transformer",
    vocab_size=15000,
    sequence_length=100,
    embed_dim=256,
    dense_dim=2048,
    num_heads=2,
    key_dim=256,
    num_layers=1,
    block="book",
    dtype="float32",
    seed=0,
)


@pytest.mark.parametrize(
    "config, B, T, last_only",
    [
        (recurrent(80, 64, [256]), 64, 100, False),  # the CLI's defaults, characters
        (recurrent(10000, 100, [256]), 64, 100, False),  # words
        (recurrent(60, None, [128]), 128, 60, True),  # examples/nietzsche_char.py, the book's model
        (recurrent(65, 256, [1024]), 64, 100, False),  # examples/shakespeare_char.py
        (recurrent(100, 64, [256]), 32, 200, False),  # padded titles
        (SEED, 32, 99, False),  # examples/imdb_transformer.py, the seed
    ],
    ids=["chars", "words", "book", "shakespeare", "titles", "imdb"],
)
def test_the_documented_configurations_need_less_than_a_gigabyte_a_step(config, B, T, last_only):
    for fused in (True, False):
        assert budget.step_bytes(config, B, T, fused, last_only) < 1 << 30


def test_the_attention_grows_with_the_square_of_the_sequence_and_with_the_heads():
    words = {**SEED, "vocab_size": 100}
    short, long = (budget.step_bytes({**words, "sequence_length": T + 1}, 8, T, False) for T in (10**4, 10**5))
    assert 80 < long / short <= 100
    heads = budget.step_bytes({**words, "sequence_length": 10**5 + 1, "num_heads": 20}, 8, 10**5, False)
    assert 9 < heads / long <= 10
    fused = budget.step_bytes({**words, "sequence_length": 10**5 + 1}, 8, 10**5, True)
    assert fused >= 8 * 10**10  # the (B, T, T) mask the model builds


def test_parts_that_fit_pass_and_the_rest_are_listed_largest_first(monkeypatch):
    parts = [
        budget.Part("a batch", 3 << 20, "--batch-size 32"),
        budget.Part("the weights", 5 << 30, "--hidden 9"),
        budget.Part("the texts", 1 << 30, ""),
    ]
    monkeypatch.setattr(budget, "available_bytes", lambda: 7 << 30)
    budget.check_parts(parts, "training", "lower them")
    monkeypatch.setattr(budget, "available_bytes", lambda: None)  # unknown: nothing to say
    budget.check_parts(parts * 100, "training", "lower them")
    monkeypatch.setattr(budget, "available_bytes", lambda: 2 << 30)
    with pytest.raises(budget.ResourceError) as info:
        budget.check_parts(parts, "training", "lower them")
    assert str(info.value) == (
        "training would need about 6.0 GiB, but only 2.0 GiB of memory is available: the "
        "weights 5.0 GiB (--hidden 9); the texts 1.0 GiB; a batch 3.0 MiB (--batch-size 32); "
        "lower them"
    )
    assert budget.human(10**30) == "8.88e+14 PiB" and budget.human(1536) == "1.5 KiB"


# -- `scratchlm train` ------------------------------------------------------------------------------------


@pytest.fixture
def lines(tmp_path):
    """A corpus of one short review per line, for --model transformer."""
    rng = np.random.default_rng(0)
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS, rng.integers(3, 15))) for _ in range(300)) + "\n")
    return path


@pytest.fixture
def nothing_vectorized(monkeypatch):
    def vectorize(*args, **kwargs):
        raise AssertionError("vectorized a corpus the run cannot train on")

    monkeypatch.setattr(imdb, "vectorize", vectorize)


def refused_with_little_memory(capsys, *argv):
    """`scratchlm argv...` fails with one line, using at most 50 MB; returns the line."""
    tracemalloc.start()
    try:
        err = fails(cli(capsys, *argv))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6
    return err


@pytest.mark.parametrize("seq_len, unit", [(10**7, "PiB"), (10**5, "GiB")])
def test_a_transformer_sequence_that_cannot_fit_is_refused_before_vectorizing(
    tmp_path, lines, capsys, nothing_vectorized, seq_len, unit
):
    run = tmp_path / "run"
    err = refused_with_little_memory(
        capsys, "train", lines, "--model", "transformer", "--seq-len", seq_len, "--run-dir", run, "--no-progress"
    )
    activations = err.split("one training step's activations ")[1]
    assert activations.split(" (")[0].endswith(unit)
    assert activations.split(" (")[1].startswith(f"--batch-size 32, --seq-len {seq_len:,}, --heads 2")
    assert "the 300 texts as ids" in err and "lower the sizes of the largest part" in err
    assert not run.exists()  # no metrics.jsonl, no lock, no folder


def test_heads_that_cannot_fit_are_named(tmp_path, lines, capsys, nothing_vectorized):
    err = refused_with_little_memory(
        capsys, "train", lines, "--model", "transformer", "--heads", 10**11, "--run-dir", tmp_path / "run"
    )
    assert err.count("--heads 100,000,000,000") == 2  # in the weights and in the activations
    assert not (tmp_path / "run").exists()


def test_a_recurrent_sequence_that_cannot_fit_is_refused_before_encoding(tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("It was the best of times, it was the worst of times.\n" * 50)

    def encode(*args, **kwargs):
        raise AssertionError("encoded a corpus the run cannot train on")

    monkeypatch.setattr(CharTokenizer, "encode", encode)
    err = refused_with_little_memory(capsys, "train", corpus, "--seq-len", 10**7, "--run-dir", tmp_path / "run")
    assert "one training step's activations" in err and "--batch-size 64, --seq-len 10,000,000, --hidden 256" in err
    assert not (tmp_path / "run").exists()


def test_a_run_that_fits_trains_and_one_byte_less_is_refused(tmp_path, lines, capsys, monkeypatch):
    needs, check = [], budget.check_parts

    def counted(parts, what, fix):
        needs.append(sum(part.nbytes for part in parts))
        check(parts, what, fix)

    monkeypatch.setattr(budget, "check_parts", counted)
    argv = [
        "train",
        lines,
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
        2,
        "--sample-length",
        0,
        "--no-progress",
    ]
    code, _, err = cli(capsys, *argv, "--run-dir", tmp_path / "first")
    assert code == 0, err
    monkeypatch.setattr(budget, "available_bytes", lambda: needs[0] - 1)
    fails(cli(capsys, *argv, "--run-dir", tmp_path / "refused"), "training would need about")
    assert not (tmp_path / "refused").exists()
    monkeypatch.setattr(budget, "available_bytes", lambda: needs[0])
    code, _, err = cli(capsys, *argv, "--run-dir", tmp_path / "fits")
    assert code == 0, err
