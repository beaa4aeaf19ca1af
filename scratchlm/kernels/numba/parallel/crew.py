"""Worker threads for the time loops' parties, awake between one loop and the next.

A training step hands its recurrent loops to the other cores twice (forward
and backward), with the layers above in between (a few hundred µs at batch
8). A thread that sleeps on a lock in between must be woken by the operating
system, and on this virtual machine waking an idle virtual CPU took 15-300 µs
(a ThreadPoolExecutor hand-over: median 74 µs after 10 ms idle, 123 µs after
0.3 s, up to 312), paid at both ends of every loop. So each worker, after its
party, polls for the next hand-over for ``LINGER`` polls (~0.3 ms) with the
GIL released before it sleeps on a condition, and the caller, after its own
party, polls until the workers are done before it sleeps.

Hand-over: the caller stores the loop, adds one to ``calls`` (an atomic add
that publishes the store) and notifies the sleepers; a worker that sees the
count rise runs ``loop(k)``, keeps any exception, and adds one to ``done``.
"""

import threading

from . import barrier

LINGER = 100_000  # polls (~0.3 ms) before a worker or the caller sleeps


class Crew:
    """``n - 1`` daemon threads that run parties 1 … n−1 of :meth:`run`'s loops (the caller runs party 0)."""

    def __init__(self, n):
        self.n = n
        self.calls, self.done = barrier.new(), barrier.new()  # counters (and the sched_yield address)
        self.wake, self.finished = threading.Condition(), threading.Condition()
        self.loop, self.errors = None, [None] * n
        for k in range(1, n):
            threading.Thread(target=self._work, args=(k,), name=f"scratchlm-crew-{k}", daemon=True).start()

    def run(self, loop):
        """Call ``loop(k)`` for every party k at once; returns when all are done; re-raises a party's error."""
        self.loop, self.errors = loop, [None] * self.n
        goal = int(self.done[0]) + self.n - 1
        with self.wake:
            barrier.arrive(self.calls)
            self.wake.notify_all()
        try:
            loop(0)
        finally:
            if not barrier.poll(self.done, goal, LINGER):
                with self.finished:
                    self.finished.wait_for(lambda: self.done[0] >= goal)
        for error in self.errors:
            if error is not None:
                raise error

    def _work(self, k):
        seen = 0
        while True:
            if not barrier.poll(self.calls, seen + 1, LINGER):
                with self.wake:
                    self.wake.wait_for(lambda seen=seen: self.calls[0] > seen)
            seen += 1
            try:
                self.loop(k)
            except BaseException as error:  # handed to the caller
                self.errors[k] = error
            barrier.arrive(self.done)
            with self.finished:
                self.finished.notify_all()
