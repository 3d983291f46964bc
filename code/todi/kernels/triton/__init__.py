"""The Triton loss kernels (CUDA; TRITON_INTERPRET=1 runs them on the CPU).

Modules, lowest first: ``config`` (launch settings), ``numerics`` (constants, fast special
functions), ``tiles`` (the aligned frame, tiles, loads), ``lse`` (online log-sum-exp), ``terms``
(each objective's per-entry terms: the branches), ``passes`` (the passes over a row), ``akl``
(AKL's tail search and weight), ``kernel`` (the kernels), ``launch`` (the Python launcher).
"""

from todi.kernels.triton.config import CONFIG, KernelConfig
from todi.kernels.triton.launch import branch_code, forward, scale_rows_
from todi.kernels.triton.terms import BRANCHES

__all__ = ["BRANCHES", "CONFIG", "KernelConfig", "branch_code", "forward", "scale_rows_"]
