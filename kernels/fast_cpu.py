"""The fast CPU backend: numpy_ops' convolutions and fully connected layers reorganised for speed.

Same names, signatures and results (within float rounding) as the reference, kernels/numpy_ops.py,
which stays plain; tests/test_fast_cpu.py compares the two op by op. `--device cpu` trains with
this module, `--device reference` with numpy_ops. The ops it does not speed up (activations,
pooling, losses, Adam, ...) are numpy_ops' own, imported below.

What is done here for speed, and where:
- the convolutions work channel-major: a layer's output is a (C_out, N, Ho, Wo) array returned as
  an (N, C_out, Ho, Wo) view, which is what the GEMM W @ cols gives and what the next layer's
  unfolding reads fastest (_unfold, _rows); elementwise ops keep that layout (NumPy's 'K' order);
- three forward algorithms, picked by a cost test (forward_algorithm): the unfolded input times
  the weight (_unfold, the paper's wide layers); for a thinner output than input (G's last layers,
  and the narrowing layers of the small preset) each tap's weights times every padded pixel and
  the taps' shifted slices added (_add_taps); for the other thin layers, k GEMMs on an unfolding
  along the image rows only (_conv_rows), k times smaller than im2col's, one per kernel row;
- D's 'valid' backward for thin layers from that row unfolding too (_conv_rows_dw, _conv_rows_dx);
- the 'same' backward from one unfolding of dout with the taps flipped: dx = W' U is the 'same'
  convolution of dout with the kernel flipped, dw = U x^T flipped back (no unfolding of x, no col2im);
- one scratch buffer per dtype for the unfolded windows (_scratch), reused between calls: the
  largest temporaries of a step, each dead before the next is made;
- the unfolding copies and the folding sums split across the cores in a thread pool (_on_all_cores;
  NumPy runs them on one core while the GEMMs use all), forgotten in a forked child;
- every matrix product through _gemm (bench.py wraps it to time the GEMMs);
- one model-level choice: batch_d_terms asks framepred.train_step for d_loss_batched, D's two
  terms in one pass over 2N samples instead of two passes over N.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kernels import numpy_ops
from kernels.numpy_ops import (  # noqa: F401  (the ops this backend takes as they are)
    _check_pair, _check_rank, adam_update, adam_update_many, asarray, avgpool_backward, bce_logits_loss,
    check_dx_from, col2im, concat_backward, concat_forward, conv_check, conv_output_size, ema_update_many,
    flatten_backward, flatten_forward, gdl_loss, im2col, lp_loss, maxpool2_backward, maxpool2_forward, relu_backward,
    relu_forward, sgd_update, sgd_update_many, sigmoid_backward, sigmoid_forward, tanh_backward, tanh_forward, to_host,
    upsample_backward, upsample_forward)

xp = np
name = "cpu"
batch_d_terms = True     # framepred.train_step: D's real and generated terms as one batch (d_loss_batched)


# --------------------------------------------------------------------------- helpers
def _gemm(a, b, out=None):
    """Every matrix product of the convolutions and fully connected layers (one place to time them)."""
    return np.matmul(a, b, out=out)


_scratch_buffers = {}


def _scratch(shape, dtype):
    """An uninitialised C-contiguous array in a buffer kept for the next call (one per dtype,
    grown to the largest size asked). For the unfolded windows of the convolutions: the largest
    temporaries of a training step (up to C_in k^2 x N H W), each dead before the next is made,
    so reusing one buffer saves the page faults and zeroing of a fresh allocation every time.
    Whatever is in it is overwritten by the next call: never return it from an op."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    buf = _scratch_buffers.get(dtype)
    if buf is None or buf.size < size:
        _scratch_buffers.pop(dtype, None)           # free the old buffer before the larger one
        buf = _scratch_buffers[dtype] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def available_cores():
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_CORES = available_cores()
_PARALLEL_MIN = 1 << 20            # elements: below this a copy is not worth handing to threads
_pool = None


def _forget_pool():
    global _pool
    _pool = None                   # a forked child has none of the parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def set_threads(count):
    """Use `count` threads (this backend's copies; BLAS has its own setting): data_parallel's
    workers run one each."""
    global _CORES, _pool
    _CORES, _pool = max(1, int(count)), None


