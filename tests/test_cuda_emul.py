"""The CUDA backend (kernels/cupy_ops.py and kernels/*.cu) against the NumPy reference, without a GPU.

Every op runs through `emulator.emulated_backend`: the backend's own Python launch code on NumPy
arrays, the kernels compiled as C++ by g++ (see tests/emulator.py). Shapes are drawn by hypothesis,
sizes are mostly not multiples of the block, and the launch geometry is drawn too, down to one
block of 32 threads, so the grid-stride loops iterate, and so is the index width: the kernels that
have a 32-bit twin (`name_i32`, see cupy_ops._index_args) run either as their twin, as they do at
these sizes by default, or as the long long kernel (index32=False). Data are float32: either normal draws or
values on a coarse grid (multiples of 1/2), which make ties (max pooling), exact zeros (relu) and
kinks (|.| at 0 in the losses) happen, so the conventions at those points are compared as well.

Tolerances, |got - ref| <= atol + rtol |ref| elementwise (stated with each test):
- EXACT (0, 0): pure data movement, and col2im, whose sums run in numpy_ops' order.
- ELEMENTWISE (1e-6, 1e-5): one float32 formula per element (expf, tanhf, a few flops).
- SUMS (1e-4, 1e-4): GEMMs and reductions of up to a few hundred float32 terms.
- losses: the value within rtol 1e-5 (a float32 mean), the gradient with atol 1e-7 (it is /size).

The same tests run against real CuPy (parameter id `gpu`) when it sees a GPU, else they skip.
"""
import collections

import numpy as np
import pytest
from hypothesis import given, strategies as st

import emulator
from kernels import BackendError, cupy_ops, fast_cpu, load_backend, numpy_ops as ref

EXACT = dict(atol=0.0, rtol=0.0)
ELEMENTWISE = dict(atol=1e-6, rtol=1e-5)
SUMS = dict(atol=1e-4, rtol=1e-4)
LOSS_VALUE = dict(atol=1e-6, rtol=1e-5)
LOSS_GRAD = dict(atol=1e-7, rtol=1e-5)

# (threads per block, max blocks): the default, then grids far smaller than the work
GEOMETRIES = [(cupy_ops.BLOCK, cupy_ops.MAX_BLOCKS), (32, 1), (32, 3), (64, 2), (128, 5)]

seeds = st.integers(0, 2**32 - 1)
batch = st.integers(1, 3)
channels = st.integers(1, 5)
side = st.integers(1, 11)


@pytest.fixture(scope="module", params=["emul", "gpu"])
def make_ops(request):
    """(block, max_blocks, index32=True) -> a CudaOps: emulated on NumPy, or real CuPy when a GPU is there."""
    if request.param == "emul":
        if emulator.find_compiler() is None:
            pytest.skip(f"emulation needs a C++ compiler: {emulator.CXX!r} is not on PATH")
        emulator.default_launcher()                       # compile once, outside the examples
        return lambda block, max_blocks, index32=True: emulator.emulated_backend(block, max_blocks, index32=index32)
    try:
        cupy_ops.check_gpu()
    except RuntimeError as e:
        pytest.skip(f"no real GPU backend here: {e}")
    return lambda block, max_blocks, index32=True: cupy_ops.CudaOps(block=block, max_blocks=max_blocks,
                                                                    index32=index32)


class Case:
    """What one hypothesis example draws: a backend with a launch geometry and an index width, an
    rng, a data kind."""

    def __init__(self, make_ops, data):
        geometry = data.draw(st.sampled_from(GEOMETRIES), label="block, max_blocks")
        self.ops = make_ops(*geometry, index32=data.draw(st.booleans(), label="index32"))
        self.rng = np.random.default_rng(data.draw(seeds, label="seed"))
        self.grid = data.draw(st.booleans(), label="coarse-grid values")

    def values(self, shape, scale=1.0):
        """float32 host array: normal draws, or multiples of 1/2 in [-2, 2] (ties, zeros, kinks)."""
        if self.grid:
            return (self.rng.integers(-4, 5, shape) / 2 * scale).astype(np.float32)
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def dev(self, a):
        return self.ops.asarray(a)

    def check(self, got, want, what, atol, rtol):
        assert_close(self.ops.to_host(got), want, what, atol, rtol)


def assert_close(got, want, what, atol, rtol):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert got.dtype == np.float32, f"{what}: dtype {got.dtype}, expected float32"
    err = np.abs(got.astype(np.float64) - want)
    bad = ~(err <= atol + rtol * np.abs(want))          # NaN counts as bad
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, np.nan_to_num(err, nan=np.inf), -1)), bad.shape)
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} elements beyond |d| <= {atol} + {rtol}|ref|; "
                             f"e.g. at {tuple(int(j) for j in i)}: got {got[i]!r}, ref {want[i]!r}")


