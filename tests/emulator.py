"""Run the CUDA kernels of kernels/*.cu on the CPU, so that the CuPy backend is tested without a GPU.

Each .cu file is compiled as C++ by g++ after a small prelude (threadIdx, blockIdx, blockDim,
gridDim, the __global__/__device__ qualifiers, atomicAdd; the math functions come from math.h),
followed by one generated wrapper per kernel that runs a whole launch: a loop over blocks and
threads, one call of the kernel per thread. Threads run one after another, so there is no
concurrency to emulate: kernels may not use __syncthreads or __shared__ (left undefined on
purpose: using them fails to compile here), and their reductions are atomics or xp reductions.
Only the `extern "C" __global__` entry points get wrappers; the `__device__` functions and templates
they call (the bodies shared by a kernel and its 32-bit twin `name_i32`) compile as plain C++.

`EmulatedLauncher` is a drop-in for cupy_ops.RawModuleLauncher: `launch(name, grid, block, args)`.
On every launch it checks the arguments against the kernel's C signature the way CuPy converts
them (Python int -> long long, Python float -> double, NumPy scalar -> its dtype, array -> pointer
to its dtype, which must be C-contiguous, and writable unless the pointer is const) and raises
LaunchError, naming the kernel and the argument, on a mismatch. Arrays are passed through copies
with guard zones on both sides (NaN for floating dtypes), so an out-of-bounds write raises and an
out-of-bounds read shows as NaN.

`emulated_backend()` is cupy_ops.CudaOps on NumPy arrays with this launcher: all of the CuPy
backend's Python (grid sizes, argument order, dtypes, allocations) runs, against the same sources
that NVRTC compiles. Its `empty` fills new arrays with NaN, so an element no thread writes shows.

Compiled libraries are cached in the temp directory, keyed by a hash of the generated C++ and the
compiler command.
"""
import collections
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np

from kernels import cupy_ops

CXX = os.environ.get("CXX", "g++")
CXX_FLAGS = ["-O2", "-shared", "-fPIC", "-std=c++17", "-x", "c++", "-Wall", "-fno-fast-math"]
CACHE_DIR = os.path.join(tempfile.gettempdir(), "framepred-cuda-emulator")

PRELUDE = r"""// ---- emulator prelude: CUDA's built-ins for a sequential CPU run --------------------------
#include <math.h>
struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };
static uint3 threadIdx, blockIdx;     // set by the launch wrappers before each kernel call
static dim3 blockDim, gridDim;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// One thread at a time: an atomic is a plain read-modify-write.
static inline float atomicAdd(float* a, float v) { float old = *a; *a += v; return old; }
static inline double atomicAdd(double* a, double v) { double old = *a; *a += v; return old; }
static inline int atomicAdd(int* a, int v) { int old = *a; *a += v; return old; }
// __syncthreads and __shared__ are deliberately not defined.
"""

# C base type -> NumPy dtype, for scalars and for the targets of pointers
C_TYPES = {
    "float": np.dtype(np.float32), "double": np.dtype(np.float64),
    "int": np.dtype(np.int32), "unsigned int": np.dtype(np.uint32),
    "long long": np.dtype(np.int64), "long long int": np.dtype(np.int64),
    "unsigned long long": np.dtype(np.uint64), "unsigned char": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}
CTYPES_OF = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
             np.dtype(np.int32): ctypes.c_int32, np.dtype(np.uint32): ctypes.c_uint32,
             np.dtype(np.int64): ctypes.c_int64, np.dtype(np.uint64): ctypes.c_uint64,
             np.dtype(np.uint8): ctypes.c_uint8, np.dtype(np.bool_): ctypes.c_bool}

_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')


class LaunchError(TypeError):
    """A launch that CuPy would make differently from what the kernel expects (or that is invalid)."""


class EmulatorCompileError(RuntimeError):
    """g++ could not compile a kernel source (the message holds the compiler's log)."""


def find_compiler():
    """Path of the C++ compiler, or None."""
    return shutil.which(CXX)


