import os

# Tests are small; keep BLAS single-threaded so timings and reductions are stable on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
