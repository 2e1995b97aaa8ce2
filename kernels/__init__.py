"""Backends: the same op names on NumPy and on CuPy. numpy_ops.py is the plain reference;
fast_cpu.py the same ops reorganised for speed on the CPU; cupy_ops.py the raw CUDA kernels of
this folder. The model and the trainer choose one backend once, with `load_backend`, and never
branch on it again."""

DEVICES = ("auto", "cpu", "gpu", "reference")


class BackendError(RuntimeError):
    """The requested device cannot be used (no CuPy, no GPU)."""


def load_backend(device="auto", verbose=True):
    """device -> the ops (a module, or an object with numpy_ops' names):

    'cpu'        kernels.fast_cpu, the fast CPU backend;
    'reference'  kernels.numpy_ops, the plain reference (slower; for reading and checking);
    'gpu'        a cupy_ops.CudaOps, or BackendError with the reason;
    'auto'       the GPU when it passes the probe, else the fast CPU backend, saying so.

    The GPU is chosen only after a real probe (cupy_ops.probe: every kernel compiled by NVRTC, one
    kernel launch, one cuBLAS GEMM, a sync, the numbers checked), as CuPy can see a device and
    still fail at the first launch (no NVRTC, no cuBLAS). 'auto' falls back to the CPU on any
    failure, printing the reason as one line; 'gpu' raises BackendError with the reason.
    """
    if device not in DEVICES:
        raise BackendError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "reference":
        from kernels import numpy_ops
        return numpy_ops
    if device == "cpu":
        from kernels import fast_cpu
        return fast_cpu
    try:
        from kernels import cupy_ops
        return cupy_ops.probe()
    except Exception as e:  # ImportError, no device, NVRTC/cuBLAS missing, driver errors: "no usable GPU"
        try:
            from kernels.cupy_ops import one_line
            reason = one_line(e)
        except Exception:   # cupy_ops itself failed to import
            reason = f"{type(e).__name__}: {e}"
        if device == "gpu":
            raise BackendError(f"--device gpu: no usable GPU ({reason}). Install CuPy for your "
                               f"CUDA version (see README) or use --device cpu.") from e
        if verbose:   # information, not an error: the CPU is what auto means without a GPU
            print(f"device auto: running on the CPU, as no GPU is usable here ({reason}); "
                  f"--device cpu skips this check", flush=True)
        from kernels import fast_cpu
        return fast_cpu
