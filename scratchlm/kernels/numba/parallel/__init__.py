"""Threads inside Numba loops: OpenBLAS called from them, batch shards, a barrier, work buffers."""
