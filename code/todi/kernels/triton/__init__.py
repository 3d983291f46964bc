"""The Triton loss kernels (CUDA; TRITON_INTERPRET=1 runs them on the CPU)."""

from todi.kernels.triton.backend import *  # noqa: F401,F403
from todi.kernels.triton.backend import __all__  # noqa: F401
