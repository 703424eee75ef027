"""Lean kernel launches: the kernel's arguments packed here and handed to ``cuda.core.launch``.

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
    _AVAILABLE = True
except (ImportError, AttributeError):
    _AVAILABLE = False


def _current_context_handle():
    """The calling thread's current CUDA context as an int (0 where it has none)."""
    err, h = _cuCtxGetCurrent()
    return int(h) if not int(err) else 0


_ARRAY, _F64, _BOOL = 0, 1, 2
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
        return True

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

    def _lean(self, grid, block, args):
        """Launch the compiled function in its own context (the caller has checked it)."""
        params = []
        for kind, a in zip(self._kinds, args):
            if kind == _ARRAY:
                ptr = a.device_ctypes_pointer.value
                params += (0, 0, a.size, a.dtype.itemsize, ptr, *a.shape, *a.strides)
            elif kind == _F64:
                params.append(ctypes.c_double(a))
            else:
                params.append(bool(a))
        key = (grid, block)
        config = self._configs.get(key)
        if config is None:
            config = self._configs[key] = _LaunchConfig(grid=grid, block=block)
        _core_launch(self._stream, config, self._fn, *params)
