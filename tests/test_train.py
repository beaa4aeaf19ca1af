"""The training loop: exact resume after a kill, the NaN guard, validation, samples, metrics.

Exactness is tested with exact float equality: a run killed in the middle of
an epoch and resumed from its last checkpoint must produce the very same
per-step losses, and end with the very same weights, as a run never
interrupted. Tiny models keep each run to a fraction of a second.
"""

import io
import json
import math

import numpy as np
import pytest

from scratchlm import LanguageModel, batching, optim
from scratchlm.text import CharTokenizer
from scratchlm.train import (
    BEST,
    LAST,
    METRICS,
    PLOT,
    ResumeError,
    Sampler,
    Trainer,
    TrainingDiverged,
    load_checkpoint,
    plot_metrics,
    read_metrics,
)

LINES = [
    "the quick brown fox",
    "jumps over the lazy dog",
    "a stitch in time",
    "saves nine",
    "all that glitters is not gold",
    "look before you leap",
    "many hands make light work",
    "the early bird catches the worm",
    "still waters run deep",
    "time and tide wait for no one",
    "an apple a day",
    "keeps the doctor away",
    "better late than never",
    "practice makes perfect",
    "when in rome",
    "do as the romans do",
    "every cloud has a silver lining",
    "fortune favours the bold",
    "knowledge is power",
    "the pen is mightier than the sword",
]
TEXT = ". ".join(LINES) + ". "
TOKENIZER = CharTokenizer.fit(TEXT)


class Killed(BaseException):
    """Stands for the process dying: nothing in the trainer catches it."""


def make(kind, seed=0):
    """(model, optimizer, batches) of a tiny run of each kind."""
    V = TOKENIZER.vocab_size
    ids = TOKENIZER.encode(TEXT * 2)
    if kind == "windows":
        return (
            LanguageModel(V, None, [8], seed=seed),
            optim.RMSprop(lr=0.01),
            batching.Windows(ids, maxlen=8, step=3, batch_size=16, seed=seed),
        )
    if kind == "streams":
        return (
            LanguageModel(V, 5, [8, 6], seed=seed, stateful=True),
            optim.Adam(lr=0.01, global_clipnorm=1.0),
            batching.Streams(ids, batch_size=4, seq_len=7),
        )
    sequences = [TOKENIZER.encode(line) for line in LINES]
    return (
        LanguageModel(V, 4, [8], seed=seed),
        optim.Adam(lr=0.01),
        batching.Padded(sequences, TOKENIZER.eos_id, TOKENIZER.pad_id, batch_size=3, seed=seed),
    )


def run(kind, run_dir=None, epochs=3, kill_at=None, resume=False, checkpoint_every=None, val=None, **kwargs):
    """Train (or resume) and return ({step: loss}, trainer); Killed at step ``kill_at``."""
    losses = {}

    def on_step(trainer):
        losses[trainer.step] = trainer.last_loss
        if trainer.step == kill_at:
            raise Killed

    model, opt, batches = make(kind)
    options = dict(
        run_dir=run_dir,
        epochs=epochs,
        checkpoint_every=checkpoint_every,
        on_step=on_step,
        progress=False,
        out=io.StringIO(),
        **kwargs,
    )
    if resume:
        trainer = Trainer.resume(load_checkpoint(run_dir), batches, val, **options)
    else:
        trainer = Trainer(model, opt, batches, val, metadata={"tokenizer": TOKENIZER.config}, **options)
    try:
        trainer.fit()
    except Killed:
        pass
    return losses, trainer


def same_weights(a, b):
    return all(np.array_equal(p, b.params[k]) for k, p in a.params.items())


