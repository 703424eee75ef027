"""The GPU half of the kernel layer (numba-cuda). Imported only when a device array is passed;
importing lnnumba never needs CUDA or numba-cuda.

(Named ``gpu``, not ``cuda``: numba-cuda's import hook redirects every module whose name contains
"numba.cuda", which "lnnumba.cuda" does.)
"""
