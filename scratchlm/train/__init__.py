"""Training: the step, the loop around it, resuming, what a run shows, and the example runner.

    step.py       train_step(model, optimizer, batch): loss and gradients, the NaN guard, the update
    loop.py       Trainer: epochs of steps, validation, samples, checkpoints (calls train_step)
    resume.py     where a run continues from: load_checkpoint, open_run, the position's rules
    parallel.py   what changes under MPI: this rank's rows, one all-reduce, rank 0's weights
    reporting.py  Sampler, render, the metrics log and its plot, the progress bar
    scripts.py    what example scripts share: start_or_resume, run_script

Read step.py first: it is the whole of what training does to the weights.

    trainer = Trainer(model, optim.RMSprop(lr=0.01), batching.Windows(ids), run_dir="runs/nietzsche",
                      epochs=60, sampler=Sampler(tokenizer), metadata={"tokenizer": tokenizer.config})
    trainer.fit()
"""

from ..rundir import BEST, LAST, METRICS, PLOT
from .loop import Batches, Trainer
from .reporting import TEMPERATURES, MetricsLog, Sampler, plot_metrics, read_metrics, render
from .resume import ResumeError, check_position, load_checkpoint, open_run
from .scripts import run_script, start_or_resume
from .step import StepResult, TrainingDiverged, train_step

__all__ = [
    "BEST",
    "Batches",
    "LAST",
    "METRICS",
    "MetricsLog",
    "PLOT",
    "ResumeError",
    "Sampler",
    "StepResult",
    "TEMPERATURES",
    "Trainer",
    "TrainingDiverged",
    "check_position",
    "load_checkpoint",
    "open_run",
    "plot_metrics",
    "read_metrics",
    "render",
    "run_script",
    "start_or_resume",
    "train_step",
]