@pytest.mark.parametrize("kind", ["windows", "streams", "padded"])
def test_killed_mid_epoch_then_resumed_continues_exactly(kind, tmp_path):
    full, reference = run(kind)
    n = make(kind)[2].num_batches
    kill_at = n + n // 2 + 1  # inside epoch 2 ...
    every = max(2, n // 3)
    if kill_at % every == 0:
        kill_at += 1  # ... and after a checkpoint, not on one
    before, killed = run(kind, tmp_path, kill_at=kill_at, checkpoint_every=every)
    saved = load_checkpoint(tmp_path).metadata["train"]
    assert n < saved["step"] < kill_at and saved["batch"] > 0 and saved["epoch"] == 1
    assert before == {s: full[s] for s in range(1, kill_at + 1)}

    after, resumed = run(kind, tmp_path, resume=True, checkpoint_every=every)
    assert min(after) == saved["step"] + 1 and max(after) == max(full)
    assert after == {s: full[s] for s in after}, "losses after resuming differ from the uninterrupted run"
    assert same_weights(resumed.model, reference.model)
    assert [e["loss"] for e in resumed.history] == [e["loss"] for e in reference.history]


def test_resume_restores_the_carried_state_of_streams(tmp_path):
    """Without the carried (h, c) the first step after resuming would differ: the test above is sensitive."""
    full, _ = run("streams")
    n = make("streams")[2].num_batches
    run("streams", tmp_path, kill_at=n + 3, checkpoint_every=n + 2)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.metadata["state"] is not None
    model, _, batches = make("streams")
    trainer = Trainer.resume(ckpt, batches, progress=False, out=io.StringIO(), max_steps=n + 3)
    for lstm in trainer.model.recurrent:
        lstm.reset_state()  # forget the carried state on purpose
    trainer.fit()
    assert trainer.last_loss != full[n + 3]


def test_resume_from_an_epoch_boundary_and_twice(tmp_path):
    full, reference = run("windows", epochs=4)
    n = make("windows")[2].num_batches
    run("windows", tmp_path, epochs=4, kill_at=n + 2)  # only the end-of-epoch-1 checkpoint
    assert load_checkpoint(tmp_path).metadata["train"]["step"] == n
    second, _ = run("windows", tmp_path, epochs=4, resume=True, kill_at=3 * n - 1, checkpoint_every=5)
    third, resumed = run("windows", tmp_path, epochs=4, resume=True, checkpoint_every=5)
    assert second == {s: full[s] for s in second} and third == {s: full[s] for s in third}
    assert max(third) == 4 * n and same_weights(resumed.model, reference.model)


def test_max_steps_stops_then_resume_goes_on(tmp_path):
    full, reference = run("padded")
    _, stopped = run("padded", tmp_path, max_steps=10)
    assert stopped.step == 10 and load_checkpoint(tmp_path).metadata["train"]["step"] == 10
    after, resumed = run("padded", tmp_path, resume=True)
    assert after == {s: full[s] for s in range(11, max(full) + 1)}
    assert same_weights(resumed.model, reference.model)


def test_validation_and_samples_do_not_change_training(tmp_path):
    plain, _ = run("streams")
    ids = TOKENIZER.encode(TEXT)
    val = batching.Streams(ids, batch_size=2, seq_len=7)
    busy, trainer = run("streams", tmp_path, val=val, sampler=Sampler(TOKENIZER, length=20), log_every=3)
    assert busy == plain
    assert all(e["val_loss"] is not None for e in trainer.history)
    best = load_checkpoint(tmp_path / BEST).metadata["train"]
    assert best["best_val_loss"] == min(e["val_loss"] for e in trainer.history)


def test_sampler_prints_every_temperature_without_reserved_ids():
    out = io.StringIO()
    _, trainer = run("streams", epochs=1, sampler=Sampler(TOKENIZER, temperatures=(0.2, 1.0, 5.0), length=300))
    trainer.out = out
    trainer.sampler(trainer)
    text = out.getvalue()
    assert text.count("----- temperature") == 3 and "<pad>" not in text and "<unk>" not in text
    assert "<eos>" not in text


def test_sampler_for_padded_sequences_starts_and_stops_at_eos():
    out = io.StringIO()
    _, trainer = run("padded", epochs=1)
    trainer.out = out
    trainer.model.dense.bias[TOKENIZER.eos_id] = 50.0  # <eos> is now by far the likeliest
    Sampler(TOKENIZER, temperatures=(0, 1.0), length=500, prime="the")(trainer)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith('primed with: "the"')
    assert lines[1:] == ["----- temperature 0", "the", "----- temperature 1", "the"]  # stopped at <eos>


def test_epoch_lines_and_metrics_log(tmp_path):
    out = io.StringIO()
    model, opt, batches = make("windows")
    trainer = Trainer(model, opt, batches, run_dir=tmp_path, epochs=2, log_every=4, progress=False, out=out)
    trainer.fit()
    lines = [line for line in out.getvalue().splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2  loss ") and lines[1].endswith("steps)")
    records = read_metrics(tmp_path / METRICS)
    assert records[0]["event"] == "start"
    steps = [r for r in records if r["event"] == "step"]
    assert [r["step"] for r in steps] == list(range(4, 2 * batches.num_batches + 1, 4))
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and all(r["seconds"] > 0 for r in epochs)
    assert trainer.history == epochs
    # a resumed run appends and says so
    Trainer.resume(
        load_checkpoint(tmp_path), make("windows")[2], run_dir=tmp_path, epochs=3, progress=False, out=io.StringIO()
    ).fit()
    assert [r["event"] for r in read_metrics(tmp_path / METRICS)].count("resume") == 1


def test_loss_plot(tmp_path):
    pytest.importorskip("matplotlib")
    run("windows", tmp_path, epochs=2, log_every=2, val=batching.Windows(TOKENIZER.encode(TEXT), 8, 5, 16))
    assert (tmp_path / PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    (tmp_path / METRICS).write_text(json.dumps({"event": "step", "step": 1, "loss": 2.0}) + "\n")
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert plot_metrics(tmp_path / METRICS, tmp_path / PLOT) is False and not (tmp_path / PLOT).exists()


@pytest.mark.parametrize("bad", ["loss", "grads"])
def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path, bad):
    model, opt, batches = make("windows")
    trainer = Trainer(
        model, opt, batches, run_dir=tmp_path, epochs=3, checkpoint_every=4, progress=False, out=io.StringIO()
    )
    good = {}
    real = model.loss_and_grads

    def poisoned(*args, **kwargs):
        loss, grads = real(*args, **kwargs)
        if trainer.step == 4:
            good.update({k: p.copy() for k, p in model.params.items()})
        if trainer.step == 6:  # the 7th step goes bad
            if bad == "loss":
                loss = math.nan
            else:
                grads["dense/bias"][0] = np.inf
        return loss, grads

    model.loss_and_grads = poisoned
    before = {k: p.copy() for k, p in model.params.items()}
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit()
    assert "step 7" in str(err.value) and "last.npz (step 4)" in str(err.value)
    assert trainer.step == 6 and all(np.isfinite(p).all() for p in model.params.values())
    saved = load_checkpoint(tmp_path)
    assert saved.metadata["train"]["step"] == 4
    assert all(np.array_equal(saved.model.params[k], good[k]) for k in good)
    assert not all(np.array_equal(before[k], good[k]) for k in good)
    assert read_metrics(tmp_path / METRICS)[-1]["event"] == "diverged"


def test_non_finite_weights_are_never_saved(tmp_path):
    model, opt, batches = make("windows")
    trainer = Trainer(
        model,
        opt,
        batches,
        run_dir=tmp_path,
        epochs=1,
        checkpoint_every=2,
        progress=False,
        out=io.StringIO(),
        max_steps=3,
    )

    def spoil(tr):
        if tr.step == 3:
            model.params["dense/bias"][0] = np.nan

    trainer.on_step = spoil
    with pytest.raises(TrainingDiverged, match="dense/bias"):
        trainer.fit()
    assert load_checkpoint(tmp_path).metadata["train"]["step"] == 2


def test_resume_rejects_other_data(tmp_path):
    run("windows", tmp_path, epochs=1)
    other = batching.Windows(TOKENIZER.encode(TEXT[::-1] * 2), maxlen=8, step=3, batch_size=16)
    with pytest.raises(ResumeError, match="corpus"):
        Trainer.resume(load_checkpoint(tmp_path), other)
    wider = batching.Windows(TOKENIZER.encode(TEXT * 2), maxlen=8, step=3, batch_size=32)
    with pytest.raises(ResumeError, match="batch_size"):
        Trainer.resume(load_checkpoint(tmp_path), wider)


def test_resume_needs_a_training_checkpoint(tmp_path):
    model, _, batches = make("windows")
    model.save(tmp_path / LAST)
    with pytest.raises(ResumeError, match="not written by a Trainer"):
        Trainer.resume(load_checkpoint(tmp_path), batches)


def test_stateful_model_needs_streams():
    model = LanguageModel(TOKENIZER.vocab_size, 4, [8], stateful=True)
    with pytest.raises(Exception, match="Streams"):
        Trainer(model, optim.Adam(), make("windows")[2])


def test_without_run_dir_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, trainer = run("padded", epochs=1)
    assert trainer.last_checkpoint is None and list(tmp_path.iterdir()) == []


def test_killed_mid_warmup_then_resumed_follows_the_schedule_exactly(tmp_path):
    """A cosine schedule whose warmup outlasts the kill: each step's lr is the schedule's, before and after."""
    from scratchlm import schedules

    n = make("padded")[2].num_batches
    schedule = schedules.Cosine(lr=0.02, min_lr=0.002, warmup_steps=2 * n, decay_steps=3 * n)
    lrs = {}

    def lr_of(trainer):
        lrs[trainer.step] = trainer.optimizer.lr

    full, reference = run("padded", schedule=schedule)
    assert len({e["loss"] for e in reference.history}) == 3
    kill_at = n + 3
    before, _ = run("padded", tmp_path, kill_at=kill_at, checkpoint_every=2, schedule=schedule)
    saved = load_checkpoint(tmp_path)
    assert saved.metadata["train"]["schedule"] == schedule.config() and saved.metadata["train"]["grad_accum"] == 1
    assert saved.optimizer.lr == schedule(saved.metadata["train"]["step"] - 1) < schedule.lr  # mid-warmup
    after, resumed = run("padded", tmp_path, resume=True, checkpoint_every=2)
    assert resumed.schedule.config() == schedule.config()
    assert after == {s: full[s] for s in after} and max(after) == max(full)
    assert same_weights(resumed.model, reference.model)
    model, opt, batches = make("padded")
    Trainer(model, opt, batches, schedule=schedule, max_steps=5, on_step=lr_of, progress=False).fit()
    assert lrs == {s: schedule(s - 1) for s in range(1, 6)}


def test_resume_takes_the_schedule_from_the_checkpoint(tmp_path):
    from scratchlm import schedules
    from scratchlm.errors import CheckpointError

    run("windows", tmp_path, epochs=1, schedule=schedules.Constant(0.01, warmup_steps=3))
    _, _, batches = make("windows")
    with pytest.raises(ResumeError, match="schedule: a resumed run goes on with its checkpoint's"):
        Trainer.resume(load_checkpoint(tmp_path), batches, schedule=schedules.Constant(0.1))
    ckpt = load_checkpoint(tmp_path)
    ckpt.metadata["train"]["schedule"] = {"name": "cosine", "lr": 0.1}
    with pytest.raises(CheckpointError, match="field 'schedule': bad 'cosine' schedule config"):
        Trainer.resume(ckpt, batches)
    ckpt = load_checkpoint(tmp_path)
    ckpt.metadata["train"]["grad_accum"] = 0
    with pytest.raises(CheckpointError, match="field 'grad_accum' must be a whole number >= 1"):
        Trainer.resume(ckpt, batches)


def test_a_checkpoint_from_before_schedules_resumes_as_before(tmp_path):
    """metadata['train'] without schedule and grad_accum (older runs): a constant rate, one batch per step."""
    import numpy

    from scratchlm import checkpoint

    full, reference = run("windows")
    n = make("windows")[2].num_batches
    run("windows", tmp_path, kill_at=n + 2)
    path = tmp_path / LAST
    with numpy.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(arrays["header.json"].tobytes())
    del header["metadata"]["train"]["schedule"], header["metadata"]["train"]["grad_accum"]
    arrays["header.json"] = numpy.frombuffer(json.dumps(header).encode(), dtype=numpy.uint8)
    numpy.savez(path, **arrays)
    assert "schedule" not in load_checkpoint(tmp_path).metadata["train"] and checkpoint.VERSION == 2
    after, resumed = run("windows", tmp_path, resume=True)
    assert resumed.schedule is None and resumed.grad_accum == 1
    assert after == {s: full[s] for s in after} and same_weights(resumed.model, reference.model)
