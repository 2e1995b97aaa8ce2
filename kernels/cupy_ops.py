"""The CUDA backend: the ops of numpy_ops.py on CuPy arrays, with the raw kernels of kernels/*.cu.

`CudaOps()` offers exactly numpy_ops' names, signatures and return conventions
(`out, cache = op_forward(...)`, `dx, ... = op_backward(dout, cache)`, losses return
`(loss, dpred)`), so the model and the trainer never branch on the backend. The caches hold
what this backend's own backward needs, which is not always what numpy_ops keeps (relu keeps
its output instead of a mask, as do conv2d and fc with relu=True; maxpool2 an int32 argmax).

- GEMMs go to cuBLAS through `xp.matmul`, all of them through `_gemm` (which bench.py times);
  everything else is a kernel of kernels/*.cu, launched with one thread per output element and
  a grid-stride loop. The means of the losses are `xp` reductions (`.mean()`, `.sum()`).
- Few launches per training iteration (issue 12; `python tests/test_gpu_path.py` counts them):
  a layer's bias and ReLU (relu=True) go into the launch that puts the GEMM's rows in NCHW, the
  ReLU's gradient and the bias gradient into the launch that puts dout in the GEMM layout, and
  sgd_update_many / adam_update_many / ema_update_many update all of a network's tensors in one launch.
- The GEMM layout is channel-major, as the fast CPU backend's (issue 12): im2col's columns are
  (C*k*k, N*Ho*Wo), numpy_ops.im2col(...).T, and a layer's GEMM output is (C_out, N*Ho*Wo) (an fc
  layer's (D_out, N)). Every layout kernel then runs with the pixel index fastest on both of its
  sides, so its loads and stores are coalesced (kernels/conv.cu, kernels/layout.cu).
- 32-bit index arithmetic where the sizes allow it: the kernels whose index arithmetic divides
  (conv.cu, layout.cu, resample.cu, gdl_loss_terms) have a twin `name_i32` taking int sizes, and
  `_index_args` launches it unless an index could reach 2^31 (then the long long kernel runs).
- float32 only: the kernels take `const float*`. An op given another dtype raises a TypeError
  naming the op and the argument (no silent cast); `asarray(a, dtype)` is the place to convert.
- A loss value is a 0-d device array (float32); `float(loss)` or `to_host(loss)` brings it to the host.

The Python here never touches CUDA directly: arrays come from `self.xp` and every kernel call goes
through `self.launch(name, grid, block, args)`. With CuPy these are `cupy` and `RawModuleLauncher`
(the kernels compiled by NVRTC once, on first use). The tests build
`CudaOps(xp=numpy, launch=tests/emulator.EmulatedLauncher())` instead, so that all of this file
(grid sizes, argument order and types, output allocation) runs on NumPy arrays against the same
.cu sources compiled as C++, on machines without a GPU.
"""
import glob
import operator
import os
import re

import numpy as np

from kernels.numpy_ops import _check_pair, _check_rank, check_dx_from, conv_check, conv_output_size

KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))

# NVRTC options of every kernels/*.cu (tests/test_cuda_compile.py compiles with exactly these).
# CuPy itself adds the target architecture of the device and '-ftz=true'. No fast math: the
# kernels keep IEEE expf/tanhf/division, so they stay within float32 rounding of numpy_ops.
OPTIONS = ("-std=c++17",)

BLOCK = 256             # threads per block of every launch
MAX_BLOCKS = 65536      # grid cap; larger problems loop (grid-stride), so any size is covered

# The `name_i32` kernels (conv.cu, layout.cu, resample.cu, gdl_loss_terms) index with int: every
# value their index arithmetic forms must stay below this.
INDEX32_LIMIT = 2**31

_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')


def kernel_sources():
    """{file name: CUDA source} of every kernels/*.cu, sorted by name: what NVRTC compiles."""
    out = {}
    for path in sorted(glob.glob(os.path.join(KERNEL_DIR, "*.cu"))):
        with open(path, encoding="utf-8") as f:
            out[os.path.basename(path)] = f.read()
    return out


def kernel_names(source):
    """Names of the `extern "C" __global__` kernels defined in a CUDA source."""
    return _KERNEL_RE.findall(source)