def _on_all_cores(fn, length, size):
    """fn(part) for `part` slices that cover range(length), one per core, in threads, when the work
    (`size` elements) is large; else fn(slice(None)) here. For the unfolding copies and the folding
    sums, which NumPy runs on one core (releasing the GIL) while the GEMMs use them all. Each element
    is handled by exactly one part, in the same order as the serial call: the results are identical."""
    global _pool
    parts = min(_CORES, length)
    if parts < 2 or size < _PARALLEL_MIN:
        fn(slice(None))
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(_CORES - 1, thread_name_prefix="fast_cpu")
    bounds = [length * p // parts for p in range(parts + 1)]
    others = [_pool.submit(fn, slice(a, b)) for a, b in zip(bounds[1:-1], bounds[2:])]
    fn(slice(bounds[0], bounds[1]))                               # the first part on this thread
    for f in others:
        f.result()


def _padded(x, pad):
    """x (N, C, H, W), any strides -> channel-major (C, N, H + 2 pad, W + 2 pad) with zero borders
    (a view of x when pad is 0)."""
    n, c, h, w = x.shape
    xc = x.transpose(1, 0, 2, 3)                                  # (C, N, H, W), free if channel-major
    if not pad:
        return xc
    xp_ = np.zeros((c, n, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    xp_[:, :, pad:pad + h, pad:pad + w] = xc
    return xp_


def _unfold(x, k, pad):
    """im2col's matrix transposed, built directly: x (N, C, H, W), any strides ->
    (C*k*k, N*Ho*Wo) in a scratch buffer (see _scratch), row c*k*k + i*k + j, column
    n*Ho*Wo + y*Wo + x0 holding x_padded[n, c, y + i, x0 + j].

    With the weight as a (C_out, C_in*k*k) matrix on its left, the GEMM gives (C_out, N*Ho*Wo):
    the output channel-major, which is also the layout this function reads fastest (the copy
    runs along contiguous image rows), so the output of one layer feeds the next with no transpose.
    """
    n, c, h, w = x.shape
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    windows = np.lib.stride_tricks.sliding_window_view(_padded(x, pad), (k, k), axis=(2, 3))  # (C, N, Ho, Wo, k, k)
    cols = _scratch((c, k, k, n, ho, wo), x.dtype)
    windows = windows.transpose(0, 4, 5, 1, 2, 3)                # (C, k, k, N, Ho, Wo)
    _on_all_cores(lambda part: np.copyto(cols[part], windows[part]), c, cols.size)    # one copy
    return cols.reshape(c * k * k, n * ho * wo)


def _fold(cols, x_shape, k, pad):
    """Adjoint of _unfold: (C*k*k, N*Ho*Wo) -> dx (N, C, H, W), a channel-major view. The taps are
    added in col2im's order, one shifted slice each, so the sums equal col2im's exactly."""
    n, c, h, w = x_shape
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    cols6 = cols.reshape(c, k, k, n, ho, wo)
    dxp = np.zeros((c, n, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)

    def add_taps(part):
        for i in range(k):
            for j in range(k):
                dxp[part, :, i:i + ho, j:j + wo] += cols6[part, i, j]

    _on_all_cores(add_taps, c, cols.size)
    return dxp[:, :, pad:pad + h, pad:pad + w].transpose(1, 0, 2, 3)


def _add_taps(z, k, ho, wo):
    """z: (C, k, k, N, Hp, Wp) -> (C, N, Ho, Wo), the sum over the taps (i, j), in order, of the
    shifted slices z[:, i, j, :, i:i + Ho, j:j + Wo]: the 'same' convolution of a thin output from
    each tap's weights multiplied into every padded pixel. The channels are split across the cores
    (_on_all_cores); each output element's sum runs in the same order either way."""
    c, _, _, n = z.shape[:4]
    out = np.empty((c, n, ho, wo), dtype=z.dtype)

    def add_taps(part):
        o = out[part]
        np.copyto(o, z[part, 0, 0, :, :ho, :wo])
        for t in range(1, k * k):
            i, j = divmod(t, k)
            o += z[part, i, j, :, i:i + ho, j:j + wo]

    _on_all_cores(add_taps, c, out.size * k * k)
    return out


def _unfold_rows(x, k, pad):
    """The padded x unfolded along its rows only (k copies of it, not im2col's k^2): x (N, C, H, W),
    any strides -> (C*k, Hp*N*Wo), row c*k + j, column (y*N + n)*Wo + x0 holding x_padded[n, c, y, x0 + j]
    for every padded row y. The input rows i .. i + Ho - 1 of every image, which kernel row i of a
    convolution reads, are then one block of columns, [i N Wo, (i + Ho) N Wo) (see _conv_rows)."""
    n, c, h, w = x.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    wo = wp - k + 1
    if pad:
        xp_ = np.zeros((c, hp, n, wp), dtype=x.dtype)
        xp_[:, pad:pad + h, :, pad:pad + w] = x.transpose(1, 2, 0, 3)
    else:
        xp_ = x.transpose(1, 2, 0, 3)                                # (C, H, N, W), a view
    windows = np.lib.stride_tricks.sliding_window_view(xp_, k, axis=3).transpose(0, 4, 1, 2, 3)  # (C, k, Hp, N, Wo)
    u = np.empty((c, k, hp, n, wo), dtype=x.dtype)
    _on_all_cores(lambda part: np.copyto(u[part], windows[part]), c, u.size)
    return u.reshape(c * k, hp * n * wo)


def _conv_rows(x, w, pad):
    """The convolution (stride 1, zero padding pad) as k GEMMs, one per kernel row i, each on one
    block of _unfold_rows(x) and their products added: x (N, C, H, W), w (C_out, C, k, k) ->
    (C_out, N, Ho, Wo), channel-major. For thin GEMMs (few output channels), which read their
    columns once per output row of W: the columns are k times smaller than im2col's and stay in
    cache, for k - 1 additions of the output."""
    n, c, h, wd = x.shape
    c_out, _, k, _ = w.shape
    ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    u = _unfold_rows(x, k, pad)
    band = n * wo                                                    # columns per input row
    w_rows = w.transpose(2, 0, 1, 3).reshape(k, c_out, c * k)        # [i]: kernel row i, columns c*k + j
    out = np.empty((c_out, n, ho, wo), dtype=x.dtype)
    out_rows = out.transpose(0, 2, 1, 3)                             # (C_out, Ho, N, Wo), the GEMMs' order
    acc = _gemm(w_rows[0], u[:, :ho * band])
    term = np.empty_like(acc)
    for i in range(1, k):
        _gemm(w_rows[i], u[:, i * band:(i + ho) * band], out=term)
        if i < k - 1:
            acc += term
        else:
            np.add(acc.reshape(c_out, ho, n, wo), term.reshape(c_out, ho, n, wo), out=out_rows)
    if k == 1:
        np.copyto(out_rows, acc.reshape(c_out, ho, n, wo))
    return out


def _rows_order(dout):
    """dout (N, C_out, Ho, Wo), any strides -> (C_out, Ho*N*Wo), row-major over (y, n, x): the column
    order of the row-unfolding GEMMs (_conv_rows)."""
    c_out, ho = dout.shape[1], dout.shape[2]
    return np.ascontiguousarray(dout.transpose(1, 2, 0, 3)).reshape(c_out, ho * dout.shape[0] * dout.shape[3])


def _conv_rows_dw(x, d_hnw, k, pad):
    """The weight gradient of _conv_rows: x (N, C, H, W), d_hnw = _rows_order(dout) -> dw (C_out, C, k, k).
    Kernel row i's (C_out, C k) block is d_hnw times block i of _unfold_rows(x), transposed."""
    n, c, h, wd = x.shape
    c_out = d_hnw.shape[0]
    u = _unfold_rows(x, k, pad)
    band = n * (wd + 2 * pad - k + 1)
    ho = d_hnw.shape[1] // band
    dw_rows = np.stack([_gemm(d_hnw, u[:, i * band:(i + ho) * band].T) for i in range(k)])  # (k, C_out, C k)
    return np.ascontiguousarray(dw_rows.reshape(k, c_out, c, k).transpose(1, 2, 0, 3))


def _conv_rows_dx(d_hnw, w, x_shape, pad, c_from=0):
    """The input gradient of _conv_rows for the input channels c_from: on, as the adjoint of its two
    steps: each kernel row's columns gradient W_i^T dout added onto that row's block, then the row
    unfolding folded back (k shifted additions along x). d_hnw = _rows_order(dout), w (C_out, C_in,
    k, k), x_shape (N, C, H, W) with C = C_in - c_from -> dx (N, C, H, W)."""
    n, c, h, wd = x_shape
    c_out, _, k, _ = w.shape
    hp, wo = h + 2 * pad, wd + 2 * pad - k + 1
    band = n * wo
    ho = d_hnw.shape[1] // band
    w_rows_t = w[:, c_from:].transpose(2, 1, 3, 0).reshape(k, c * k, c_out)   # [i]: W_i^T, rows c*k + j
    du = np.zeros((c * k, hp * band), dtype=d_hnw.dtype)
    term = np.empty((c * k, ho * band), dtype=d_hnw.dtype)
    for i in range(k):
        du[:, i * band:(i + ho) * band] += _gemm(w_rows_t[i], d_hnw, out=term)
    return _fold_rows(du, (n, c, h, wd), k, pad)


def _fold_rows(u, x_shape, k, pad):
    """Adjoint of _unfold_rows: (C*k, Hp*N*Wo) -> dx (N, C, H, W), each row unfolding's k shifted
    slices added back onto the padded rows, the padding dropped."""
    n, c, h, wd = x_shape
    hp, wp = h + 2 * pad, wd + 2 * pad
    wo = wp - k + 1
    u = u.reshape(c, k, hp, n, wo)
    dxp = np.zeros((c, hp, n, wp), dtype=u.dtype)
    for j in range(k):
        dxp[:, :, :, j:j + wo] += u[:, j]
    return dxp[:, pad:pad + h, :, pad:pad + wd].transpose(2, 0, 1, 3)


def _rows(a):
    """(N, C, H, W) -> (C, N*H*W): free when a is channel-major (as conv2d's outputs are), else one copy."""
    return a.transpose(1, 0, 2, 3).reshape(a.shape[1], -1)


# --------------------------------------------------------------------------- conv2d
TAPS_MAX_C_IN = 64       # see forward_algorithm
ROWS_MAX_C_OUT = 64      # see forward_algorithm


def forward_algorithm(c_in, c_out, padded_pixels, out_pixels):
    """The forward's cost test: 'taps', 'rows' or 'unfold' (measured on 2 cores, layer by layer).

    taps (_add_taps) saves the unfolding's copy (C_in k^2 values per output pixel) for k^2 shifted
    additions (C_out k^2 values per padded pixel), and its GEMM runs over the padded pixels: for an
    output much thinner than the input (C_out Hp Wp <= C_in Ho Wo / 4: G's last layers, 3n
    channels), and for any narrowing layer (C_out Hp Wp <= C_in Ho Wo) of at most TAPS_MAX_C_IN
    input channels (the small preset's 64 -> 32 -> 16), whose small GEMM is cheap beside the copy;
    at the paper's widths (512 -> 256, 256 -> 128) the GEMM's extra border costs more than the
    copy saves (528 against 366 ms).
    rows (_conv_rows): for the other layers of at most ROWS_MAX_C_OUT output channels. Their thin
    GEMM is bound by reading the unfolded columns, which the row unfolding makes k times smaller
    (the small preset's widening layers: 10-60% faster than the unfolding).
    unfold (_unfold, one GEMM): the paper's wide layers, bound by their arithmetic."""
    narrower = c_out * padded_pixels <= c_in * out_pixels
    if 4 * c_out * padded_pixels <= c_in * out_pixels or (narrower and c_in <= TAPS_MAX_C_IN):
        return "taps"
    return "rows" if c_out <= ROWS_MAX_C_OUT else "unfold"


def use_taps(c_in, c_out, padded_pixels, out_pixels):
    """Whether the forward multiplies over the padded pixels (bench.py counts that extra work)."""
    return forward_algorithm(c_in, c_out, padded_pixels, out_pixels) == "taps"


def conv2d_forward(x, w, b, mode, relu=False):
    """numpy_ops.conv2d_forward, one GEMM on the channel-major unfolding, or the taps path.

    x: (N, C_in, H, W); w: (C_out, C_in, k, k), k odd for 'same'; b: (C_out,)
    mode 'same' pads by k // 2 (G's convolutions), 'valid' does not pad (D's); relu: the ReLU
    that follows, applied here (numpy_ops.relu_forward keeps the channel-major layout).
    out: (N, C_out, Ho, Wo), Ho = H for 'same', H - k + 1 for 'valid': a view of a channel-major
    (C_out, N, Ho, Wo) array, which is what the GEMM gives and what the next layer reads fastest.
    """
    pad = conv_check(x.shape, w.shape, mode)
    n, _, h, wd = x.shape
    c_out, _, k, _ = w.shape
    ho, wo = conv_output_size(h, wd, k, mode)
    c_in, hp, wp = x.shape[1], h + 2 * pad, wd + 2 * pad
    algorithm = forward_algorithm(c_in, c_out, hp * wp, ho * wo)
    if algorithm == "taps":
        # Fewer output channels than input ones: the unfolded x would be C_in k k x N Ho Wo for a
        # GEMM of only C_out rows. Instead multiply each tap's weights into every padded pixel,
        # (C_out k k, C_in) @ (C_in, N Hp Wp), and add the taps' shifted slices.
        z = _gemm(w.transpose(0, 2, 3, 1).reshape(c_out * k * k, c_in), _padded(x, pad).reshape(c_in, -1),
                  out=_scratch((c_out * k * k, n * hp * wp), x.dtype))
        out = _add_taps(z.reshape(c_out, k, k, n, hp, wp), k, ho, wo)
        out += b[:, None, None, None]
    elif algorithm == "rows":
        out = _conv_rows(x, w, pad)
        out += b[:, None, None, None]
    else:
        out = _gemm(w.reshape(c_out, -1), _unfold(x, k, pad))  # (C_out, N*Ho*Wo)
        out += b[:, None]
        out = out.reshape(c_out, n, ho, wo)
    # The backward unfolds x or dout again: memory for one layer's columns, not every layer's.
    out, relu_cache = out.transpose(1, 0, 2, 3), None
    if relu:
        out, relu_cache = relu_forward(out)
    return out, (x, w, pad, relu_cache)


def conv2d_backward(dout, cache, need_dx=True, need_dw=True, dx_from=0):
    """dout: (N, C_out, Ho, Wo) -> dx (N, C_in - dx_from, H, W) or None, dw (C_out, C_in, k, k) or
    None, db (C_out,) or None.

    need_dx=False skips the input gradient (G's first layers see only data); dx_from > 0 computes
    it for the input channels dx_from: only (the channels before them see only data); need_dw=False
    skips the parameter gradients dw and db (D held fixed in G's step).

    'same' (G): both gradients come from one unfolding of dout (padded by k // 2, taps flipped),
    U = (C_out k k, N H W): dx = W' U is the 'same' convolution of dout with the kernel flipped and
    its in and out channels swapped, and dw = U x^T, flipped back; no unfolding of x, no col2im.
    'valid' (D): dw from the unfolded x as in the forward; dx from the columns' gradient W^T dout,
    added back onto the pixels (_fold): the full convolution would cost (H / Ho)^2 more. For at
    most ROWS_MAX_C_OUT output channels both from the row unfolding instead (_conv_rows_dw,
    _conv_rows_dx): 25-45% faster on the small preset's D layers.
    A forward with relu=True: dout is first taken back through the ReLU.
    """
    x, w, pad, relu_cache = cache
    if relu_cache is not None:
        dout = relu_backward(dout, relu_cache)
    n, c_in, h, wd = x.shape
    c_out, _, k, _ = w.shape
    check_dx_from(dx_from, c_in)
    d_rows = _rows(dout)                                          # (C_out, N*Ho*Wo)
    dx = dw = db = None
    if need_dw:
        db = d_rows.sum(axis=1)
    if 2 * pad == k - 1:                                          # 'same' (and any 1 x 1)
        if not (need_dw or need_dx):
            return None, None, None
        u = _unfold(dout, k, pad)                                 # (C_out k k, N H W), taps (i', j')
        if need_dw:
            # U x^T: (C_out, k, k, C_in), tap (i', j') holding dw's tap (k-1-i', k-1-j')
            dw_u = _gemm(u, _rows(x).T).reshape(c_out, k, k, c_in)
            dw = np.ascontiguousarray(dw_u[:, ::-1, ::-1].transpose(0, 3, 1, 2))
        if need_dx:
            w_t = w[:, dx_from:, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(c_in - dx_from, -1)
            dx = _gemm(w_t, u).reshape(c_in - dx_from, n, h, wd).transpose(1, 0, 2, 3)
        return dx, dw, db
    if c_out <= ROWS_MAX_C_OUT:
        # thin layers (as in the forward): from the row unfolding of x, k times smaller than im2col's
        d_hnw = _rows_order(dout)
        if need_dw:
            dw = _conv_rows_dw(x, d_hnw, k, pad)
        if need_dx:
            dx = _conv_rows_dx(d_hnw, w, (n, c_in - dx_from, h, wd), pad, dx_from)
        return dx, dw, db
    if need_dw:
        dw = _gemm(d_rows, _unfold(x, k, pad).T).reshape(w.shape)  # (C_out, N Ho Wo) @ (N Ho Wo, C_in k k)
    if need_dx:
        c_dx = c_in - dx_from
        dcols = _gemm(w[:, dx_from:].reshape(c_out, -1).T, d_rows, out=_scratch((c_dx * k * k, d_rows.shape[1]), x.dtype))
        dx = _fold(dcols, (n, c_dx, h, wd), k, pad)
    return dx, dw, db


# --------------------------------------------------------------------------- average pooling
def avgpool_forward(x, f):
    """numpy_ops.avgpool_forward (SPEC's d_k), as 2f slice additions instead of NumPy's mean over two
    strided axes (5-10x faster here; a step downscales its minibatch up to 12 times).
    x: (N, C, H, W), H and W divisible by f -> (N, C, H/f, W/f)."""
    _check_rank(x, 4, "avgpool")
    n, c, h, w = x.shape
    if h % f or w % f:
        return numpy_ops.avgpool_forward(x, f)                       # its error message
    rows = x.reshape(n, c, h // f, f, w)
    acc = rows[:, :, :, 0].copy()
    for i in range(1, f):
        acc += rows[:, :, :, i]                                      # the f image rows of each block
    cols = acc.reshape(n, c, h // f, w // f, f)
    out = cols[..., 0].copy()
    for j in range(1, f):
        out += cols[..., j]                                          # then its f columns
    out *= 1.0 / (f * f)
    return out, (x.shape, f)


# --------------------------------------------------------------------------- fully connected
def fc_forward(x, w, b, relu=False):
    """x: (N, D_in); w: (D_out, D_in); b: (D_out,) -> out: (N, D_out) = x w^T + b [then the ReLU]."""
    _check_rank(x, 2, "fc")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"fc: x has {x.shape[1]} features but the weight expects {w.shape[1]}")
    out, relu_cache = _gemm(x, w.T) + b, None
    if relu:
        out, relu_cache = relu_forward(out)
    return out, (x, w, relu_cache)


def fc_backward(dout, cache, need_dw=True):
    """dout: (N, D_out) -> dx (N, D_in), dw (D_out, D_in) or None, db (D_out,) or None.

    need_dw=False skips the parameter gradients (D held fixed in G's step)."""
    x, w, relu_cache = cache
    if relu_cache is not None:
        dout = relu_backward(dout, relu_cache)
    if not need_dw:
        return _gemm(dout, w), None, None
    return _gemm(dout, w), _gemm(dout.T, x), dout.sum(axis=0)