# --------------------------------------------------------------------------- signatures
class Param:
    """One kernel parameter: name, C base type, its dtype, pointer or not, const or not."""

    def __init__(self, kernel, text):
        m = re.fullmatch(r"\s*(.*?)\s*\b(\w+)\s*", text)
        if not m or not m.group(1):
            raise ValueError(f"kernel {kernel}: cannot parse the parameter {text.strip()!r}")
        type_text, self.name = m.group(1), m.group(2)
        tokens = type_text.replace("*", " * ").split()
        self.const = "const" in tokens
        stars = tokens.count("*")
        if stars > 1:
            raise ValueError(f"kernel {kernel}: parameter {self.name}: pointers to pointers are not supported")
        self.pointer = stars == 1
        self.base = " ".join(t for t in tokens if t not in ("const", "*", "__restrict__"))
        if self.base not in C_TYPES:
            raise ValueError(f"kernel {kernel}: parameter {self.name}: unsupported type {self.base!r}")
        self.dtype = C_TYPES[self.base]

    @property
    def c_type(self):
        return ("const " if self.const else "") + self.base + ("*" if self.pointer else "")

    def __repr__(self):
        return f"{self.c_type} {self.name}"


def strip_comments(source):
    source = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    return re.sub(r"//[^\n]*", "", source)


def parse_kernels(source):
    """{kernel name: [Param, ...]} of every `extern "C" __global__ void` kernel in a CUDA source."""
    kernels = {}
    for m in _KERNEL_RE.finditer(strip_comments(source)):
        name, params = m.group(1), m.group(2).strip()
        if name in kernels:
            raise ValueError(f"kernel {name} is defined twice")
        kernels[name] = [Param(name, p) for p in params.split(",")] if params and params != "void" else []
    return kernels


def launch_wrapper(name, params):
    """C++ of `emul_launch_<name>(grid[3], block[3], args)`: the whole launch, args as in cuLaunchKernel."""
    call_args = ", ".join(f"*({p.c_type}*)args[{i}]" for i, p in enumerate(params))
    return f"""
extern "C" void emul_launch_{name}(const unsigned int* grid, const unsigned int* block, void** args)
{{
    gridDim = dim3{{grid[0], grid[1], grid[2]}};
    blockDim = dim3{{block[0], block[1], block[2]}};
    for (unsigned int bz = 0; bz < grid[2]; ++bz)
    for (unsigned int by = 0; by < grid[1]; ++by)
    for (unsigned int bx = 0; bx < grid[0]; ++bx) {{
        blockIdx = uint3{{bx, by, bz}};
        for (unsigned int tz = 0; tz < block[2]; ++tz)
        for (unsigned int ty = 0; ty < block[1]; ++ty)
        for (unsigned int tx = 0; tx < block[0]; ++tx) {{
            threadIdx = uint3{{tx, ty, tz}};
            {name}({call_args});
        }}
    }}
}}
"""


# --------------------------------------------------------------------------- compilation
def compile_source(filename, source):
    """Compile one CUDA source with the prelude and its launch wrappers -> (ctypes.CDLL, kernels)."""
    compiler = find_compiler()
    if compiler is None:
        raise EmulatorCompileError(f"no C++ compiler: {CXX!r} is not on PATH")
    kernels = parse_kernels(source)
    text = (PRELUDE + f'#line 1 "{filename}"\n' + source + '\n#line 1 "<emulator launch wrappers>"\n'
            + "".join(launch_wrapper(name, params) for name, params in kernels.items()))
    key = hashlib.sha256("\0".join([compiler, *CXX_FLAGS, text]).encode()).hexdigest()[:20]
    os.makedirs(CACHE_DIR, exist_ok=True)
    so_path = os.path.join(CACHE_DIR, f"{os.path.splitext(filename)[0]}-{key}.so")
    if not os.path.exists(so_path):
        with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
            cpp, so_tmp = os.path.join(tmp, "kernels.cpp"), os.path.join(tmp, "kernels.so")
            with open(cpp, "w", encoding="utf-8") as f:
                f.write(text)
            run = subprocess.run([compiler, *CXX_FLAGS, "-o", so_tmp, cpp], capture_output=True, text=True)
            if run.returncode != 0:
                raise EmulatorCompileError(f"{compiler} failed on {filename}:\n{run.stdout}{run.stderr}")
            os.replace(so_tmp, so_path)          # atomic: a concurrent run sees all or nothing
    lib = ctypes.CDLL(so_path)
    for name in kernels:
        fn = getattr(lib, f"emul_launch_{name}")
        fn.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                       ctypes.POINTER(ctypes.c_void_p)]
        fn.restype = None
    return lib, kernels


