"""World.reduce_step through NCCL on one GPU, checked against the host arithmetic (tests/test_distributed.py).

    python tests/helpers/nccl_helper.py            # prints "ok", or "no NCCL" (exit status 3) when CuPy lacks it

A one-rank World on MPI's COMM_WORLD (no launcher needed) runs the whole NCCL path: the unique id
broadcast over MPI, the communicator, the packing of gradient·tokens into one device buffer, the
in-place all-reduce on the current stream and the division by the global token count.
"""

import sys
from pathlib import Path

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scratchlm import distributed, get_backend


def main():
    from mpi4py import MPI

    world = distributed.World(0, 1, MPI.COMM_WORLD)
    world.use_local_device()
    if not world.start_nccl():
        print("no NCCL")
        return 3
    assert world.uses_nccl
    for dtype, tol in (("float64", 1e-15), ("float32", 1e-7)):
        backend = get_backend("cupy", dtype)
        rng = numpy.random.default_rng(3)
        shapes = {"a/kernel": (5, 12), "a/bias": (12,), "dense/kernel": (3, 7)}
        params = {k: backend.asarray(rng.normal(size=s)) for k, s in shapes.items()}
        grads = {k: backend.asarray(rng.normal(size=s)) for k, s in shapes.items()}
        for step in range(3):  # the buffer is made once and reused
            loss, out = world.reduce_step(params, grads, 1.25 + step, 6, 8, backend)
            assert abs(loss - (1.25 + step) * 6 / 8) <= tol, loss
            for k, g in grads.items():
                assert isinstance(out[k], backend.xp.ndarray) and out[k].shape == g.shape, k
                want = backend.to_host(g) * 6 / 8
                got = backend.to_host(out[k])
                assert numpy.abs(got - want).max() <= tol * numpy.abs(want).max(), (dtype, k)
        loss, out = world.reduce_step(params, None, 0.0, 0, 8, backend)  # a rank with no rows
        assert loss == 0 and all(float(abs(g).max()) == 0 for g in out.values())
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
