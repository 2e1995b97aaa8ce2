"""The GPU path without a GPU (issue 12): the probe that chooses the GPU, and what one training
iteration launches and transfers.

- The probe (kernels.load_backend, cupy_ops.probe) runs against a fake `cupy` module: NumPy
  arrays, the kernels run by the emulator (tests/emulator.py), and a switch to make one stage
  fail the way a wheel without its CUDA libraries fails (NVRTC at the first compile, cuBLAS at
  the first matmul). `auto` must fall back with the reason on one line, `gpu` must stop with it,
  and train_min must say it without a traceback.
- The counts: CudaOps on `DeviceArray`s, NumPy arrays that stand for cupy.ndarrays and count what
  CuPy would do with them: every ufunc call an elementwise kernel, `.sum()`/`.mean()` one
  reduction kernel each, `matmul` one GEMM, `float()`/`.get()` a device-to-host copy, `asarray`
  of host data a host-to-device copy, plus the raw kernels through a counting launcher. One
  adv_gdl train_step is counted and the counts are pinned below bounds, so that they cannot
  silently grow. `python tests/test_gpu_path.py` prints them.
"""
import collections
import os
import sys
import types

import numpy as np
import pytest

import emulator
from kernels import BackendError, cupy_ops, load_backend, numpy_ops


def needs_compiler():
    if emulator.find_compiler() is None:
        pytest.skip(f"emulation needs a C++ compiler: {emulator.CXX!r} is not on PATH")


# --------------------------------------------------------------------------- a fake cupy for the probe
class CompileException(Exception):
    """Stands for cupy.cuda.compiler.CompileException (NVRTC missing or failing)."""


class CUBLASError(RuntimeError):
    """Stands for cupy_backends.cuda.libs.cublas.CUBLASError (cuBLAS missing)."""


def fake_cupy(fail=None, devices=1):
    """A module named cupy on NumPy arrays whose kernels run in the emulator. fail: None, "compile"
    (NVRTC cannot load: the first get_function raises), "gemm" (cuBLAS cannot load) or "numbers"
    (the GEMM returns garbage)."""
    cp = types.ModuleType("cupy")
    for name in ("ndarray", "asarray", "empty", "ascontiguousarray"):
        setattr(cp, name, getattr(np, name))

    def matmul(a, b, out=None):
        if fail == "gemm":
            raise CUBLASError("CUBLAS_STATUS_NOT_INITIALIZED\nlibcublas.so.12: cannot open shared object file")
        return np.matmul(a, b, out=out) + (1.0 if fail == "numbers" else 0.0)
    cp.matmul = matmul

    class RawModule:
        def __init__(self, code, options):
            assert options == cupy_ops.OPTIONS
            self.code = code

        def get_function(self, name):
            if fail == "compile":
                raise CompileException("nvrtc: error: failed to load builtins for compute_90\n"
                                       "(the NVRTC of the wheel's CUDA is missing)")
            launcher = emulator.default_launcher()
            return lambda grid, block, args: launcher(name, grid, block, args)
    cp.RawModule = RawModule
    stream = types.SimpleNamespace(synchronize=lambda: None)
    cp.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: devices),
                                    get_current_stream=lambda: stream)
    return cp


@pytest.fixture
def with_cupy(monkeypatch):
    """Install a fake cupy (see fake_cupy) as the importable `cupy`."""
    needs_compiler()

    def install(**kwargs):
        cp = fake_cupy(**kwargs)
        monkeypatch.setitem(sys.modules, "cupy", cp)
        return cp
    return install


def test_probe_passes_and_gpu_is_chosen(with_cupy, capsys):
    cp = with_cupy()
    for device in ("gpu", "auto"):
        ops = load_backend(device)
        assert isinstance(ops, cupy_ops.CudaOps) and ops.xp is cp and ops.name == "gpu"
    assert capsys.readouterr().out == ""
    assert load_backend("cpu") is numpy_ops


@pytest.mark.parametrize("fail, devices, reason", [
    ("compile", 1, "CompileException: nvrtc: error: failed to load builtins for compute_90 (...)"),
    ("gemm", 1, "CUBLASError: CUBLAS_STATUS_NOT_INITIALIZED (...)"),
    ("numbers", 1, "the probe's 4x4 GEMM on the GPU gave wrong numbers"),
    (None, 0, "CuPy sees no CUDA device"),
])
def test_failed_probe_falls_back_under_auto_and_stops_under_gpu(with_cupy, capsys, fail, devices, reason):
    with_cupy(fail=fail, devices=devices)
    assert load_backend("auto") is numpy_ops
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("device auto: running on the CPU") and f"({reason})" in out, out
    with pytest.raises(BackendError, match=r"^--device gpu: no usable GPU \(") as info:
        load_backend("gpu")
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_failed_probe_under_train_min_is_one_message_without_traceback(with_cupy, tmp_path, capsys):
    import train_min
    with_cupy(fail="compile")
    code = train_min.main(["--loss", "l2", "--steps", "1", "--device", "gpu", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code != 0 and "--device gpu: no usable GPU (CompileException: nvrtc" in err and "Traceback" not in err


def test_no_cupy_reason_reads_as_a_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)          # import cupy raises ImportError
    with pytest.raises(BackendError, match=r"no usable GPU \(CuPy is not installed"):
        load_backend("gpu")


@pytest.mark.parametrize("fail", [None, "gemm"])
def test_train_gpu_failure_test_skips_exactly_where_a_gpu_is_usable(with_cupy, fail):
    """tests/test_train.py expects --device gpu to fail; it skips where the probe passes."""
    import test_train
    with_cupy(fail=fail)
    assert (test_train.usable_gpu() is not None) == (fail is None)