# --------------------------------------------------------------------------- launches
def cupy_view(value):
    """How CuPy passes a launch argument: ('array', dtype) or ('scalar', dtype); LaunchError otherwise."""
    if isinstance(value, np.ndarray):         # stands for a cupy.ndarray
        return "array", value.dtype
    if isinstance(value, np.generic):
        return "scalar", value.dtype
    if isinstance(value, bool):
        raise LaunchError("a Python bool (pass numpy.bool_ or an int explicitly)")
    if isinstance(value, int):
        if not -2**63 <= value < 2**63:
            raise LaunchError(f"the Python int {value} does not fit CuPy's 64-bit integer")
        return "scalar", np.dtype(np.int64)
    if isinstance(value, float):
        return "scalar", np.dtype(np.float64)
    raise LaunchError(f"a {type(value).__name__}, which CuPy cannot pass to a kernel")


def _c_name(dtype):
    for name, dt in C_TYPES.items():
        if dt == dtype:
            return name
    return str(dtype)


def _geometry(what, dims, limits):
    if isinstance(dims, int) or not isinstance(dims, (tuple, list)) or not 1 <= len(dims) <= 3:
        raise LaunchError(f"{what} must be a tuple of 1 to 3 ints, got {dims!r}")
    out = []
    for d, limit in zip(dims, limits):
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or not 1 <= d <= limit:
            raise LaunchError(f"{what} {tuple(dims)}: every size must be an int in [1, {limit}]")
        out.append(int(d))
    return out + [1] * (3 - len(out))


