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
import functools
import os
import re
import sys
import time
import types

if __name__ == "__main__":     # `python tests/test_gpu_path.py`: the repository's modules too
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import pytest

import emulator
from kernels import BackendError, cupy_ops, fast_cpu, load_backend


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
    for name in ("concatenate", "full", "broadcast_to"):
        setattr(cp, name, getattr(np, name))
    cp.waits = collections.Counter()                  # what waited for the "device": stream / event syncs

    class Event:                                      # the "device time" of a record is the host's
        def record(self):
            self.t = time.perf_counter()
            cp.waits["events recorded"] += 1

        def synchronize(self):
            cp.waits["event synchronize"] += 1

    stream = types.SimpleNamespace(synchronize=lambda: cp.waits.update(["stream synchronize"]))
    cp.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: devices),
                                    get_current_stream=lambda: stream, Event=Event,
                                    get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3)
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
    assert load_backend("cpu") is fast_cpu


@pytest.mark.parametrize("fail, devices, reason", [
    ("compile", 1, "CompileException: nvrtc: error: failed to load builtins for compute_90 (...)"),
    ("gemm", 1, "CUBLASError: CUBLAS_STATUS_NOT_INITIALIZED (...)"),
    ("numbers", 1, "the probe's 4x4 GEMM on the GPU gave wrong numbers"),
    (None, 0, "CuPy sees no CUDA device"),
])
def test_failed_probe_falls_back_under_auto_and_stops_under_gpu(with_cupy, capsys, fail, devices, reason):
    with_cupy(fail=fail, devices=devices)
    assert load_backend("auto") is fast_cpu
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


