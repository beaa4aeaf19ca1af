"""What several test modules share: Hypothesis strategies (:mod:`.strategies`) and the scripts the MPI and NCCL
tests run (mpi_helper.py, nccl_helper.py, mpi_bench.py)."""