class EmulatedLauncher:
    """launch(name, grid, block, args) on the CPU: the kernels of `sources` ({file name: CUDA source},
    by default cupy_ops.kernel_sources()) compiled with g++. `guard` elements of guard zone on each
    side of every array argument. `launches` counts the launches of each kernel."""

    def __init__(self, sources=None, guard=64):
        sources = cupy_ops.kernel_sources() if sources is None else sources
        self.guard = guard
        self.kernels = {}                     # name -> (params, C launch function, file name)
        self._libs = []
        for filename, source in sources.items():
            lib, kernels = compile_source(filename, source)
            self._libs.append(lib)
            for name, params in kernels.items():
                if name in self.kernels:
                    raise ValueError(f"kernel {name} is defined in both {self.kernels[name][2]} and {filename}")
                self.kernels[name] = (params, getattr(lib, f"emul_launch_{name}"), filename)
        self.launches = collections.Counter()

    def __call__(self, name, grid, block, args):
        if name not in self.kernels:
            raise LaunchError(f"no kernel named {name!r} (known: {', '.join(sorted(self.kernels))})")
        params, fn, _ = self.kernels[name]
        g = _geometry(f"kernel {name}: grid", grid, (2**31 - 1, 65535, 65535))
        b = _geometry(f"kernel {name}: block", block, (1024, 1024, 64))
        if b[0] * b[1] * b[2] > 1024:
            raise LaunchError(f"kernel {name}: block {tuple(block)} has more than 1024 threads")
        if not isinstance(args, (tuple, list)):
            raise LaunchError(f"kernel {name}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(params):
            raise LaunchError(f"kernel {name}: takes {len(params)} arguments ({', '.join(map(repr, params))}), "
                              f"got {len(args)}")
        for i, (p, a) in enumerate(zip(params, args)):
            self._check(name, i, p, a)

        # arrays -> guarded copies (one per distinct array); scalars -> ctypes values
        buffers = []                           # [original, guarded copy, written]
        holders, argv = [], (ctypes.c_void_p * max(1, len(args)))()
        for i, (p, a) in enumerate(zip(params, args)):
            if p.pointer:
                buf = self._buffer(name, i, p, a, buffers)
                buf[2] |= not p.const
                h = ctypes.c_void_p(buf[1].ctypes.data + self.guard * a.itemsize)
            else:
                h = CTYPES_OF[p.dtype](a.item() if isinstance(a, np.generic) else a)
            holders.append(h)
            argv[i] = ctypes.addressof(h)
        fn((ctypes.c_uint * 3)(*g), (ctypes.c_uint * 3)(*b), argv)
        self.launches[name] += 1

        for original, guarded, written in buffers:
            size, gz = original.size, self.guard
            if (guarded[:gz].tobytes() != _guard_fill(original.dtype, gz).tobytes()
                    or guarded[gz + size:].tobytes() != _guard_fill(original.dtype, gz).tobytes()):
                where = [i for i, a in enumerate(args) if a is original]
                raise LaunchError(f"kernel {name}: wrote outside the array of argument {where[0]} "
                                  f"'{params[where[0]].name}' ({original.size} elements)")
            if written:
                original.reshape(-1)[...] = guarded[gz:gz + size]

    @staticmethod
    def _check(name, i, p, a):
        where = f"kernel {name}, argument {i} '{p.name}' ({p.c_type})"
        try:
            kind, dtype = cupy_view(a)
        except LaunchError as e:
            raise LaunchError(f"{where}: got {e}") from None
        if p.pointer:
            if kind != "array":
                raise LaunchError(f"{where}: got a {_c_name(dtype)} scalar ({type(a).__name__}), expected an array")
            if dtype != p.dtype:
                raise LaunchError(f"{where}: got an array of {dtype}, expected {p.dtype}")
            if not a.flags.c_contiguous:
                raise LaunchError(f"{where}: the array is not C-contiguous (the kernel would read its "
                                  f"memory as if it were)")
            if not p.const and not a.flags.writeable:
                raise LaunchError(f"{where}: the array is read-only")
        else:
            if kind != "scalar":
                raise LaunchError(f"{where}: got an array, expected a scalar")
            if dtype != p.dtype:
                how = ("a Python int, which CuPy passes as long long" if type(a) is int else
                       "a Python float, which CuPy passes as double" if type(a) is float else
                       f"a {dtype} scalar")
                raise LaunchError(f"{where}: got {how}; expected {_c_name(p.dtype)} (pass "
                                  f"numpy.{p.dtype}(...) or the matching Python type)")

    def _buffer(self, name, i, p, a, buffers):
        for buf in buffers:
            if buf[0] is a:
                return buf
            if np.may_share_memory(buf[0], a):
                raise LaunchError(f"kernel {name}, argument {i} '{p.name}': overlaps another array argument")
        guarded = np.concatenate([_guard_fill(a.dtype, self.guard), a.reshape(-1),
                                  _guard_fill(a.dtype, self.guard)])
        buf = [a, guarded, False]
        buffers.append(buf)
        return buf


def _guard_fill(dtype, n):
    if dtype.kind == "f":
        return np.full(n, np.nan, dtype)
    return np.frombuffer(b"\xa5" * (n * dtype.itemsize), dtype=dtype).copy()


# --------------------------------------------------------------------------- the emulated backend
class PoisonedNumpy:
    """numpy, but `empty` fills new arrays with NaN (integers with their minimum): an element that no
    kernel thread writes cannot pass for a correct 0 by chance."""

    def __init__(self):
        self.__name__ = "numpy"

    def __getattr__(self, attr):
        return getattr(np, attr)

    @staticmethod
    def empty(shape, dtype=float, order="C"):
        a = np.empty(shape, dtype, order)
        a.fill(np.nan if a.dtype.kind == "f" else np.iinfo(a.dtype).min if a.dtype.kind in "iu" else 0)
        return a


_default_launcher = None


def default_launcher():
    """The EmulatedLauncher of kernels/*.cu, compiled once per process."""
    global _default_launcher
    if _default_launcher is None:
        _default_launcher = EmulatedLauncher()
    return _default_launcher


def emulated_backend(block=cupy_ops.BLOCK, max_blocks=cupy_ops.MAX_BLOCKS, poison=True, index32=True):
    """cupy_ops.CudaOps on NumPy arrays with the emulated kernels: the GPU code path without a GPU.

    block, max_blocks: launch geometry (small values make every grid-stride loop iterate);
    poison: new arrays start as NaN (see PoisonedNumpy); index32: as CudaOps' (False: the long long
    kernels only)."""
    return cupy_ops.CudaOps(xp=PoisonedNumpy() if poison else np, launch=default_launcher(),
                            block=block, max_blocks=max_blocks, index32=index32)
