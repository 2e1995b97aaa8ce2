"""Every kernels/*.cu compiles with NVRTC, the compiler CuPy uses at run time, for compute_80 and
compute_90, with the options of the backend (cupy_ops.OPTIONS, plus the '-ftz=true' that CuPy
appends to them). No GPU needed: NVRTC only produces PTX. NVRTC comes from PyPI's
nvidia-cuda-nvrtc wheel (requirements-test.txt), called through ctypes.
"""
import ctypes
import glob
import os
import re

import pytest

from kernels import cupy_ops

ARCHS = ["compute_80", "compute_90"]
ADDED_BY_CUPY = ("-ftz=true",)          # cupy.cuda.compiler appends it to the caller's options


def find_libnvrtc():
    """Path of libnvrtc from the installed nvidia-cuda-nvrtc wheel (nvidia/cu13/lib/ for CUDA 13,
    nvidia/cuda_nvrtc/lib/ for CUDA 12), or None."""
    try:
        import nvidia
    except ImportError:
        return None
    found = []
    for base in getattr(nvidia, "__path__", []):
        for pattern in ("*/lib/libnvrtc.so*", "*/bin/nvrtc64_*.dll"):
            found += [p for p in glob.glob(os.path.join(base, pattern)) if "builtins" not in os.path.basename(p)]
    return sorted(found)[-1] if found else None


class NVRTC:
    """The few NVRTC calls needed to compile one source to PTX."""

    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def _ok(self, result, what):
        if result != 0:
            raise RuntimeError(f"{what}: {self.lib.nvrtcGetErrorString(result).decode()}")

    def version(self):
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._ok(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        return major.value, minor.value

    def compile(self, source, name, options):
        """-> (success, compiler log, PTX text or None)."""
        prog = ctypes.c_void_p()
        self._ok(self.lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
                 "nvrtcCreateProgram")
        try:
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            result = self.lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            self._ok(self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
            log = ctypes.create_string_buffer(size.value)
            self._ok(self.lib.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
            if result != 0:
                return False, log.value.decode(errors="replace"), None
            self._ok(self.lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
            ptx = ctypes.create_string_buffer(size.value)
            self._ok(self.lib.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
            return True, log.value.decode(errors="replace"), ptx.value.decode()
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.fixture(scope="module")
def nvrtc():
    path = find_libnvrtc()
    if path is None:
        pytest.skip("NVRTC not found: the nvidia-cuda-nvrtc wheel is not installed "
                    "(pip install -r requirements-test.txt)")
    return NVRTC(path)


def options_for(arch):
    return cupy_ops.OPTIONS + ADDED_BY_CUPY + (f"--gpu-architecture={arch}",)


SOURCES = cupy_ops.kernel_sources()


def test_cuda_kernel_sources_exist_and_names_are_unique():
    assert SOURCES, "no kernels/*.cu found"
    names = [n for src in SOURCES.values() for n in cupy_ops.kernel_names(src)]
    assert names and len(names) == len(set(names)), f"kernel names must be unique across files: {names}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("filename", sorted(SOURCES))
def test_cuda_kernels_compile_with_nvrtc(nvrtc, filename, arch):
    source = SOURCES[filename]
    ok, log, ptx = nvrtc.compile(source, filename, options_for(arch))
    if not ok:
        pytest.fail(f"NVRTC {nvrtc.version()} failed on kernels/{filename} for {arch} with options "
                    f"{' '.join(options_for(arch))}:\n{log}", pytrace=False)
    for name in cupy_ops.kernel_names(source):      # extern "C": the PTX entry keeps the plain name
        assert f".entry {name}(" in ptx, f"kernel {name} missing from the PTX of {filename}"


def test_cuda_compile_error_is_reported_with_the_log(nvrtc):
    ok, log, ptx = nvrtc.compile('extern "C" __global__ void broken(float* x) { x[0] = undefined_name; }',
                                 "broken.cu", options_for(ARCHS[0]))
    assert not ok and ptx is None
    assert "undefined_name" in log


def ptx_entries(ptx):
    """{entry name: its PTX text, up to the next entry}."""
    return {chunk.split("(", 1)[0].strip(): chunk for chunk in re.split(r"\.entry\s+", ptx)[1:]}


WIDE_DIVISION = re.compile(r"\b(div|rem)\.[su]64\b")


@pytest.mark.parametrize("filename", sorted(SOURCES))
def test_cuda_i32_twins_have_no_64_bit_division(nvrtc, filename):
    """The point of the `name_i32` twins: their index arithmetic compiles to 32-bit division and
    modulo only, where the long long kernel has 64-bit ones (which this check finds)."""
    ok, log, ptx = nvrtc.compile(SOURCES[filename], filename, options_for(ARCHS[0]))
    assert ok, log
    entries = ptx_entries(ptx)
    twins = [name for name in entries if name.endswith("_i32")]
    for name in twins:
        assert not WIDE_DIVISION.search(entries[name]), f"{name}: 64-bit division or modulo in its PTX"
        assert WIDE_DIVISION.search(entries[name[:-len("_i32")]]), f"{name[:-len('_i32')]}: none to compare"
