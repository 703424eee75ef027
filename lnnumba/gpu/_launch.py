"""Lean kernel launches: the kernel's arguments packed here and handed to the driver's
``cuLaunchKernel`` (or, where the driver binding differs, to ``cuda.core``'s ``launch``).

A launch through a Numba dispatcher (``kernel[grid, block](*args)``) types every argument,
selects the overload, builds a launch configuration and converts each array on every call: tens of
microseconds, more than a layer norm of a few thousand elements takes on the GPU. The kernels of
this package are always called with the same kinds of argument (C-contiguous device arrays of one
dtype, Python floats and bools), so each dispatcher has one overload, and the arguments can be
packed directly in the layout Numba gives them (``Kernel._prepare_args``): an array is
(meminfo, parent, size, itemsize, data pointer, *shape, *strides in bytes).

The first call of each kernel goes through the dispatcher (which compiles it); later ones launch
the same compiled function directly. Where numba-cuda's internals differ from what this module
expects, or under the CUDA simulator, every call goes through the dispatcher.

The compiled function belongs to one CUDA context. ``cuda.current_context()`` finds the calling
thread's context through a lock and several driver calls; a lean launch instead compares the
handle that one ``cuCtxGetCurrent`` returns with the function's context and launches only where
they are the same (anything else, e.g. a thread with no context yet, goes through the
dispatcher, which sets one up).
"""

import ctypes
import struct
import threading

from numba import cuda

try:  # numba-cuda's own launch function and configuration type (version-dependent)
    from numba.cuda import dispatcher as _dispatcher_mod

    _core_launch = _dispatcher_mod.launch
    _LaunchConfig = _dispatcher_mod.LaunchConfig
    from numba.cuda.cudadrv import driver as _driver

    _to_core_stream = _driver._to_core_stream
    from cuda.bindings import driver as _cudrv

    _cuCtxGetCurrent = _cudrv.cuCtxGetCurrent
    _cuLaunchKernel = _cudrv.cuLaunchKernel
    _SUCCESS = _cudrv.CUresult.CUDA_SUCCESS
    _AVAILABLE = True
except (ImportError, AttributeError):
    _AVAILABLE = False


def _current_context_handle():
    """The calling thread's current CUDA context as an int (0 where it has none)."""
    err, h = _cuCtxGetCurrent()
    return int(h) if not int(err) else 0


_ARRAY, _F64, _BOOL = 0, 1, 2
_MAX_SHAPES = 256  # launch shapes (grid, block) kept per kernel; the grid follows the batch size
_lock = threading.Lock()