def test_bench_on_the_gpu_path_times_with_events_and_gemms_and_prints_the_cpu_line(with_cupy, capsys):
    """run_bench on CudaOps (fake cupy, emulated kernels): CUDA events instead of host timers, one
    wait per measurement instead of a sync around every phase and GEMM, the GEMMs timed and
    their work counted, and the bench line of the CPU."""
    import bench
    import framepred as fp
    from test_bench import LINE
    cp = with_cupy()
    ops = load_backend("gpu")
    cp.waits.clear()
    config = fp.make_config(m=2, n=1, patch=32, width=1 / 32, loss="adv_gdl")
    params = {key: ops.asarray(value) for key, value in fp.init_params(config, seed=1).items()}
    rng = np.random.default_rng(0)

    def next_batch():
        return tuple(ops.asarray(rng.uniform(-1, 1, (2, c, 32, 32)).astype(np.float32)) for c in (6, 3))

    assert bench.run_bench(ops, params, config, next_batch, 2, sgemm_shape=(64, 64, 64)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "backend gpu" in lines[0]
    assert LINE.match(lines[-1]), lines[-1]
    assert any(line.startswith("GEMM:") and "calls/step" in line for line in lines)
    work = next(line for line in lines if line.startswith("work:"))
    analytic, counted = (float(v) for v in re.findall(r"analytic ([\d.]+) .* counted ([\d.]+)", work)[0])
    assert counted == pytest.approx(analytic, rel=0.03)
    # the reference GEMMs before and after, and the iterations: one wait each, no stream syncs
    assert cp.waits["event synchronize"] == 3 and cp.waits["stream synchronize"] == 0, dict(cp.waits)
    assert cp.waits["events recorded"] > 2 * 190, dict(cp.waits)     # at least the GEMMs of the steps
    assert "_gemm" not in vars(ops) and "im2col" not in vars(ops)    # the timing wrappers are gone


# --------------------------------------------------------------------------- counting what CuPy would do
COUNTS = collections.Counter()     # what the DeviceArrays and the counting launcher saw since reset


def _host(a):
    return a.view(np.ndarray) if isinstance(a, DeviceArray) else a


def _device(result):
    """A NumPy result as CuPy returns it: arrays (0-d included) stay on the device."""
    if isinstance(result, tuple):
        return tuple(_device(r) for r in result)
    if isinstance(result, (np.ndarray, np.generic)):
        return np.asarray(result).view(DeviceArray)
    return result


class DeviceArray(np.ndarray):
    """A NumPy array standing for a cupy.ndarray: it counts, in COUNTS, the kernels and copies that
    CuPy would make for what is done to it ("elementwise", "reduction", "gemm", "d2h")."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        COUNTS["gemm" if ufunc is np.matmul else "elementwise" if method == "__call__" else "reduction"] += 1
        if out is not None:
            kwargs["out"] = tuple(_host(o) for o in out)
        result = getattr(ufunc, method)(*(_host(i) for i in inputs), **kwargs)
        return (out[0] if len(out) == 1 else out) if out is not None else _device(result)

    def _reduce(self, how, *args, **kwargs):          # one CuPy reduction kernel (mean divides in it)
        COUNTS["reduction"] += 1
        return _device(getattr(self.view(np.ndarray), how)(*args, **kwargs))

    def sum(self, *args, **kwargs):
        return self._reduce("sum", *args, **kwargs)

    def mean(self, *args, **kwargs):
        return self._reduce("mean", *args, **kwargs)

    def astype(self, dtype, *args, **kwargs):
        COUNTS["elementwise"] += 1
        return _device(self.view(np.ndarray).astype(dtype, *args, **kwargs))

    def copy(self, *args, **kwargs):
        COUNTS["elementwise"] += 1
        return _device(self.view(np.ndarray).copy(*args, **kwargs))

    def reshape(self, *shape, **kwargs):               # a reshape that cannot be a view copies
        out = self.view(np.ndarray).reshape(*shape, **kwargs)
        if out.size and not np.may_share_memory(out, self):
            COUNTS["elementwise"] += 1
        return out.view(DeviceArray)

    def get(self):
        COUNTS["d2h"] += 1
        return self.view(np.ndarray).copy()

    def item(self):
        COUNTS["d2h"] += 1
        return self.view(np.ndarray).item()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        return bool(self.item())


class CountingCupy:
    """The `xp` of CudaOps for counting: cupy's functions that cupy_ops.py and framepred.py use,
    on DeviceArrays. A function not modelled here raises, so that nothing goes uncounted."""
    __name__ = "cupy"
    ndarray = DeviceArray
    float32, float64 = np.float32, np.float64

    @staticmethod
    def empty(shape, dtype=np.float32):
        return emulator.PoisonedNumpy.empty(shape, dtype).view(DeviceArray)    # allocation: no kernel

    @staticmethod
    def asarray(a, dtype=None):
        if isinstance(a, DeviceArray):
            return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
        COUNTS["h2d"] += 1
        return np.array(a, dtype=dtype).view(DeviceArray)

    @staticmethod
    def ascontiguousarray(a):
        if a.flags.c_contiguous:
            return a
        COUNTS["elementwise"] += 1
        return np.ascontiguousarray(_host(a)).view(DeviceArray)

    @staticmethod
    def matmul(a, b):
        return np.matmul(a, b)                         # counted by DeviceArray.__array_ufunc__

    @staticmethod
    def _concatenation(arrays):
        """What cupy.concatenate (and stack, through it) launches, as its _concatenate in
        cupy/_core/_routines_manipulation.pyx decides: for more than 8 arrays of one dtype, one
        kernel that reads them through a table of their addresses, copied to the device first (one
        host-to-device copy, three when their shapes differ); else one copy kernel per array."""
        if len(arrays) > 8 and len({a.dtype for a in arrays}) == 1:
            COUNTS["elementwise"] += 1
            COUNTS["h2d"] += 1 if len({a.shape for a in arrays}) == 1 else 3
        else:
            COUNTS["elementwise"] += len(arrays)

    @staticmethod
    def concatenate(arrays, axis=0):
        CountingCupy._concatenation(arrays)
        return np.concatenate([_host(a) for a in arrays], axis=axis).view(DeviceArray)

    @staticmethod
    def stack(arrays, axis=0):
        CountingCupy._concatenation([np.asarray(a) for a in arrays])
        return np.stack([_host(a) for a in arrays], axis=axis).view(DeviceArray)

    @staticmethod
    def full(shape, value, dtype=np.float32):
        COUNTS["elementwise"] += 1                     # a fill kernel
        return np.full(shape, value, dtype).view(DeviceArray)

    @staticmethod
    def broadcast_to(a, shape):
        return np.broadcast_to(_host(a), shape).view(DeviceArray)

    def __getattr__(self, name):
        raise AttributeError(f"CountingCupy does not model cupy.{name}: add it, with what it launches")


class CountingLauncher:
    """The emulator's launcher, counting each raw-kernel launch ("kernel", and per name)."""

    def __init__(self):
        self.inner = emulator.default_launcher()
        self.names = collections.Counter()

    def __call__(self, name, grid, block, args):
        COUNTS["kernel"] += 1
        self.names[name] += 1
        views = {}                                     # one host view per distinct array (no false overlaps)
        args = tuple(views.setdefault(id(a), _host(a)) if isinstance(a, DeviceArray) else a for a in args)
        self.inner(name, grid, block, args)


KINDS = ("kernel", "gemm", "elementwise", "reduction", "h2d", "d2h")


@functools.lru_cache(maxsize=None)
def count_train_step(loss="adv_gdl", optimizer="sgd", steps=2):
    """Count the launches and transfers of the last of `steps` iterations of train_min's loop
    (framepred.train_step, then read_log) on the CUDA backend (emulated) at a tiny size (the counts depend on the layers, not on the sizes).
    -> (COUNTS of that step, the raw kernels by name)."""
    import framepred as fp
    launcher = CountingLauncher()
    ops = cupy_ops.CudaOps(xp=CountingCupy(), launch=launcher)
    config = fp.make_config(m=2, n=1, patch=32, width=1 / 32, loss=loss)
    params = {key: ops.asarray(value) for key, value in fp.init_params(config, seed=3).items()}
    # Adam as the presets keep it: with the temporal average of G's weights (train_min --ema)
    opt = None if optimizer == "sgd" else {net: fp.adam_init(params, net, ema=0.998 * (net == "G")) for net in ("G", "D")}
    rng = np.random.default_rng(0)

    def batch():
        return tuple(ops.asarray(rng.uniform(-1, 1, (2, c, 32, 32)).astype(np.float32)) for c in (6, 3))

    for _ in range(steps):
        d_batch, g_batch = batch(), batch()          # the transfers of the batches, counted apart
        COUNTS.clear()
        launcher.names.clear()
        log = fp.read_log(ops, fp.train_step(ops, params, config, d_batch, g_batch, lr_g=0.04, opt=opt))
    assert all(isinstance(v, float) for v in log.values())
    counts = collections.Counter({kind: COUNTS[kind] for kind in KINDS})
    counts["h2d"] += 4                                 # the 4 batch arrays of the iteration
    counts["launches"] = sum(counts[k] for k in ("kernel", "gemm", "elementwise", "reduction"))
    return counts, launcher.names


def report(counts):
    return ", ".join(f"{k} {counts[k]}" for k in ("launches",) + KINDS)


if __name__ == "__main__":
    for optimizer in ("sgd", "adam"):
        counts, names = count_train_step(optimizer=optimizer)
        print(f"adv_gdl, {optimizer}: {report(counts)}")
        print("  raw kernels: " + ", ".join(f"{n} {c}" for n, c in names.most_common()))


# Counted on the commit that added this test (issue 12 counted 960 launches before it; its target is
# 400): a count above its bound means a change added launches or transfers to every iteration.
# 919 launches when first counted: 559 raw kernels (86 adam_update or sgd_update, one per tensor),
# 190 GEMMs, 99 elementwise, 71 reductions, h2d 5, and one device-to-host copy: the losses and D's
# accuracies are summed on the device and read once by read_log (20 copies, one per value and scale,
# when each was read on its own; the sums on the device cost 44 elementwise kernels and 8 reductions
# more than that).
# 835: the update in one launch per network (sgd_update_many / adam_update_many), whose table of
# tensor addresses is one host-to-device copy per network (h2d 5 -> 7).
# 797: the convolutions' bias gradients in the launch that puts dout in the GEMM layout
# (nchw_to_rows_bias_grad: 31 reductions fewer), and their input gradients after data channels
# by col2im from the columns of every channel (no copy of the weight's slice: 7 elementwise fewer).
# 681: every ReLU applied by the convolution or fully connected layer before it (relu=True), in the
# launch that adds the bias (70 relu_forward fewer), and its gradient in the launch that puts dout
# in the GEMM layout (54 relu_backward fewer); the fc layers' bias gradients there too (12
# reductions fewer, 12 of those launches more).
# 662: GDL's terms (each divided by its count) and gradient in one launch and one sum (3 launches
# fewer per call); d_loss_batched's accuracies from all the scales' logits at once. Counted with
# CuPy's concatenate as it launches (one copy per array up to 8 arrays, which raised the count of the
# 2-array concatenations and of read_log's stack of 7 values); 681 was counted with one kernel each.
# 648: concat_forward of two inputs (all of the model's) in one launch, concat_channels2.
# 617: the convolution's cache keeps its columns for the weight gradient (31 im2col launches fewer).
# Adam 618: the presets' Adam keeps the temporal average of G's weights (--ema): one ema_update_many
# launch, its table one host-to-device copy.
BOUNDS = {
    "adam": dict(launches=618, kernel=323, gemm=190, elementwise=87, reduction=18, h2d=8, d2h=1),
    "sgd": dict(launches=617, kernel=322, gemm=190, elementwise=87, reduction=18, h2d=7, d2h=1),
}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_update_is_one_launch_per_network(optimizer):
    """framepred's sgd_update / adam_update: one sgd_update_many / adam_update_many launch for D's
    tensors and one for G's (a table of their addresses, one host-to-device copy each), none per tensor."""
    needs_compiler()
    counts, names = count_train_step(optimizer=optimizer)
    assert names[f"{optimizer}_update_many"] == 2 and names[f"{optimizer}_update"] == 0, dict(names)
    assert names["ema_update_many"] == (optimizer == "adam"), dict(names)     # G's average, with Adam


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_every_kernel_with_a_32_bit_twin_runs_as_its_twin(optimizer):
    """At a training iteration's sizes every launch of a kernel that has a `name_i32` twin (the
    index arithmetic that divides) goes to the twin: no call site bypasses cupy_ops._index_args."""
    needs_compiler()
    counts, names = count_train_step(optimizer=optimizer)
    kernels = {n for src in cupy_ops.kernel_sources().values() for n in cupy_ops.kernel_names(src)}
    wide = {n: c for n, c in names.items() if n + "_i32" in kernels}
    assert not wide and any(n.endswith("_i32") for n in names), dict(names)


@pytest.mark.parametrize("optimizer", sorted(BOUNDS))
def test_launches_and_transfers_per_adv_gdl_iteration_stay_bounded(optimizer):
    needs_compiler()
    counts, names = count_train_step(optimizer=optimizer)
    over = {k: f"{counts[k]} > {bound}" for k, bound in BOUNDS[optimizer].items() if counts[k] > bound}
    assert not over, f"more per iteration than pinned: {over} ({report(counts)})"
    # the counting itself works: every kind of launch and transfer is seen
    assert all(counts[k] > 0 for k in KINDS), report(counts)


def test_counting_counts_what_cupy_would_launch():
    """The counting model on single operations: ufuncs, reductions, GEMMs, copies, transfers."""
    needs_compiler()
    xp, launcher = CountingCupy(), CountingLauncher()
    ops = cupy_ops.CudaOps(xp=xp, launch=launcher)
    COUNTS.clear()
    a = ops.asarray(np.ones((4, 4), np.float32))                    # h2d
    b = 2 * a + a                                                    # 2 elementwise
    b -= 0.5 * a                                                     # 2 elementwise
    s = b.sum(axis=0).mean()                                         # 2 reductions
    ops.relu_forward(xp.matmul(a, b.T))                              # 1 gemm, 1 kernel
    ops.sgd_update(a, b, 0.1)                                        # 1 kernel
    assert float(s) == pytest.approx(10.0)                           # d2h
    ops.to_host(a)                                                   # d2h
    xp.ascontiguousarray(a.T)                                        # a copy
    assert dict(COUNTS) == dict(h2d=1, elementwise=5, reduction=2, gemm=1, kernel=2, d2h=2)