def check_gpu():
    """Raise RuntimeError saying why CuPy cannot run here (not installed, no device); else return."""
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError('CuPy is not installed (for a CUDA 12 driver: pip install "cupy-cuda12x[ctk]"; '
                           'README "On a GPU")') from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, driver too old, ...
        raise RuntimeError(f"CuPy cannot reach a CUDA device: {type(e).__name__}: {e}") from e
    if count < 1:
        raise RuntimeError("CuPy sees no CUDA device")


def probe(cupy=None):
    """Prove that the GPU path works here before a run relies on it -> a ready CudaOps.

    `check_gpu` only asks CuPy to count devices; NVRTC (the kernels' compiler) and cuBLAS load
    later, at the first launch and the first matmul, and a wheel without its CUDA libraries fails
    only then. So: compile every kernel, run one kernel and one small GEMM, synchronise, and check
    the numbers. Any failure raises (the caller turns it into the reason of a fallback or an error).
    cupy: the module to probe (tests pass a fake one); default: import cupy."""
    check_gpu()
    if cupy is None:
        import cupy
    ops = CudaOps(xp=cupy)
    ops.launch.load()                                           # NVRTC: every kernel of kernels/*.cu
    a = cupy.asarray(np.arange(-8, 8, dtype=np.float32).reshape(4, 4))
    relu, _ = ops.relu_forward(a)                               # one raw kernel launch
    prod = ops._gemm(relu, relu)                                # cuBLAS
    cupy.cuda.get_current_stream().synchronize()
    host = np.maximum(np.arange(-8, 8, dtype=np.float32).reshape(4, 4), 0)
    if not np.allclose(ops.to_host(prod), host @ host):
        raise RuntimeError("the probe's 4x4 GEMM on the GPU gave wrong numbers")
    return ops


def fits_index32(largest, threads):
    """Whether a kernel's `name_i32` twin may run a launch: `largest` bounds every index the kernel
    forms (its loop's total and the element count of each array it reads or writes), `threads` is
    the launch's grid size. The grid-stride loop's last step overshoots the total by up to
    `threads`, and that value is formed too, so both together must stay below 2^31."""
    return largest + threads <= INDEX32_LIMIT


