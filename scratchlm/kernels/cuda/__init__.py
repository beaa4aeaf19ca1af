"""The CUDA kernels of the CuPy backend (the .cu files) and their op set, :mod:`.ops`."""
