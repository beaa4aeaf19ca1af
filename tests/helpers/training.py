"""Training runs the tests compare: one uninterrupted, one stopped and resumed from its checkpoint."""

import io

from scratchlm import get_backend
from scratchlm.batching import Vectorized
from scratchlm.train import Trainer, load_checkpoint


def full_and_resumed(tmp_path, model, optimizer, ids, kernels, stop_at=7, epochs=2):
    """(the Trainer of an uninterrupted run, the Trainer of a run stopped after ``stop_at`` steps and resumed),
    both of ``epochs`` over Vectorized batches of ``ids``; ``model()`` and ``optimizer()`` build fresh ones."""

    def run(run_dir, resume=False, max_steps=None):
        batches = Vectorized(ids, batch_size=4, seed=1)
        options = dict(
            run_dir=run_dir,
            epochs=epochs,
            max_steps=max_steps,
            checkpoint_every=None,
            progress=False,
            out=io.StringIO(),
        )
        if resume:
            backend = get_backend("numpy", kernels=kernels)
            trainer = Trainer.resume(load_checkpoint(run_dir, backend=backend), batches, **options)
        else:
            trainer = Trainer(model(), optimizer(), batches, **options)
        trainer.fit()
        return trainer

    full = run(tmp_path / "a")
    run(tmp_path / "b", max_steps=stop_at)
    return full, run(tmp_path / "b", resume=True)