def one_line(error, limit=300):
    """'Type: first line of the message' (NVRTC and cuBLAS errors span many lines), at most `limit` chars."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    # check_gpu's own RuntimeErrors are sentences; any other error needs its type to make sense
    text = first if type(error) is RuntimeError and first else f"{type(error).__name__}: {first}".rstrip(": ")
    if len(lines) > 1:
        text += " (...)"
    return text if len(text) <= limit else text[:limit - 3] + "..."


class RawModuleLauncher:
    """launch(name, grid, block, args) on the GPU: one cupy.RawModule per .cu file, compiled lazily
    (on the first launch) with OPTIONS; CuPy caches the binaries on disk."""

    def __init__(self, cupy):
        self._cupy = cupy
        self._functions = None

    def load(self):
        """Compile every kernel now (get_function makes NVRTC compile the module); idempotent."""
        if self._functions is None:
            functions = {}
            for source in kernel_sources().values():
                module = self._cupy.RawModule(code=source, options=OPTIONS)
                for name in kernel_names(source):
                    functions[name] = module.get_function(name)
            self._functions = functions

    def __call__(self, name, grid, block, args):
        if self._functions is None:
            self.load()
        self._functions[name](grid, block, args)


class CudaOps:
    """numpy_ops' API on `xp` arrays, computed by the kernels of kernels/*.cu.

    xp: the array module (default cupy); launch: callable(name, grid, block, args) running one
    kernel (default RawModuleLauncher); block, max_blocks: the launch geometry (tests shrink them to
    make the grid-stride loops iterate); index32: launch the 32-bit index twins (`name_i32`) where
    the sizes allow (see _index_args); False runs the long long kernels always (the tests compare
    the two).
    """

    name = "gpu"
    batch_d_terms = True    # framepred.train_step: D's real and generated terms as one batch (fewer launches)

    def __init__(self, xp=None, launch=None, block=BLOCK, max_blocks=MAX_BLOCKS, index32=True):
        if xp is None:
            import cupy as xp
        self.xp = xp
        self.launch = launch if launch is not None else RawModuleLauncher(xp)
        self.block = int(block)
        self.max_blocks = int(max_blocks)
        self.index32 = bool(index32)
        self._constants = {}           # value -> (1,) device array, see _constant

    # ------------------------------------------------------------------ helpers
    def _blocks(self, items):
        """Enough blocks to give each of `items` work items its thread, at most max_blocks (the
        kernel's grid-stride loop does the rest)."""
        return min(self.max_blocks, (items + self.block - 1) // self.block)

    def _run(self, kernel, items, *args):
        """Launch `kernel` for `items` work items (see _blocks). Nothing to do for 0 items."""
        if items <= 0:
            return
        self.launch(kernel, (self._blocks(items),), (self.block,), args)

    def _index_args(self, items, arrays, sizes):
        """-> (kernel name suffix, sizes) for a launch of a kernel that has a 32-bit index twin:
        ('_i32', the sizes as numpy.int32) when every index it forms fits an int, else ('', the
        sizes as Python ints, which CuPy passes as long long). Every value those kernels compute is
        a size, a partial product of their loop's total (`items`), or an offset into one of their
        `arrays` (all their pointer arguments), so the largest of these bounds them all."""
        largest = max([int(items)] + [int(a.size) for a in arrays] + [abs(int(s)) for s in sizes])
        if self.index32 and fits_index32(largest, self._blocks(items) * self.block):
            return "_i32", tuple(np.int32(s) for s in sizes)
        return "", tuple(int(s) for s in sizes)

    def _run_indexed(self, kernel, items, arrays, sizes):
        """_run for a kernel with a 32-bit twin, whose arguments are `arrays`, then integer `sizes`:
        the twin runs where _index_args allows."""
        suffix, sizes = self._index_args(items, arrays, sizes)
        self._run(kernel + suffix, items, *arrays, *sizes)

    def _f32(self, a, what):
        """A C-contiguous float32 xp array, or a TypeError that names the op and the argument."""
        if not isinstance(a, self.xp.ndarray):
            raise TypeError(f"gpu backend, {what}: expected a {self.xp.__name__} array, got "
                            f"{type(a).__name__} (move host data with ops.asarray)")
        if a.dtype != np.float32:
            raise TypeError(f"gpu backend, {what}: the CUDA kernels are float32, got {a.dtype} "
                            f"(convert with ops.asarray(a, dtype='float32'))")
        return self.xp.ascontiguousarray(a)

    def _constant(self, value):
        """A (1,) float32 device array holding value, filled once per value and kept (read-only use)."""
        if value not in self._constants:
            self._constants[value] = self.xp.full((1,), value, dtype=np.float32)
        return self._constants[value]

    def _gemm(self, a, b):
        """a (M, K) @ b (K, N) -> (M, N) on cuBLAS; every GEMM of this backend goes through here."""
        return self.xp.matmul(a, b)

    def _empty(self, shape, dtype=np.float32):
        return self.xp.empty(shape, dtype=dtype)

    @staticmethod
    def _check_same_shape(dout, shape, what):
        if tuple(dout.shape) != tuple(shape):
            raise ValueError(f"{what}: dout has shape {tuple(dout.shape)}, expected {tuple(shape)}")

    # ------------------------------------------------------------------ conv2d
    conv_output_size = staticmethod(conv_output_size)
    conv_check = staticmethod(conv_check)

    def im2col(self, x, k, pad):
        """x: (N, C, H, W) -> cols (C*k*k, N*Ho*Wo), channel-major: numpy_ops.im2col(x, k, pad).T."""
        x = self._f32(x, "im2col x")
        n, c, h, w = x.shape
        ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
        cols = self._empty((c * k * k, n * ho * wo))
        self._run_indexed("im2col", cols.size, (x, cols), (n, c, h, w, k, pad))
        return cols

    def col2im(self, cols, x_shape, k, pad, c_from=0):
        """Adjoint of im2col: cols (C*k*k, N*Ho*Wo) -> dx (N, C, H, W). With c_from > 0, cols holds
        c_from more channels, before dx's: cols ((c_from + C)*k*k, N*Ho*Wo), and dx is the adjoint for
        its channels c_from.. alone."""
        cols = self._f32(cols, "col2im cols")
        n, c, h, w = (int(s) for s in x_shape)
        ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
        self._check_same_shape(cols, ((c_from + c) * k * k, n * ho * wo), "col2im")
        dx = self._empty((n, c, h, w))
        self._run_indexed("col2im", dx.size, (cols, dx), (n, c, h, w, k, pad, c_from))
        return dx

    def _rows_to_nchw_bias(self, rows, b, n, c, hw, relu):
        """The GEMM's channel-major rows (C, N*HW) -> (N, C, HW), plus the bias, then the ReLU if
        relu: one launch."""
        out = self._empty((n, c, hw))
        self._run_indexed("rows_to_nchw_bias", out.size, (rows, b, out), (n, c, hw, int(bool(relu))))
        return out

    def _nchw_to_rows(self, dout, out, n, c, hw, need_db):
        """dout (N, C, HW) -> the GEMM's channel-major rows (C, N*HW), taken back first through the
        ReLU whose output was `out` (None: no ReLU), and the bias gradient db (C,) if need_db (else
        None): one launch either way."""
        rows = self._empty((c, n * hw))
        relu = int(out is not None)
        out = dout if out is None else out                      # not read without a ReLU
        if not need_db:
            self._run_indexed("nchw_to_rows", rows.size, (dout, out, rows), (n, c, hw, relu))
            return rows, None
        db = self._empty((c,))
        self._run_indexed("nchw_to_rows_bias_grad", c + rows.size, (dout, out, rows, db), (n, c, hw, relu))
        return rows, db

    def conv2d_forward(self, x, w, b, mode, relu=False):
        """Stride-1 convolution, im2col + one cuBLAS GEMM, then the bias and the ReLU (relu=True)
        in the launch that puts the GEMM's rows in NCHW; see numpy_ops.conv2d_forward. The cache
        keeps the output as the ReLU's (None without one)."""
        pad = conv_check(x.shape, w.shape, mode)
        x, w, b = self._f32(x, "conv2d x"), self._f32(w, "conv2d weight"), self._f32(b, "conv2d bias")
        n, _, h, wd = x.shape
        c_out, _, k, _ = w.shape
        if tuple(b.shape) != (c_out,):
            raise ValueError(f"conv2d: bias must have shape ({c_out},), got {tuple(b.shape)}")
        ho, wo = conv_output_size(h, wd, k, mode)
        cols = self.im2col(x, k, pad)                                 # (C_in*k*k, N*Ho*Wo)
        rows = self._gemm(w.reshape(c_out, -1), cols)                 # (C_out, N*Ho*Wo)
        out = self._rows_to_nchw_bias(rows, b, n, c_out, ho * wo, relu).reshape(n, c_out, ho, wo)
        # Unlike numpy_ops, the cache keeps cols for the weight gradient: one im2col launch less per
        # layer in the backward, for the columns of every cached layer at once (1.2 GiB for G at the
        # paper's widths and batch 8; prediction keeps no caches, see framepred.conv_same_in_bands).
        return out, (x, w, pad, out if relu else None, cols)

    def conv2d_backward(self, dout, cache, need_dx=True, need_dw=True, dx_from=0):
        """-> dx (N, C_in - dx_from, H, W) or None (need_dx=False), dw (C_out, C_in, k, k) and
        db (C_out,), or None for both (need_dw=False); see numpy_ops.conv2d_backward."""
        x, w, pad, relu_out, cols = cache
        n, c_in, h, wd = x.shape
        c_out, _, k, _ = w.shape
        check_dx_from(dx_from, c_in)
        ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
        dout = self._f32(dout, "conv2d_backward dout")
        self._check_same_shape(dout, (n, c_out, ho, wo), "conv2d_backward")
        # dout through the ReLU, in the GEMM layout, and db: one launch
        rows, db = self._nchw_to_rows(dout, relu_out, n, c_out, ho * wo, need_db=need_dw)
        dw = None
        if need_dw:
            dw = self._gemm(rows, cols.T).reshape(w.shape)              # the forward's columns
        dx = None
        if need_dx:
            # the columns of every input channel (no copy of w's slice), col2im of those after dx_from
            dcols = self._gemm(w.reshape(c_out, -1).T, rows)              # (C_in*k*k, N*Ho*Wo)
            dx = self.col2im(dcols, (n, c_in - dx_from, h, wd), k, pad, c_from=dx_from)
        return dx, dw, db

    # ------------------------------------------------------------------ fully connected
    def fc_forward(self, x, w, b, relu=False):
        """x: (N, D_in); w: (D_out, D_in); b: (D_out,) -> out (N, D_out) = x w^T + b [then the ReLU,
        in the same launch as the bias]."""
        _check_rank(x, 2, "fc")
        if x.shape[1] != w.shape[1]:
            raise ValueError(f"fc: x has {x.shape[1]} features but the weight expects {w.shape[1]}")
        x, w, b = self._f32(x, "fc x"), self._f32(w, "fc weight"), self._f32(b, "fc bias")
        n, d_out = x.shape[0], w.shape[0]
        if tuple(b.shape) != (d_out,):
            raise ValueError(f"fc: bias must have shape ({d_out},), got {tuple(b.shape)}")
        out = self._rows_to_nchw_bias(self._gemm(w, x.T), b, n, d_out, 1, relu).reshape(n, d_out)  # HW = 1
        return out, (x, w, out if relu else None)

    def fc_backward(self, dout, cache, need_dw=True):
        """dout: (N, D_out) -> dx (N, D_in), dw (D_out, D_in) and db (D_out,), or None for both (need_dw=False)."""
        x, w, relu_out = cache
        dout = self._f32(dout, "fc_backward dout")
        self._check_same_shape(dout, (x.shape[0], w.shape[0]), "fc_backward")
        if not need_dw and relu_out is None:    # nothing to launch: dout is the GEMM's operand as it is
            return self._gemm(dout, w), None, None
        # dout through the ReLU, channel-major (D_out, N), and db: one launch (HW = 1)
        rows, db = self._nchw_to_rows(dout, relu_out, x.shape[0], w.shape[0], 1, need_db=need_dw)
        dx = self._gemm(rows.T, w)
        if not need_dw:
            return dx, None, None
        return dx, self._gemm(rows, x), db

    # ------------------------------------------------------------------ activations
    def _unary(self, kernel, x, what):
        x = self._f32(x, what)
        out = self._empty(x.shape)
        self._run(kernel, x.size, x, out, x.size)
        return out

    def _unary_backward(self, kernel, dout, out, what):
        dout = self._f32(dout, what)
        self._check_same_shape(dout, out.shape, what)
        dx = self._empty(out.shape)
        self._run(kernel, dx.size, dout, out, dx, dx.size)
        return dx

    def relu_forward(self, x):
        """Any shape. The cache is the output (x > 0 exactly where out > 0)."""
        out = self._unary("relu_forward", x, "relu x")
        return out, out

    def relu_backward(self, dout, cache):
        return self._unary_backward("relu_backward", dout, cache, "relu_backward dout")

    def tanh_forward(self, x):
        out = self._unary("tanh_forward", x, "tanh x")
        return out, out

    def tanh_backward(self, dout, cache):
        return self._unary_backward("tanh_backward", dout, cache, "tanh_backward dout")

    def sigmoid_forward(self, x):
        out = self._unary("sigmoid_forward", x, "sigmoid x")
        return out, out

    def sigmoid_backward(self, dout, cache):
        return self._unary_backward("sigmoid_backward", dout, cache, "sigmoid_backward dout")

    # ------------------------------------------------------------------ resampling
    def avgpool_forward(self, x, f):
        """Average over f x f blocks. (N, C, H, W), H and W divisible by f -> (N, C, H/f, W/f)."""
        _check_rank(x, 4, "avgpool")
        f = operator.index(f)
        n, c, h, w = x.shape
        if h % f or w % f:
            raise ValueError(f"avgpool by {f}: the sides {h}x{w} must divide by {f}")
        x = self._f32(x, "avgpool x")
        out = self._empty((n, c, h // f, w // f))
        self._run_indexed("avgpool_forward", out.size, (x, out), (n, c, h, w, f))
        return out, (x.shape, f)

    def avgpool_backward(self, dout, cache):
        (n, c, h, w), f = cache
        dout = self._f32(dout, "avgpool_backward dout")
        self._check_same_shape(dout, (n, c, h // f, w // f), "avgpool_backward")
        dx = self._empty((n, c, h, w))
        self._run_indexed("avgpool_backward", dx.size, (dout, dx), (n, c, h, w, f))
        return dx

    def upsample_forward(self, x, f):
        """Nearest-neighbour upscaling by f. (N, C, H, W) -> (N, C, H f, W f)."""
        _check_rank(x, 4, "upsample")
        f = operator.index(f)
        x = self._f32(x, "upsample x")
        n, c, h, w = x.shape
        out = self._empty((n, c, h * f, w * f))
        self._run_indexed("upsample_forward", out.size, (x, out), (n, c, h * f, w * f, f))
        return out, f

    def upsample_backward(self, dout, cache):
        f = cache
        _check_rank(dout, 4, "upsample_backward")
        dout = self._f32(dout, "upsample_backward dout")
        n, c, h, w = dout.shape
        if h % f or w % f:
            raise ValueError(f"upsample_backward by {f}: dout's sides {h}x{w} must divide by {f}")
        dx = self._empty((n, c, h // f, w // f))
        self._run_indexed("upsample_backward", dx.size, (dout, dx), (n, c, h, w, f))
        return dx

    def maxpool2_forward(self, x):
        """2x2 max pooling, stride 2; an odd last row or column is dropped; ties go to the first."""
        _check_rank(x, 4, "maxpool2")
        n, c, h, w = x.shape
        if h < 2 or w < 2:
            raise ValueError(f"maxpool2: input {h}x{w} is smaller than the 2x2 window")
        x = self._f32(x, "maxpool2 x")
        out = self._empty((n, c, h // 2, w // 2))
        arg = self._empty(out.shape, np.int32)
        self._run_indexed("maxpool2_forward", out.size, (x, out, arg), (n, c, h, w))
        return out, (x.shape, arg)

    def maxpool2_backward(self, dout, cache):
        (n, c, h, w), arg = cache
        dout = self._f32(dout, "maxpool2_backward dout")
        self._check_same_shape(dout, arg.shape, "maxpool2_backward")
        dx = self._empty((n, c, h, w))
        self._run_indexed("maxpool2_backward", dx.size, (dout, arg, dx), (n, c, h, w))
        return dx

    # ------------------------------------------------------------------ plumbing
    def concat_forward(self, xs):
        """Channel concatenation. xs: list of (N, C_i, H, W) -> (N, sum C_i, H, W)."""
        xs = [self._f32(x, f"concat input {i}") for i, x in enumerate(xs)]
        if not xs:
            raise ValueError("concat: needs at least one array")
        for i, x in enumerate(xs):
            _check_rank(x, 4, f"concat input {i}")
            if (x.shape[0],) + tuple(x.shape[2:]) != (xs[0].shape[0],) + tuple(xs[0].shape[2:]):
                raise ValueError(f"concat: input {i} has shape {tuple(x.shape)}, which differs from "
                                 f"input 0's {tuple(xs[0].shape)} outside the channel axis")
        n, _, h, w = xs[0].shape
        channels = [x.shape[1] for x in xs]
        total = sum(channels)
        out = self._empty((n, total, h, w))
        if len(xs) == 2:                                   # the model's concatenations: one launch
            self._run_indexed("concat_channels2", out.size, (xs[0], xs[1], out), (n, channels[0], channels[1], h * w))
            return out, channels
        offset = 0
        for x, c in zip(xs, channels):
            self._run_indexed("copy_channels", x.size, (x, out), (n, c, h * w, c, 0, total, offset))
            offset += c
        return out, channels

    def concat_backward(self, dout, cache):
        """-> list of dx_i (N, C_i, H, W), the split of dout."""
        dout = self._f32(dout, "concat_backward dout")
        n, total, h, w = dout.shape
        if sum(cache) != total:
            raise ValueError(f"concat_backward: dout has {total} channels, the inputs had {sum(cache)}")
        if len(cache) == 1:
            return [dout]                                  # one part: dout itself, no copy
        dxs, offset = [], 0
        for c in cache:
            dx = self._empty((n, c, h, w))
            self._run_indexed("copy_channels", dx.size, (dout, dx), (n, c, h * w, total, offset, c, 0))
            dxs.append(dx)
            offset += c
        return dxs

    def flatten_forward(self, x):
        """(N, C, H, W) -> (N, C*H*W), C order. A reshape: no kernel."""
        x = self.xp.ascontiguousarray(x)
        return x.reshape(x.shape[0], -1), x.shape

    def flatten_backward(self, dout, cache):
        return self.xp.ascontiguousarray(dout).reshape(cache)

    # ------------------------------------------------------------------ losses
    def lp_loss(self, pred, target, p):
        """mean |pred - target|^p, p in {1, 2} -> (loss, dpred); the gradient at pred == target is 0."""
        _check_pair(pred, target, "lp_loss")
        if p not in (1, 2):
            raise ValueError(f"lp_loss: p must be 1 or 2, got {p}")
        pred, target = self._f32(pred, "lp_loss pred"), self._f32(target, "lp_loss target")
        term, grad = self._empty(pred.shape), self._empty(pred.shape)
        self._run("lp_loss_terms", pred.size, pred, target, term, grad, pred.size, int(p))
        return term.mean(), grad

    def gdl_loss(self, pred, target, alpha):
        """The gradient difference loss (numpy_ops.gdl_loss) -> (loss, dpred)."""
        _check_pair(pred, target, "gdl_loss")
        if alpha not in (1, 2):
            raise ValueError(f"gdl_loss: alpha must be 1 or 2, got {alpha}")
        _check_rank(pred, 4, "gdl_loss")
        pred, target = self._f32(pred, "gdl_loss pred"), self._f32(target, "gdl_loss target")
        n, c, h, w = pred.shape
        # the vertical pairs' terms, then the horizontal ones', each divided by its count (a side
        # of 1 has no pairs), and the gradient: one launch; the loss, the two means' sum, one sum
        term = self._empty((n * c * (h - 1) * w + n * c * h * (w - 1),))
        dpred = self._empty(pred.shape)
        self._run_indexed("gdl_loss_terms", pred.size, (pred, target, term, dpred), (n, c, h, w, int(alpha)))
        return term.sum(), dpred

    def bce_logits_loss(self, logits, target):
        """Binary cross-entropy of sigmoid(logits), mean over the batch -> (loss, dlogits).
        target: a scalar 0 or 1, or an array broadcastable to logits."""
        z = self._f32(logits, "bce_logits_loss logits")
        xp = self.xp
        if not isinstance(target, xp.ndarray) and np.ndim(target) == 0:
            t, t_step = self._constant(float(target)), 0                       # one target for all
        else:
            t = xp.ascontiguousarray(xp.broadcast_to(xp.asarray(target, dtype=np.float32), z.shape))
            t_step = 1
        term, grad = self._empty(z.shape), self._empty(z.shape)
        self._run("bce_logits_terms", z.size, z, t, t_step, term, grad, z.size)
        return term.mean(), grad

    # ------------------------------------------------------------------ optimiser
    def adam_update(self, w, g, m, v, lr, beta1, beta2, eps, t):
        """One Adam step on one tensor, in place on w, m and v (numpy_ops.adam_update): one launch."""
        if not (w.shape == g.shape == m.shape == v.shape):
            raise ValueError(f"adam_update: shapes differ: w {w.shape}, g {g.shape}, m {m.shape}, v {v.shape}")
        if t < 1:
            raise ValueError(f"adam_update: the step number t counts from 1, got {t}")
        for a, what in ((w, "w"), (m, "m"), (v, "v")):
            self._in_place([a], f"adam_update {what}")
        g = self._f32(g, "adam_update g")
        self._run("adam_update", w.size, w, g, m, v, float(lr), float(beta1), float(beta2), float(eps),
                  1.0 / (1.0 - beta1 ** t), 1.0 / (1.0 - beta2 ** t), w.size)

    def sgd_update(self, w, g, lr):
        """One plain SGD step on one tensor, in place on w: w <- w - lr g (framepred.sgd_update's
        formula), one launch instead of CuPy's two (lr * g, then the subtraction)."""
        if w.shape != g.shape:
            raise ValueError(f"sgd_update: shapes differ: w {w.shape}, g {g.shape}")
        self._in_place([w], "sgd_update w")
        g = self._f32(g, "sgd_update g")
        self._run("sgd_update", w.size, w, g, float(lr), w.size)

    # ------------------------------------------------------------------ the optimiser on many tensors
    def _address(self, a):
        """The device address of a's first element (CuPy: a.data.ptr; NumPy, in the tests: its memory)."""
        return a.data.ptr if hasattr(a.data, "ptr") else a.ctypes.data

    def _tensor_table(self, what, columns):
        """The table of sgd_update_many / adam_update_many / ema_update_many (kernels/elementwise.cu): the element
        offsets of the tensors of columns[0] laid end to end, then each column's device addresses,
        as one int64 device array (one host-to-device copy). -> (table, tensors, elements)."""
        for a, i in ((a, i) for column in columns for i, a in enumerate(column)):
            if a.shape != columns[0][i].shape:
                raise ValueError(f"{what}: shapes differ in tensor {i}: {columns[0][i].shape} and {a.shape}")
        offsets = np.cumsum([0] + [int(w.size) for w in columns[0]])
        host = np.concatenate([offsets] + [[self._address(a) for a in column] for column in columns])
        return self.xp.asarray(host.astype(np.int64)), len(columns[0]), int(offsets[-1])

    def _in_place(self, arrays, what):
        """The arrays an update writes in place, checked: C-contiguous float32 arrays of this backend."""
        for a in arrays:
            if not isinstance(a, self.xp.ndarray) or not a.flags.c_contiguous or a.dtype != np.float32:
                raise TypeError(f"gpu backend, {what}: updated in place, must be C-contiguous float32 "
                                f"{self.xp.__name__} arrays")
        return list(arrays)

    def sgd_update_many(self, ws, gs, lr):
        """sgd_update on every pair of ws and gs (a network's parameters and gradients), all in one
        launch instead of one per tensor: the kernel finds each element's tensor in a table of
        addresses (numpy_ops.sgd_update_many loops over the pairs)."""
        ws = self._in_place(ws, "sgd_update_many w")
        gs = [self._f32(g, f"sgd_update_many g {i}") for i, g in enumerate(gs)]
        if len(ws) != len(gs):
            raise ValueError(f"sgd_update_many: {len(ws)} tensors but {len(gs)} gradients")
        if not ws:
            return
        table, count, total = self._tensor_table("sgd_update_many", [ws, gs])
        self._run("sgd_update_many", total, table, count, float(lr))

    def adam_update_many(self, ws, gs, ms, vs, lr, beta1, beta2, eps, t):
        """adam_update on every (w, g, m, v) of the lists, all in one launch (see sgd_update_many)."""
        ws, ms, vs = (self._in_place(a, f"adam_update_many {what}") for a, what in ((ws, "w"), (ms, "m"), (vs, "v")))
        gs = [self._f32(g, f"adam_update_many g {i}") for i, g in enumerate(gs)]
        if not len(ws) == len(gs) == len(ms) == len(vs):
            raise ValueError(f"adam_update_many: {len(ws)} tensors, {len(gs)} gradients, {len(ms)} and "
                             f"{len(vs)} moments")
        if t < 1:
            raise ValueError(f"adam_update_many: the step number t counts from 1, got {t}")
        if not ws:
            return
        table, count, total = self._tensor_table("adam_update_many", [ws, gs, ms, vs])
        self._run("adam_update_many", total, table, count, float(lr), float(beta1), float(beta2), float(eps),
                  1.0 / (1.0 - beta1 ** t), 1.0 / (1.0 - beta2 ** t))

    def ema_update_many(self, avgs, ws, beta):
        """numpy_ops.ema_update_many (avg <- beta avg + (1 - beta) w on each pair), all in one launch."""
        avgs = self._in_place(avgs, "ema_update_many average")
        ws = [self._f32(w, f"ema_update_many w {i}") for i, w in enumerate(ws)]
        if len(avgs) != len(ws):
            raise ValueError(f"ema_update_many: {len(avgs)} averages but {len(ws)} tensors")
        if not avgs:
            return
        table, count, total = self._tensor_table("ema_update_many", [avgs, ws])
        self._run("ema_update_many", total, table, count, float(beta))

    # ------------------------------------------------------------------ backend plumbing
    def asarray(self, a, dtype=None):
        """Host array -> this backend's (device) array."""
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a):
        """This backend's array -> NumPy array."""
        return a.get() if hasattr(a, "get") else np.asarray(a)      # cupy arrays have .get()