class Kernel:
    """``Kernel(dispatcher)(grid, block, *args)`` launches ``dispatcher[grid, block](*args)``;
    ``launch(ctx, grid, block, *args)`` does the same with the current context already looked
    up (``cuda.current_context()``), for callers that launch several kernels.

    ``enabled=False`` (the simulator, or numba-cuda internals that do not match) always uses the
    dispatcher.
    """

    __slots__ = (
        "dispatcher",
        "enabled",
        "_fn",
        "_kinds",
        "_configs",
        "_stream",
        "_ctx",
        "_ctx_handle",
        "_direct",
        "_dims",
        "_cufn",
        "_custream",
        "_struct",
        "_tls",
    )

    def __init__(self, dispatcher, enabled=True):
        self.dispatcher = dispatcher
        self.enabled = enabled and _AVAILABLE
        self._fn = None  # the compiled function, once known
        self._kinds = None
        self._configs = {}
        self._stream = None
        self._ctx = None
        self._ctx_handle = -1  # the function's context as an int, once known
        self._direct = False  # launch through cuLaunchKernel (see _setup_direct)
        self._dims = {}  # (grid, block) -> the six dimensions cuLaunchKernel takes
        self._tls = threading.local()  # each thread's parameter buffer for _direct

    def _setup(self):
        """Take the compiled overload after the first launch; False where it cannot be used."""
        from numba.core import types

        overloads = list(self.dispatcher.overloads.values())
        if len(overloads) != 1:
            return False
        kern = overloads[0]
        kinds = []
        for t in kern.argument_types:
            if isinstance(t, types.Array) and t.layout == "C":
                kinds.append(_ARRAY)
            elif t == types.float64:
                kinds.append(_F64)
            elif t == types.boolean:
                kinds.append(_BOOL)
            else:
                return False
        if kern.cooperative or getattr(kern, "debug", False):
            return False
        self._kinds = tuple(kinds)
        self._stream = _to_core_stream(0)
        self._fn = kern._codelibrary.get_cufunc().kernel
        self._ctx = cuda.current_context()  # the function belongs to this context
        self._ctx_handle = int(self._ctx.handle)
        try:
            self._setup_direct(kern.argument_types)
        except Exception:  # the driver binding is not as expected: cuda.core's launch
            self._direct = False
        return True

    def _setup_direct(self, types_):
        """Prepare launches through the driver's cuLaunchKernel with the parameters packed by
        one ``struct.Struct`` into a buffer of 8-byte slots: an array's fields, a float64 and a
        bool (as 0 or 1, read from the slot's first byte) each take whole slots. cuda.core's
        ``launch`` converts a call's ~30 parameters one by one: on an H200's host it took 6.6 us
        where cuLaunchKernel alone took 5.0, and a small ``layer_norm`` ran 1.08x faster
        through cuLaunchKernel (two runs, 25 bursts each way in turn). Where the driver binding
        refuses these arguments, the first launch falls back to cuda.core for good."""
        fmt = "="
        for kind, t in zip(self._kinds, types_):
            fmt += "q" * (5 + 2 * t.ndim) if kind == _ARRAY else ("d" if kind == _F64 else "q")
        self._struct = struct.Struct(fmt)
        self._cufn = _cudrv.CUfunction(int(self._fn.handle))  # a CUkernel, cast as the API allows
        self._custream = _cudrv.CUstream(int(self._stream.handle))
        self._direct = True

    def _buffers(self):
        """This thread's (parameter buffer, address of its array of slot pointers): the driver
        copies the parameters during the call, so a thread can reuse its buffer at once."""
        b = getattr(self._tls, "b", None)
        if b is None:
            n = self._struct.size // 8
            buf = ctypes.create_string_buffer(8 * n)
            base = ctypes.addressof(buf)
            ptrs = (ctypes.c_void_p * n)(*[base + 8 * i for i in range(n)])
            b = self._tls.b = (buf, ctypes.addressof(ptrs), ptrs)
        return b

    def __call__(self, grid, block, *args):
        if self._fn is not None and _current_context_handle() == self._ctx_handle:
            self._lean(grid, block, args)
        else:
            self.launch(cuda.current_context(), grid, block, *args)

    def launch(self, ctx, grid, block, *args):
        fn = self._fn
        if fn is None or ctx is not self._ctx:
            self.dispatcher[grid, block](*args)
            if self.enabled and self._fn is None:
                with _lock:
                    try:
                        ok = self._setup()
                    except Exception:  # internals not as expected: keep the dispatcher
                        ok = False
                    if not ok:
                        self.enabled = False
                        self._fn = None
            return
        self._lean(grid, block, args)

    def _values(self, args, double):
        """The launch's parameters in Numba's layout: an array's fields as ints, a float64 as
        ``double(value)``, a bool as a bool."""
        vals = []
        for kind, a in zip(self._kinds, args):
            if kind == _ARRAY:
                ptr = a.device_ctypes_pointer.value or 0
                vals += (0, 0, a.size, a.dtype.itemsize, ptr, *a.shape, *a.strides)
            elif kind == _F64:
                vals.append(double(a))
            else:
                vals.append(bool(a))
        return vals

    def _lean(self, grid, block, args):
        """Launch the compiled function in its own context (the caller has checked it)."""
        key = (grid, block)
        if self._direct:
            dims = self._dims.get(key)
            if dims is None:
                if len(self._dims) >= _MAX_SHAPES:
                    self._dims.clear()
                g = grid if isinstance(grid, tuple) else (grid,)
                t = block if isinstance(block, tuple) else (block,)
                dims = self._dims[key] = (*g, 1, 1)[:3] + (*t, 1, 1)[:3]
            buf, ptrs, _ = self._buffers()
            self._struct.pack_into(buf, 0, *self._values(args, float))
            try:
                (err,) = _cuLaunchKernel(self._cufn, *dims, 0, self._custream, ptrs, 0)
            except TypeError:  # the binding takes other argument types: cuda.core from now on
                self._direct = False
            else:
                if err != _SUCCESS:
                    raise _driver.CudaAPIError(int(err), f"cuLaunchKernel: {err!r}")
                return
        config = self._configs.get(key)
        if config is None:
            if len(self._configs) >= _MAX_SHAPES:
                self._configs.clear()
            config = self._configs[key] = _LaunchConfig(grid=grid, block=block)
        _core_launch(self._stream, config, self._fn, *self._values(args, ctypes.c_double))