# --------------------------------------------------------------------------- conv2d
@given(data=st.data())
def test_cuda_im2col_col2im(make_ops, data):
    c = Case(make_ops, data)
    k = data.draw(st.sampled_from([1, 3, 5]), label="k")
    pad = data.draw(st.sampled_from([0, k // 2]), label="pad")
    lo = max(1, k - 2 * pad)
    shape = (data.draw(batch), data.draw(channels), data.draw(st.integers(lo, 11)), data.draw(st.integers(lo, 11)))
    x = c.values(shape)
    cols_ref = ref.im2col(x, k, pad).T          # the GPU's columns are channel-major: (C k k, N Ho Wo)
    c.check(c.ops.im2col(c.dev(x), k, pad), cols_ref, "im2col", **EXACT)
    cols = c.values(cols_ref.shape)
    c.check(c.ops.col2im(c.dev(cols), shape, k, pad), ref.col2im(np.ascontiguousarray(cols.T), shape, k, pad),
            "col2im", **EXACT)
    # c_from: cols of c_from more channels before those of dx, which is the adjoint for the rest alone
    c_from = data.draw(st.integers(1, 3), label="c_from")
    wide = c.values(((c_from + shape[1]) * k * k, cols.shape[1]))
    c.check(c.ops.col2im(c.dev(wide), shape, k, pad, c_from=c_from),
            ref.col2im(np.ascontiguousarray(wide[c_from * k * k:].T), shape, k, pad), "col2im c_from", **EXACT)


@pytest.mark.parametrize("mode", ["same", "valid"])
@given(data=st.data())
def test_cuda_conv2d(make_ops, mode, data):
    c = Case(make_ops, data)
    k = data.draw(st.sampled_from([1, 3, 5, 7]), label="k")
    lo = k if mode == "valid" else 1
    n, c_in, c_out = data.draw(batch), data.draw(channels), data.draw(channels)
    h, w = data.draw(st.integers(lo, 11)), data.draw(st.integers(lo, 11))
    x, wt, b = c.values((n, c_in, h, w)), c.values((c_out, c_in, k, k), 1 / k), c.values(c_out)
    relu = data.draw(st.booleans(), label="relu")
    if relu and c.grid:
        # On the coarse grid the pre-activations are multiples of 1/(4k) up to rounding, often 0, where
        # the two backends' sums (in different orders) land on either side of the ReLU's kink: a bias
        # shifted by 1/(8k) keeps every pre-activation 1/(8k) away from it.
        b = b + np.float32(1 / (8 * k))
    out_ref, cache_ref = ref.conv2d_forward(x, wt, b, mode, relu=relu)
    out, cache = c.ops.conv2d_forward(c.dev(x), c.dev(wt), c.dev(b), mode, relu=relu)
    c.check(out, out_ref, "conv2d out", **SUMS)
    dout = c.values(out_ref.shape)
    need_dx = data.draw(st.booleans(), label="need_dx")
    need_dw = data.draw(st.booleans(), label="need_dw") or not need_dx
    dx_from = data.draw(st.integers(0, c_in - 1), label="dx_from") if need_dx else 0
    grads = c.ops.conv2d_backward(c.dev(dout), cache, need_dx=need_dx, need_dw=need_dw, dx_from=dx_from)
    grads_ref = ref.conv2d_backward(dout, cache_ref, need_dx=need_dx, need_dw=need_dw, dx_from=dx_from)
    for name, g, g_ref in zip(["dx", "dw", "db"], grads, grads_ref):
        if g_ref is None:
            assert g is None, f"conv2d {name} must be None (need_dx={need_dx}, need_dw={need_dw})"
        else:
            c.check(g, g_ref, f"conv2d {name}", **SUMS)


# (N, C, HW): all three differ, so a swapped index reads the wrong element or leaves one unwritten
# (NaN in the emulator); with 32 threads (the (32, 1) grid) every loop iterates, the db threads'
# too where C > 32; HW = 1 is the fc layers' case.
LAYOUT_SIZES = [(3, 5, 37), (2, 37, 3), (5, 3, 1), (1, 6, 35)]


@pytest.mark.parametrize("index32", [True, False])
@pytest.mark.parametrize("geometry", [(32, 1), (64, 2), (cupy_ops.BLOCK, cupy_ops.MAX_BLOCKS)])
@pytest.mark.parametrize("n, ch, hw", LAYOUT_SIZES)
def test_cuda_layout_kernels_are_channel_major(make_ops, n, ch, hw, geometry, index32):
    """The GEMM layout (C, N*HW) <-> NCHW against NumPy's transpose: rows_to_nchw_bias (bias, ReLU),
    nchw_to_rows and nchw_to_rows_bias_grad (ReLU's gradient, db)."""
    ops = make_ops(*geometry, index32=index32)
    rng = np.random.default_rng(n * 1000 + ch * 10 + hw)
    rows = rng.standard_normal((ch, n * hw)).astype(np.float32)
    b = rng.standard_normal(ch).astype(np.float32)
    want = np.ascontiguousarray(rows.reshape(ch, n, hw).transpose(1, 0, 2) + b[:, None])
    for relu in (False, True):
        got = ops._rows_to_nchw_bias(ops.asarray(rows), ops.asarray(b), n, ch, hw, relu)
        assert_close(ops.to_host(got), np.maximum(want, 0) if relu else want, f"rows_to_nchw_bias relu={relu}",
                     **EXACT)
    dout = rng.standard_normal((n, ch, hw)).astype(np.float32)
    out = np.maximum(want, 0)                                     # a forward's output after its ReLU
    for relu_out in (None, out):
        d = dout if relu_out is None else dout * (relu_out > 0)
        what = f"nchw_to_rows relu={relu_out is not None}"
        for need_db in (False, True):                             # nchw_to_rows, nchw_to_rows_bias_grad
            got, db = ops._nchw_to_rows(ops.asarray(dout), None if relu_out is None else ops.asarray(relu_out),
                                        n, ch, hw, need_db=need_db)
            assert_close(ops.to_host(got), d.transpose(1, 0, 2).reshape(ch, n * hw), f"{what} need_db={need_db}",
                         **EXACT)
            if need_db:
                assert_close(ops.to_host(db), d.sum(axis=(0, 2), dtype=np.float64), f"{what} db", **ELEMENTWISE)
            else:
                assert db is None, what


@pytest.mark.parametrize("index32", [True, False])
@pytest.mark.parametrize("k, pad", [(3, 1), (5, 0)])
def test_cuda_im2col_is_channel_major_on_odd_sizes(make_ops, k, pad, index32):
    """im2col = numpy_ops.im2col(...).T and col2im its adjoint, with N, C, H, W all different and
    the grid (32 threads) far smaller than the work; col2im with c_from reading rows past 0."""
    ops = make_ops(32, 1, index32=index32)
    rng = np.random.default_rng(k)
    shape = (2, 3, 9, 7)
    x = rng.standard_normal(shape).astype(np.float32)
    cols_ref = ref.im2col(x, k, pad).T
    assert_close(ops.to_host(ops.im2col(ops.asarray(x), k, pad)), cols_ref, "im2col", **EXACT)
    wide = rng.standard_normal(((2 + shape[1]) * k * k, cols_ref.shape[1])).astype(np.float32)
    want = ref.col2im(np.ascontiguousarray(wide[2 * k * k:].T), shape, k, pad)
    assert_close(ops.to_host(ops.col2im(ops.asarray(wide), shape, k, pad, c_from=2)), want, "col2im", **EXACT)


# --------------------------------------------------------------------------- fully connected
@given(data=st.data(), n=batch, d_in=st.integers(1, 300), d_out=st.integers(1, 40))
def test_cuda_fc(make_ops, data, n, d_in, d_out):
    c = Case(make_ops, data)
    x, w, b = c.values((n, d_in)), c.values((d_out, d_in), d_in ** -0.5), c.values(d_out)
    relu, need_dw = data.draw(st.booleans(), label="relu"), data.draw(st.booleans(), label="need_dw")
    out_ref, cache_ref = ref.fc_forward(x, w, b, relu=relu)
    out, cache = c.ops.fc_forward(c.dev(x), c.dev(w), c.dev(b), relu=relu)
    c.check(out, out_ref, "fc out", **SUMS)
    dout = c.values(out_ref.shape)
    for name, g, g_ref in zip(["dx", "dw", "db"], c.ops.fc_backward(c.dev(dout), cache, need_dw=need_dw),
                              ref.fc_backward(dout, cache_ref, need_dw=need_dw)):
        if g_ref is None:
            assert g is None, f"fc {name} must be None without need_dw"
        else:
            c.check(g, g_ref, f"fc {name}", **SUMS)


# --------------------------------------------------------------------------- activations
@pytest.mark.parametrize("op", ["relu", "tanh", "sigmoid"])
@given(data=st.data(), shape=st.tuples(batch, channels, side, side),
       scale=st.sampled_from([1.0, 30.0]))
def test_cuda_activation(make_ops, op, data, shape, scale):
    """scale 30 saturates tanh and sigmoid (and sends exp(-|x|) towards underflow)."""
    c = Case(make_ops, data)
    x, dout = c.values(shape, scale), c.values(shape)
    out_ref, cache_ref = getattr(ref, op + "_forward")(x)
    out, cache = getattr(c.ops, op + "_forward")(c.dev(x))
    tol = EXACT if op == "relu" else ELEMENTWISE
    c.check(out, out_ref, f"{op} out", **tol)
    c.check(getattr(c.ops, op + "_backward")(c.dev(dout), cache),
            getattr(ref, op + "_backward")(dout, cache_ref), f"{op} dx", **tol)


# --------------------------------------------------------------------------- resampling
@given(data=st.data(), n=batch, ch=channels, f=st.sampled_from([1, 2, 3, 4, 8]),
       hb=st.integers(1, 4), wb=st.integers(1, 4))
def test_cuda_avgpool(make_ops, data, n, ch, f, hb, wb):
    c = Case(make_ops, data)
    x = c.values((n, ch, hb * f, wb * f))
    out_ref, cache_ref = ref.avgpool_forward(x, f)
    out, cache = c.ops.avgpool_forward(c.dev(x), f)
    c.check(out, out_ref, "avgpool out", **ELEMENTWISE)     # a mean of f^2 <= 64 terms
    dout = c.values(out_ref.shape)
    c.check(c.ops.avgpool_backward(c.dev(dout), cache), ref.avgpool_backward(dout, cache_ref),
            "avgpool dx", **EXACT)


@given(data=st.data(), shape=st.tuples(batch, channels, side, side), f=st.sampled_from([1, 2, 3, 4]))
def test_cuda_upsample(make_ops, data, shape, f):
    c = Case(make_ops, data)
    x = c.values(shape)
    out_ref, cache_ref = ref.upsample_forward(x, f)
    out, cache = c.ops.upsample_forward(c.dev(x), f)
    c.check(out, out_ref, "upsample out", **EXACT)
    dout = c.values(out_ref.shape)
    c.check(c.ops.upsample_backward(c.dev(dout), cache), ref.upsample_backward(dout, cache_ref),
            "upsample dx", **ELEMENTWISE)                     # a sum of f^2 <= 16 terms


@given(data=st.data(), n=batch, ch=channels, h=st.integers(2, 11), w=st.integers(2, 11))
def test_cuda_maxpool2(make_ops, data, n, ch, h, w):
    """Odd sides (a dropped last row/column) and, on grid data, ties (the first maximum wins)."""
    c = Case(make_ops, data)
    x = c.values((n, ch, h, w))
    out_ref, cache_ref = ref.maxpool2_forward(x)
    out, cache = c.ops.maxpool2_forward(c.dev(x))
    c.check(out, out_ref, "maxpool2 out", **EXACT)
    dout = c.values(out_ref.shape)
    c.check(c.ops.maxpool2_backward(c.dev(dout), cache), ref.maxpool2_backward(dout, cache_ref),
            "maxpool2 dx", **EXACT)


# --------------------------------------------------------------------------- plumbing
@given(data=st.data(), n=batch, cs=st.lists(channels, min_size=1, max_size=4), h=side, w=side)
def test_cuda_concat(make_ops, data, n, cs, h, w):
    c = Case(make_ops, data)
    xs = [c.values((n, ch, h, w)) for ch in cs]
    out_ref, cache_ref = ref.concat_forward(xs)
    out, cache = c.ops.concat_forward([c.dev(x) for x in xs])
    c.check(out, out_ref, "concat out", **EXACT)
    dout = c.values(out_ref.shape)
    dxs, dxs_ref = c.ops.concat_backward(c.dev(dout), cache), ref.concat_backward(dout, cache_ref)
    assert len(dxs) == len(dxs_ref)
    for i, (g, g_ref) in enumerate(zip(dxs, dxs_ref)):
        c.check(g, g_ref, f"concat dx{i}", **EXACT)


@given(data=st.data(), n=batch, ca=channels, cb=channels, h=side, w=side)
def test_cuda_concat_of_two_is_one_launch(make_ops, data, n, ca, cb, h, w):
    """Two inputs (every concatenation of the model): concat_channels2, exactly numpy's concatenate."""
    c = Case(make_ops, data)
    xs = [c.values((n, ca, h, w)), c.values((n, cb, h, w))]
    out, cache = c.ops.concat_forward([c.dev(x) for x in xs])
    c.check(out, ref.concat_forward(xs)[0], "concat of two", **EXACT)
    assert cache == [ca, cb]
    # the model's backward: the gradient of the parts after the data channels, here the second alone
    d_second = c.values((n, cb, h, w))
    (got,) = c.ops.concat_backward(c.dev(d_second), cache[1:])
    c.check(got, d_second, "concat_backward of the part after the data", **EXACT)


@given(data=st.data(), shape=st.tuples(batch, channels, side, side))
def test_cuda_flatten(make_ops, data, shape):
    c = Case(make_ops, data)
    x = c.values(shape)
    out, cache = c.ops.flatten_forward(c.dev(x))
    c.check(out, ref.flatten_forward(x)[0], "flatten out", **EXACT)
    dout = c.values(out.shape)
    c.check(c.ops.flatten_backward(c.dev(dout), cache), ref.flatten_backward(dout, shape), "flatten dx", **EXACT)


# --------------------------------------------------------------------------- losses
def check_loss(c, loss, grad, loss_ref, grad_ref, what):
    assert np.ndim(c.ops.to_host(loss)) == 0, f"{what}: the loss must be a scalar"
    assert_close(np.float32(float(loss)), np.float64(loss_ref), f"{what} value", **LOSS_VALUE)
    c.check(grad, grad_ref, f"{what} gradient", **LOSS_GRAD)


@pytest.mark.parametrize("p", [1, 2])
@given(data=st.data(), shape=st.tuples(batch, channels, side, side))
def test_cuda_lp_loss(make_ops, p, data, shape):
    """On grid data, pred == target in places: the gradient at the kink is 0."""
    c = Case(make_ops, data)
    pred, target = c.values(shape), c.values(shape)
    loss, grad = c.ops.lp_loss(c.dev(pred), c.dev(target), p)
    check_loss(c, loss, grad, *ref.lp_loss(pred, target, p), f"L{p}")


@pytest.mark.parametrize("alpha", [1, 2])
@given(data=st.data(), shape=st.tuples(batch, channels, side, side), shifted=st.booleans())
def test_cuda_gdl_loss(make_ops, alpha, data, shape, shifted):
    """Sides of 1 (no pairs on that axis), and, with `shifted`, target = pred + 0.5 in places:
    equal gradients, r = 0 exactly, GDL's kink."""
    c = Case(make_ops, data)
    pred, target = c.values(shape), c.values(shape)
    if shifted:
        target = np.where(c.rng.random(shape) < 0.7, pred + np.float32(0.5), target).astype(np.float32)
    loss, grad = c.ops.gdl_loss(c.dev(pred), c.dev(target), alpha)
    check_loss(c, loss, grad, *ref.gdl_loss(pred, target, alpha), f"GDL alpha={alpha}")


@pytest.mark.parametrize("target", ["0", "1", "array"])
@given(data=st.data(), n=st.integers(1, 70), scale=st.sampled_from([1.0, 3.0, 100.0]))
def test_cuda_bce_logits_loss(make_ops, target, data, n, scale):
    """scale 100: logits far out, where only the stable formulas stay finite."""
    c = Case(make_ops, data)
    z = c.values((n, 1), scale)
    if target == "array":
        t_host = (c.rng.random((n, 1)) < 0.5).astype(np.float32)
        t = c.dev(t_host)
    else:
        t_host = t = float(target)
    loss, grad = c.ops.bce_logits_loss(c.dev(z), t)
    check_loss(c, loss, grad, *ref.bce_logits_loss(z, t_host), f"BCE target={target}")


# --------------------------------------------------------------------------- errors, plumbing
# --------------------------------------------------------------------------- optimiser
@given(data=st.data(), shape=st.tuples(channels, side, side), steps=st.integers(1, 3))
def test_cuda_adam_update(make_ops, data, shape, steps):
    """A few Adam steps in place on w, m, v: float32 formulas per element (the bias corrections
    come from the host), so ELEMENTWISE on m and v; w's change is ~lr, so w's atol is relative to lr."""
    c = Case(make_ops, data)
    w, m, v = c.values(shape), np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    dw, dm, dv = c.dev(w.copy()), c.dev(m.copy()), c.dev(v.copy())
    lr = 1e-3
    for t in range(1, steps + 1):
        g = c.values(shape)
        ref.adam_update(w, g, m, v, lr, 0.9, 0.999, 1e-8, t)
        c.ops.adam_update(dw, c.dev(g), dm, dv, lr, 0.9, 0.999, 1e-8, t)
    c.check(dm, m, "adam m", **ELEMENTWISE)
    c.check(dv, v, "adam v", **ELEMENTWISE)
    c.check(dw, w, "adam w", atol=1e-5 * lr * steps, rtol=2e-7)


@given(data=st.data(), shape=st.tuples(channels, side, side), lr=st.sampled_from([0.04, 0.005, 1e-3]))
def test_cuda_sgd_update(make_ops, data, shape, lr):
    """One SGD step in place, the fused kernel against framepred.sgd_update's `w -= lr * g` on
    float32: one product and one difference per element (a fused multiply-add on the GPU may
    round once instead of twice), so ELEMENTWISE."""
    c = Case(make_ops, data)
    w, g = c.values(shape), c.values(shape)
    dw = c.dev(w.copy())
    c.ops.sgd_update(dw, c.dev(g), lr)
    w -= lr * g
    c.check(dw, w, "sgd w", **ELEMENTWISE)


def tensors_in_one_buffer(c, shapes, fill):
    """Arrays of the given shapes as views into one device buffer, 7 sentinel elements before, between
    and after them: a write past a tensor's end lands on a sentinel (the many-tensor kernels reach
    the tensors through their addresses, where the emulator's guard zones do not see them).
    -> (the views, the buffer, a mask of the sentinels)."""
    gap = 7
    sizes = [int(np.prod(s)) for s in shapes]
    buf = c.dev(np.full(gap + sum(sizes) + gap * len(sizes), np.float32(fill)))
    sentinel, views, at = np.ones(buf.size, bool), [], gap
    for shape, size in zip(shapes, sizes):
        views.append(buf[at:at + size].reshape(shape))
        sentinel[at:at + size] = False
        at += size + gap
    return views, buf, sentinel


@given(data=st.data(), shapes=st.lists(st.tuples(channels, side, side), min_size=1, max_size=5),
       lr=st.sampled_from([0.04, 0.005, 1e-3]))
def test_cuda_sgd_update_many(make_ops, data, shapes, lr):
    """sgd_update_many (one launch for all the tensors) against numpy_ops' loop of sgd_update: each
    element has the one-tensor kernel's formula, so ELEMENTWISE; nothing outside the tensors changes."""
    c = Case(make_ops, data)
    ws, gs = [c.values(s) for s in shapes], [c.values(s) for s in shapes]
    views, buf, sentinel = tensors_in_one_buffer(c, shapes, 1234.5)
    for view, w in zip(views, ws):
        view[...] = c.dev(w)
    c.ops.sgd_update_many(views, [c.dev(g) for g in gs], lr)
    ref.sgd_update_many(ws, gs, lr)
    for i, (view, w) in enumerate(zip(views, ws)):
        c.check(view, w, f"sgd_update_many w{i}", **ELEMENTWISE)
    assert (c.ops.to_host(buf)[sentinel] == np.float32(1234.5)).all(), "a write outside the tensors"


@given(data=st.data(), shapes=st.lists(st.tuples(channels, side, side), min_size=1, max_size=5),
       steps=st.integers(1, 3))
def test_cuda_adam_update_many(make_ops, data, shapes, steps):
    """adam_update_many against numpy_ops' loop of adam_update, a few steps (tolerances of
    test_cuda_adam_update); the tensors, moments included, are views into one buffer with sentinels."""
    c = Case(make_ops, data)
    lr = 1e-3
    ws = [c.values(s) for s in shapes]
    ms, vs = [np.zeros(s, np.float32) for s in shapes], [np.zeros(s, np.float32) for s in shapes]
    views, buf, sentinel = tensors_in_one_buffer(c, shapes * 3, 1234.5)
    dw, dm, dv = views[:len(shapes)], views[len(shapes):2 * len(shapes)], views[2 * len(shapes):]
    for view, a in zip(views, ws + ms + vs):
        view[...] = c.dev(a)
    for t in range(1, steps + 1):
        gs = [c.values(s) for s in shapes]
        ref.adam_update_many(ws, gs, ms, vs, lr, 0.9, 0.999, 1e-8, t)
        c.ops.adam_update_many(dw, [c.dev(g) for g in gs], dm, dv, lr, 0.9, 0.999, 1e-8, t)
    for i in range(len(shapes)):
        c.check(dm[i], ms[i], f"adam_update_many m{i}", **ELEMENTWISE)
        c.check(dv[i], vs[i], f"adam_update_many v{i}", **ELEMENTWISE)
        c.check(dw[i], ws[i], f"adam_update_many w{i}", atol=1e-5 * lr * steps, rtol=2e-7)
    assert (c.ops.to_host(buf)[sentinel] == np.float32(1234.5)).all(), "a write outside the tensors"


@given(data=st.data(), shapes=st.lists(st.tuples(channels, side, side), min_size=1, max_size=5),
       beta=st.sampled_from([0.9, 0.998]))
def test_cuda_ema_update_many(make_ops, data, shapes, beta):
    """ema_update_many against numpy_ops' loop (avg <- beta avg + (1 - beta) w), two steps; the
    averages are views into one buffer with sentinels, so a write outside them shows."""
    c = Case(make_ops, data)
    avgs = [c.values(s) for s in shapes]
    views, buf, sentinel = tensors_in_one_buffer(c, shapes, 1234.5)
    for view, a in zip(views, avgs):
        view[...] = c.dev(a)
    for _ in range(2):
        ws = [c.values(s) for s in shapes]
        ref.ema_update_many(avgs, ws, beta)
        c.ops.ema_update_many(views, [c.dev(w) for w in ws], beta)
    for i, (view, avg) in enumerate(zip(views, avgs)):
        c.check(view, avg, f"ema_update_many avg{i}", **ELEMENTWISE)
    assert (c.ops.to_host(buf)[sentinel] == np.float32(1234.5)).all(), "a write outside the tensors"


@pytest.mark.parametrize("call, error, message", [
    (lambda ops, a: ops.sgd_update_many([a(3)], [a(3), a(3)], 0.1), ValueError, "1 tensors but 2 gradients"),
    (lambda ops, a: ops.sgd_update_many([a(3), a(2)], [a(3), a(3)], 0.1), ValueError, "shapes differ in tensor 1"),
    (lambda ops, a: ops.sgd_update_many([a(6)[::2]], [a(3)], 0.1), TypeError, "C-contiguous float32"),
    (lambda ops, a: ops.adam_update_many([a(3)], [a(3)], [a(3)], [a(3)], 1e-3, 0.9, 0.999, 1e-8, 0),
     ValueError, "counts from 1"),
    (lambda ops, a: ops.ema_update_many([a(3)], [a(3), a(3)], 0.9), ValueError, "1 averages but 2 tensors"),
    (lambda ops, a: ops.ema_update_many([a(6)[::2]], [a(3)], 0.9), TypeError, "C-contiguous float32"),
    (lambda ops, a: ops.adam_update_many([a(3)], [a(3)], [a(3)], [], 1e-3, 0.9, 0.999, 1e-8, 1),
     ValueError, "1 tensors, 1 gradients, 1 and 0 moments"),
])
def test_cuda_update_many_refuses_bad_input(make_ops, call, error, message):
    ops = make_ops(cupy_ops.BLOCK, cupy_ops.MAX_BLOCKS)
    with pytest.raises(error, match=message):
        call(ops, lambda n: ops.asarray(np.zeros(n, np.float32)))


def test_cuda_refuses_float64_with_a_clear_error(make_ops):
    ops = make_ops(cupy_ops.BLOCK, cupy_ops.MAX_BLOCKS)
    x = ops.asarray(np.zeros((1, 2, 4, 4)))                 # float64
    with pytest.raises(TypeError, match="relu x: the CUDA kernels are float32, got float64"):
        ops.relu_forward(x)
    w = ops.asarray(np.zeros((3, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match="conv2d x: .*float32"):
        ops.conv2d_forward(x, w, ops.asarray(np.zeros(3, np.float32)), "same")


@pytest.mark.parametrize("call, error, message", [
    (lambda ops, a: ops.conv2d_forward(a((1, 3, 8, 8)), a((4, 2, 3, 3)), a(4), "same"), ValueError,
     "3 channels but the weight expects 2"),
    (lambda ops, a: ops.conv2d_forward(a((1, 3, 8, 8)), a((4, 3, 3, 3)), a(3), "same"), ValueError,
     r"bias must have shape \(4,\)"),
    (lambda ops, a: ops.fc_forward(a((2, 5)), a((3, 4)), a(3)), ValueError, "5 features but the weight expects 4"),
    (lambda ops, a: ops.avgpool_forward(a((1, 3, 6, 8)), 4), ValueError, "must divide by 4"),
    (lambda ops, a: ops.avgpool_forward(a((1, 3, 8, 8)), 2.0), TypeError, "float"),
    (lambda ops, a: ops.maxpool2_forward(a((1, 1, 1, 5))), ValueError, "smaller than the 2x2 window"),
    (lambda ops, a: ops.lp_loss(a((1, 3, 4, 4)), a((1, 3, 4, 5)), 2), ValueError, "differ"),
    (lambda ops, a: ops.gdl_loss(a((1, 3, 4, 4)), a((1, 3, 4, 4)), 3), ValueError, "alpha must be 1 or 2"),
    (lambda ops, a: ops.relu_backward(a((2, 3)), ops.relu_forward(a((3, 2)))[1]), ValueError, "dout has shape"),
    (lambda ops, a: ops.relu_forward([0.0]), TypeError, "expected a .* array, got list"),
])
def test_cuda_bad_input_raises(make_ops, call, error, message):
    ops = make_ops(cupy_ops.BLOCK, cupy_ops.MAX_BLOCKS)
    with pytest.raises(error, match=message):
        call(ops, lambda shape: ops.asarray(np.zeros(shape, np.float32)))


def test_cuda_asarray_to_host_round_trip(make_ops):
    ops = make_ops(cupy_ops.BLOCK, cupy_ops.MAX_BLOCKS)
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    dev = ops.asarray(host)
    assert isinstance(dev, ops.xp.ndarray) and dev.dtype == np.float32
    back = ops.to_host(dev)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, host)
    assert ops.asarray(np.zeros(2), dtype=np.float32).dtype == np.float32
    assert ops.name == "gpu"


def test_cuda_load_backend_without_gpu_says_why(capsys):
    try:
        cupy_ops.check_gpu()
    except RuntimeError:
        pass
    else:
        pytest.skip("a GPU is usable here")
    with pytest.raises(BackendError, match="--device gpu: no usable GPU"):
        load_backend("gpu")
    assert load_backend("auto") is fast_cpu
    assert "running on the CPU" in capsys.readouterr().out
    assert load_backend("cpu") is fast_cpu
    assert load_backend("reference") is ref
    with pytest.raises(BackendError, match="--device must be one of auto, cpu, gpu, reference"):
        load_backend("tpu")


# --------------------------------------------------------------------------- the harness itself
def every_op_once(ops, rng):
    """Each op forward and backward on small float32 data, sizes above a 32 x 2 grid."""
    a = lambda *shape: ops.asarray(rng.standard_normal(shape).astype(np.float32))
    x = a(2, 3, 6, 6)
    for mode in ("same", "valid"):
        out, cache = ops.conv2d_forward(x, a(4, 3, 3, 3), a(4), mode)
        ops.conv2d_backward(a(*out.shape), cache)
        ops.conv2d_backward(a(*out.shape), cache, need_dw=False, dx_from=1)
    out, cache = ops.fc_forward(a(3, 40), a(5, 40), a(5))
    ops.fc_backward(a(3, 5), cache)
    out, cache = ops.fc_forward(a(3, 40), a(5, 40), a(5), relu=True)
    ops.fc_backward(a(3, 5), cache, need_dw=False)
    for op in ("relu", "tanh", "sigmoid", "maxpool2"):
        out, cache = getattr(ops, op + "_forward")(x)
        getattr(ops, op + "_backward")(a(*out.shape), cache)
    for op in ("avgpool", "upsample"):
        out, cache = getattr(ops, op + "_forward")(x, 2)
        getattr(ops, op + "_backward")(a(*out.shape), cache)
    out, cache = ops.concat_forward([x, a(2, 1, 6, 6)])
    ops.concat_backward(a(*out.shape), cache)
    ops.lp_loss(x, a(2, 3, 6, 6), 1)
    ops.gdl_loss(x, a(2, 3, 6, 6), 1)
    ops.bce_logits_loss(a(5, 1), 1.0)
    ops.adam_update(a(2, 3, 6, 6), a(2, 3, 6, 6), a(2, 3, 6, 6), ops.xp.abs(a(2, 3, 6, 6)), 1e-3, 0.9, 0.999, 1e-8, 1)
    ops.sgd_update(a(2, 3, 6, 6), a(2, 3, 6, 6), 0.04)
    ops.sgd_update_many([a(2, 3), a(4)], [a(2, 3), a(4)], 0.04)
    ops.adam_update_many([a(5)], [a(5)], [a(5)], [ops.xp.abs(a(5))], 1e-3, 0.9, 0.999, 1e-8, 1)
    ops.ema_update_many([a(2, 3), a(4)], [a(2, 3), a(4)], 0.998)


def all_kernel_names():
    return {n for src in cupy_ops.kernel_sources().values() for n in cupy_ops.kernel_names(src)}


def test_emul_every_kernel_is_launched_and_covered():
    """The ops launch every kernel of kernels/*.cu (so the op tests above cover them all): the
    32-bit twins at these sizes, the long long kernels with index32=False."""
    if emulator.find_compiler() is None:
        pytest.skip("emulation needs a C++ compiler")
    launcher = emulator.EmulatedLauncher()
    for index32 in (True, False):
        every_op_once(cupy_ops.CudaOps(xp=np, launch=launcher, block=32, max_blocks=2, index32=index32),
                      np.random.default_rng(0))
    all_kernels = all_kernel_names()
    assert set(launcher.kernels) == all_kernels
    assert set(launcher.launches) == all_kernels, f"never launched: {sorted(all_kernels - set(launcher.launches))}"


# --------------------------------------------------------------------------- 32-bit index twins
class TwinChecker:
    """A launcher that runs each launch of a 32-bit twin `name_i32` twice: first its long long
    kernel `name` on copies of the arrays (the sizes as Python ints, as CuPy passes long long),
    then as asked; every array argument must come out bit for bit the same (outputs start as
    the same NaN poison, so an element that only one of them writes differs too)."""

    def __init__(self, launch):
        self.launch = launch
        self.checked = collections.Counter()

    def __call__(self, name, grid, block, args):
        if not name.endswith("_i32"):
            return self.launch(name, grid, block, args)
        wide = name[:-len("_i32")]
        wide_args = tuple(a.copy() if isinstance(a, np.ndarray) else int(a) for a in args)
        self.launch(wide, grid, block, wide_args)
        self.launch(name, grid, block, args)
        for i, (a, b) in enumerate(zip(args, wide_args)):
            if isinstance(a, np.ndarray) and a.tobytes() != b.tobytes():
                raise AssertionError(f"{name} and {wide} differ in argument {i} "
                                     f"({int((a != b).sum())} of {a.size} elements)")
        self.checked[name] += 1


@pytest.mark.parametrize("block, max_blocks", [(32, 2), (cupy_ops.BLOCK, cupy_ops.MAX_BLOCKS)])
def test_emul_each_i32_kernel_equals_its_long_long_twin(block, max_blocks):
    """Every op on random data, each launch of a 32-bit twin checked against its long long kernel."""
    if emulator.find_compiler() is None:
        pytest.skip("emulation needs a C++ compiler")
    checker = TwinChecker(emulator.default_launcher())
    ops = cupy_ops.CudaOps(xp=emulator.PoisonedNumpy(), launch=checker, block=block, max_blocks=max_blocks)
    for seed in range(3):
        every_op_once(ops, np.random.default_rng(seed))
    twins = {n for n in all_kernel_names() if n.endswith("_i32")}
    assert set(checker.checked) == twins, f"not checked: {sorted(twins - set(checker.checked))}"


TWINS = r"""
template <typename I>
__device__ void gather_body(const float* x, float* y, I n, I step)
{
    for (I e = (I)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (I)blockDim.x * gridDim.x)
        y[e] = x[(e * step) % n];
}
extern "C" __global__ void gather(const float* x, float* y, long long n, long long step) { gather_body<long long>(x, y, n, step); }
extern "C" __global__ void gather_i32(const float* x, float* y, int n, int step) { gather_body<int>(x, y, n, step); }
extern "C" __global__ void narrow(const float* x, float* y, long long n, long long step) { gather_body<long long>(x, y, n, step); }
// a twin whose index arithmetic truncates (to 8 bits): wrong from 256 elements on
extern "C" __global__ void narrow_i32(const float* x, float* y, int n, int step)
{
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < n; e += blockDim.x * gridDim.x)
        y[e] = x[(unsigned char)((e * step) % n)];
}
"""


def test_emul_twin_checker_catches_a_truncating_twin():
    """The check above fails on a twin that gets its index arithmetic wrong."""
    if emulator.find_compiler() is None:
        pytest.skip("emulation needs a C++ compiler")
    checker = TwinChecker(emulator.EmulatedLauncher(sources={"twins.cu": TWINS}))
    x = np.arange(300, dtype=np.float32)
    checker("gather_i32", (2,), (32,), (x, np.full(300, np.nan, np.float32), np.int32(300), np.int32(7)))
    checker("narrow_i32", (2,), (32,), (x[:200], np.full(200, np.nan, np.float32), np.int32(200), np.int32(1)))
    assert checker.checked == {"gather_i32": 1, "narrow_i32": 1}   # narrow is right below 256 elements
    with pytest.raises(AssertionError, match="narrow_i32 and narrow differ in argument 1"):
        checker("narrow_i32", (2,), (32,), (x, np.full(300, np.nan, np.float32), np.int32(300), np.int32(1)))


def test_index32_bound_counts_the_grid_stride_overshoot():
    threads = cupy_ops.BLOCK * cupy_ops.MAX_BLOCKS
    assert cupy_ops.fits_index32(2**31 - threads, threads)
    assert not cupy_ops.fits_index32(2**31 - threads + 1, threads)
    assert cupy_ops.fits_index32(2**31 - 1, 1) and not cupy_ops.fits_index32(2**31, 1)


def elements(count):
    """A float32 array of `count` elements that takes no memory (all of them one zero)."""
    return np.broadcast_to(np.float32(0), (count,))


def test_index_args_picks_long_long_just_past_2_31():
    """The chooser on sizes around 2^31 (arrays that take no memory): the loop's items, each
    array's size and each size argument count, plus the launch's grid (2^24 threads at 2^31 items)."""
    ops = cupy_ops.CudaOps(xp=np, launch=None)
    threads = cupy_ops.BLOCK * cupy_ops.MAX_BLOCKS
    edge = 2**31 - threads                              # the most items the twin may loop over
    suffix, sizes = ops._index_args(edge, [elements(10)], (3, 4))
    assert suffix == "_i32" and sizes == (3, 4) and all(type(s) is np.int32 for s in sizes)
    suffix, sizes = ops._index_args(edge + 1, [elements(10)], (3, 4))
    assert suffix == "" and sizes == (3, 4) and all(type(s) is int for s in sizes)
    # 10 items: one block of 256 threads; an array (col2im's cols, GDL's terms) larger than the loop
    assert ops._index_args(10, [elements(2**31 - 256)], (3,))[0] == "_i32"
    assert ops._index_args(10, [elements(2**31 - 255)], (3,))[0] == ""
    assert ops._index_args(10, [elements(10)], (2**31 - 256,))[0] == "_i32"
    assert ops._index_args(10, [elements(10)], (3, -(2**31 - 255)))[0] == ""
    assert cupy_ops.CudaOps(xp=np, launch=None, index32=False)._index_args(10, [elements(10)], (3,))[0] == ""


def launched_with_limit(monkeypatch, limit, call):
    """The kernels `call(ops, a)` launches (a(*shape): random float32) with INDEX32_LIMIT = limit."""
    if emulator.find_compiler() is None:
        pytest.skip("emulation needs a C++ compiler")
    monkeypatch.setattr(cupy_ops, "INDEX32_LIMIT", limit)
    launcher = emulator.EmulatedLauncher()
    ops = cupy_ops.CudaOps(xp=np, launch=launcher, block=32, max_blocks=2)
    rng = np.random.default_rng(0)
    call(ops, lambda *shape: rng.standard_normal(shape).astype(np.float32))
    return set(launcher.launches)


@pytest.mark.parametrize("call, kernel, largest", [
    (lambda ops, a: ops.im2col(a(2, 3, 5, 4), 3, 1), "im2col", 2 * 5 * 4 * 3 * 9),             # cols
    (lambda ops, a: ops.col2im(a(4 * 9, 2 * 5 * 4), (2, 3, 5, 4), 3, 1, c_from=1), "col2im", 2 * 5 * 4 * 4 * 9),
    (lambda ops, a: ops._nchw_to_rows(a(2, 3, 20), a(2, 3, 20), 2, 3, 20, True), "nchw_to_rows_bias_grad",
     3 + 2 * 3 * 20),                                                                             # db's threads
    (lambda ops, a: ops.gdl_loss(a(2, 3, 5, 4), a(2, 3, 5, 4), 1), "gdl_loss_terms",
     2 * 3 * (4 * 4 + 5 * 3)),                                                                   # term
    (lambda ops, a: ops.upsample_backward(a(2, 3, 6, 4), 2), "upsample_backward", 2 * 3 * 6 * 4),  # dout
])
def test_ops_pick_the_twin_up_to_their_largest_index(monkeypatch, call, kernel, largest):
    """With the limit moved down to these sizes: each op's twin runs while its largest index
    (the array or loop larger than the output, in these ops) plus the grid fits, not one past."""
    threads = 32 * 2
    assert launched_with_limit(monkeypatch, largest + threads, call) == {kernel + "_i32"}
    assert launched_with_limit(monkeypatch, largest + threads - 1, call) == {kernel}


PROBE = r"""
extern "C" __global__ void probe(const float* x, float* y, long long n, double a, float b, int c)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)blockDim.x * gridDim.x)
        y[i] = (float)(x[i] * a) + b + (float)c;
}
extern "C" __global__ void overrun(float* y, long long n)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i <= n; i += (long long)blockDim.x * gridDim.x)
        y[i] = 1.0f;     // i == n is one past the end
}
"""


@pytest.fixture(scope="module")
def probe():
    if emulator.find_compiler() is None:
        pytest.skip("emulation needs a C++ compiler")
    return emulator.EmulatedLauncher(sources={"probe.cu": PROBE})


def probe_args(**change):
    args = dict(x=np.arange(10, dtype=np.float32), y=np.zeros(10, np.float32), n=10, a=2.0,
                b=np.float32(0.5), c=np.int32(3))
    args.update(change)
    return tuple(args.values())


def read_only(a):
    a.flags.writeable = False
    return a


def test_emul_correct_launch_runs(probe):
    args = probe_args()
    probe("probe", (2,), (3,), args)                         # 6 threads for 10 elements: the loop iterates
    np.testing.assert_array_equal(args[1], np.arange(10) * 2 + 3.5)


@pytest.mark.parametrize("name, grid, block, args, message", [
    ("probe", (1,), (32,), probe_args(n=10.0), r"argument 2 'n' \(long long\): got a Python float"),
    ("probe", (1,), (32,), probe_args(a=2), r"argument 3 'a' \(double\): got a Python int"),
    ("probe", (1,), (32,), probe_args(b=0.5), r"argument 4 'b' \(float\): got a Python float"),
    ("probe", (1,), (32,), probe_args(c=3), r"argument 5 'c' \(int\): got a Python int"),
    ("probe", (1,), (32,), probe_args(n=np.int32(10)), r"argument 2 'n'.*int32 scalar"),
    ("probe", (1,), (32,), probe_args(x=np.arange(10.0)), r"argument 0 'x' \(const float\*\): got an array of float64"),
    ("probe", (1,), (32,), probe_args(x=np.arange(20, dtype=np.float32)[::2]), "not C-contiguous"),
    ("probe", (1,), (32,), probe_args(y=read_only(np.zeros(10, np.float32))), "read-only"),
    ("probe", (1,), (32,), probe_args(x=1.0), r"argument 0 'x'.*expected an array"),
    ("probe", (1,), (32,), probe_args(n=np.zeros(1, np.int64)), r"argument 2 'n'.*expected a scalar"),
    ("probe", (1,), (32,), probe_args(n=True), "Python bool"),
    ("probe", (1,), (32,), probe_args(n=[10]), "a list, which CuPy cannot pass"),
    ("probe", (1,), (32,), probe_args()[:5], "takes 6 arguments"),
    ("probe", (0,), (32,), probe_args(), r"grid \(0,\)"),
    ("probe", (1,), (2048,), probe_args(), r"block \(2048,\)"),
    ("probe", 1, (32,), probe_args(), "grid must be a tuple"),
    ("missing", (1,), (32,), probe_args(), "no kernel named 'missing'"),
])
def test_emul_wrong_launch_is_refused(probe, name, grid, block, args, message):
    with pytest.raises(emulator.LaunchError, match=message):
        probe(name, grid, block, args)


def test_emul_out_of_bounds_write_is_caught(probe):
    with pytest.raises(emulator.LaunchError, match="wrote outside the array of argument 0 'y'"):
        probe("overrun", (1,), (32,), (np.zeros(10, np.float32), 10))


def test_emul_wrong_launch_from_backend_code_is_caught():
    """A launch with the arguments in the wrong order, as a slip in cupy_ops.py would make it."""
    if emulator.find_compiler() is None:
        pytest.skip("emulation needs a C++ compiler")
    ops = emulator.emulated_backend()
    x, out = np.zeros(5, np.float32), np.zeros(5, np.float32)
    with pytest.raises(emulator.LaunchError, match=r"kernel relu_forward, argument 1 'out'"):
        ops._run("relu_forward", 5, x, 5, out)
    with pytest.raises(emulator.LaunchError, match=r"kernel avgpool_forward, argument 6 'f' \(long long\)"):
        ops._run("avgpool_forward", 4, x, out, 1, 1, 2, 2, 2.0)


def test_cuda_whole_training_iteration_matches_numpy(make_ops):
    """One Algorithm 1 iteration (D step, then G step, adv_gdl) on the CUDA path (emulated, and on
    a real GPU where there is one) equals the NumPy path: same losses, same updated parameters,
    within float32 GEMM tolerance."""
    import framepred as fp
    gpu = make_ops(cupy_ops.BLOCK, cupy_ops.MAX_BLOCKS)
    config = fp.make_config(m=2, n=1, patch=32, width=1 / 32, loss="adv_gdl")
    rng = np.random.default_rng(0)
    batches = [(rng.uniform(-1, 1, (2, 6, 32, 32)).astype(np.float32),
                rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)) for _ in range(2)]
    params_cpu = fp.init_params(config, seed=3)
    params_gpu = {key: gpu.asarray(value.copy()) for key, value in params_cpu.items()}
    log_cpu = fp.train_step(ref, params_cpu, config, *batches, lr_g=0.04)
    log_gpu = fp.read_log(gpu, fp.train_step(gpu, params_gpu, config,
                                             *[tuple(gpu.asarray(a) for a in b) for b in batches], lr_g=0.04))
    for key in log_cpu:
        np.testing.assert_allclose(log_gpu[key], log_cpu[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for key in params_cpu:
        np.testing.assert_allclose(gpu.to_host(params_gpu[key]), params_cpu[key], **SUMS, err_msg=key)
