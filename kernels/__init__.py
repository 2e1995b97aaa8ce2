"""Backends: the same op names on NumPy (numpy_ops.py, the reference) and on CuPy with
the raw CUDA kernels of this folder (cupy_ops.py). The model and the trainer choose one
backend once, with `load_backend`, and never branch on it again."""
import sys


class BackendError(RuntimeError):
    """The requested device cannot be used (no CuPy, no GPU)."""


def load_backend(device="auto", verbose=True):
    """device: 'cpu', 'gpu' or 'auto' -> the ops of numpy_ops.py: that module, or a
    cupy_ops.CudaOps instance with the same names.

    'auto' takes the GPU when CuPy sees one and otherwise falls back to the CPU, saying so.
    'gpu' without CuPy or without a GPU raises BackendError with the reason.
    """
    if device not in ("auto", "cpu", "gpu"):
        raise BackendError(f"--device must be auto, cpu or gpu, got {device!r}")
    if device == "cpu":
        from kernels import numpy_ops
        return numpy_ops
    try:
        from kernels import cupy_ops
        cupy_ops.check_gpu()
        return cupy_ops.CudaOps()      # an object with numpy_ops' names; kernels compile on first use
    except Exception as e:  # ImportError, no device, driver errors: all mean "no usable GPU"
        reason = f"{type(e).__name__}: {e}"
        if device == "gpu":
            raise BackendError(f"--device gpu: no usable GPU ({reason}). Install CuPy for your "
                               f"CUDA version (see README) or use --device cpu.") from e
        if verbose:   # information, not an error: the CPU is what auto means without a GPU
            print(f"device auto: running on the CPU, as no GPU is usable here ({e}); "
                  f"--device cpu skips this check", flush=True)
        from kernels import numpy_ops
        return numpy_ops
