"""The fast CPU backend: numpy_ops' convolutions and fully connected layers reorganised for speed.

Same names, signatures and results (within float rounding) as the reference, kernels/numpy_ops.py,
which stays plain; tests/test_fast_cpu.py compares the two op by op. `--device cpu` trains with
this module, `--device reference` with numpy_ops. The ops it does not speed up (activations,
pooling, losses, Adam, ...) are numpy_ops' own, imported below.

What is done here for speed, and where:
- three forward algorithms, picked by a cost test (forward_algorithm), the backward following the
  forward's:
  - rows (_conv_rows; every layer of the small preset, G's 5 x 5 and 7 x 7 at the paper's widths):
    the input unfolded along its image rows only (_unfold_rows), k times smaller than im2col's,
    pixel-major, so that each row of the unfolding is a contiguous run of the padded input and the
    pixels are the long side of the k GEMMs, one per kernel row; the output (Ho, N, Wo, C_out) is
    returned as an (N, C_out, Ho, Wo) view. Backward: 'same' from one row unfolding of dout with the
    taps flipped, dx the 'same' convolution of dout with the kernel flipped, dw the unfolding's
    blocks times x (_conv_rows_same_backward); 'valid' from the row unfolding of x and its adjoint
    (_conv_rows_valid_backward);
  - unfold (the other wide layers, bound by their arithmetic): one GEMM of the weight and the
    channel-major unfolding (_unfold), the output (C_out, N, Ho, Wo) returned as an (N, C_out, Ho,
    Wo) view; 'same' backward from one unfolding of dout, taps flipped (dx = W' U, dw = U x^T
    flipped back; no unfolding of x, no col2im), 'valid' backward from the unfolded x and the
    columns' gradient added back onto the pixels (_fold);
  - taps (G's last layers at the paper's widths, 3 channels out of 128): each tap's weights times
    every padded pixel and the taps' shifted slices added (_add_taps); backward as unfold's;
  every op reads its input in whatever layout the previous one left it (the unfoldings copy it
  anyway), and elementwise ops keep the layout (NumPy's 'K' order);
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
    """The padded x unfolded along its rows only (k copies of it, not im2col's k^2), pixel-major:
    x (N, C, H, W), any strides -> (Hp*N*Wo, k*C), row (y*N + n)*Wo + x0, column j*C + c holding
    x_padded[n, c, y, x0 + j] for every padded row y. Each row is k*C values that lie next to each
    other in the padded (Hp, N, Wp, C) copy, so the copy moves contiguous runs. The input rows
    i .. i + Ho - 1 of every image, which kernel row i of a convolution reads, are then one block of
    rows, [i N Wo, (i + Ho) N Wo) (see _conv_rows). In a scratch buffer (see _scratch)."""
    n, c, h, w = x.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    wo = wp - k + 1
    xh = x.transpose(2, 0, 3, 1)                                     # (H, N, W, C), free if pixel-major
    if pad:
        xp_ = np.zeros((hp, n, wp, c), dtype=x.dtype)
        xp_[pad:pad + h, :, pad:pad + w] = xh
    else:
        xp_ = xh
    windows = np.lib.stride_tricks.sliding_window_view(xp_, k, axis=2).transpose(0, 1, 2, 4, 3)  # (Hp, N, Wo, k, C)
    u = _scratch((hp, n, wo, k, c), x.dtype)
    _on_all_cores(lambda part: np.copyto(u[part], windows[part]), hp, u.size)
    return u.reshape(hp * n * wo, k * c)


def _fold_rows(u, x_shape, k, pad):
    """Adjoint of _unfold_rows: (Hp*N*Wo, k*C) -> dx (N, C, H, W), a pixel-major view: each row
    unfolding's k shifted slices added back onto the padded rows, the padding dropped."""
    n, c, h, wd = x_shape
    hp, wp = h + 2 * pad, wd + 2 * pad
    wo = wp - k + 1
    u = u.reshape(hp, n, wo, k, c)
    dxp = np.zeros((hp, n, wp, c), dtype=u.dtype)
    for j in range(k):
        dxp[:, :, j:j + wo] += u[:, :, :, j]
    return dxp[pad:pad + h, :, pad:pad + wd].transpose(1, 3, 0, 2)


def _pixel_rows(a):
    """(N, C, H, W) -> (H*N*W, C), rows in _unfold_rows' order: free when a is pixel-major (as the
    'rows' convolutions' outputs are), else one copy."""
    return np.ascontiguousarray(a.transpose(2, 0, 3, 1)).reshape(-1, a.shape[1])


def _sum_kernel_rows(u, w_rows, rows, band):
    """sum over kernel rows i of u[i band : i band + rows] @ w_rows[i]: u (R, K), w_rows (k, K, M) -> (rows, M).
    Kernel row i of a convolution reads the block of row-unfolded pixels that starts i image rows down."""
    acc = _gemm(u[:rows], w_rows[0])
    if len(w_rows) > 1:
        term = np.empty_like(acc)
        for i in range(1, len(w_rows)):
            _gemm(u[i * band:i * band + rows], w_rows[i], out=term)
            _on_all_cores(lambda part: np.add(acc[part], term[part], out=acc[part]), rows, acc.size)
    return acc


def _conv_rows(x, w, pad):
    """The convolution (stride 1, zero padding pad) as k GEMMs, one per kernel row i, each on one
    block of _unfold_rows(x) and their products added: x (N, C, H, W), w (C_out, C, k, k) ->
    (Ho, N, Wo, C_out), pixel-major. The pixels are the GEMMs' long side (OpenBLAS, one core, ran
    the small preset's thin products 14-23% faster that way round than channel-major), and the
    columns are k times smaller than im2col's, for k - 1 additions of the output."""
    n, c, h, wd = x.shape
    c_out, _, k, _ = w.shape
    ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    w_rows = w.transpose(2, 3, 1, 0).reshape(k, k * c, c_out)        # [i]: kernel row i, rows j*C + c
    out = _sum_kernel_rows(_unfold_rows(x, k, pad), w_rows, ho * n * wo, n * wo)
    return out.reshape(ho, n, wo, c_out)


def _conv_rows_same_backward(dout, x, w, pad, need_dx, need_dw, dx_from):
    """dx and dw of a 'same' _conv_rows from one row unfolding of dout (padded by k // 2): dx is the
    'same' convolution of dout with the kernel flipped and its in and out channels swapped (k GEMMs
    on the unfolding's row blocks, as the forward), and kernel row k-1-i of dw is block i of the
    unfolding transposed times x (taps flipped back). No unfolding of x, no fold."""
    n, c_in, h, wd = x.shape
    c_out, _, k, _ = w.shape
    u = _unfold_rows(dout, k, pad)                                   # (Hp N W, k C_out), taps (i', j')
    band = n * wd
    dx = dw = None
    if need_dw:
        xr = _pixel_rows(x)                                          # (H N W, C_in)
        dw_f = np.stack([_gemm(u[i * band:(i + h) * band].T, xr) for i in range(k)])  # (k, k C_out, C_in)
        dw = np.ascontiguousarray(dw_f.reshape(k, k, c_out, c_in)[::-1, ::-1].transpose(2, 3, 0, 1))
    if need_dx:
        c_dx = c_in - dx_from
        w_f = w[:, dx_from:, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(k, k * c_out, c_dx)
        dx = _sum_kernel_rows(u, w_f, h * band, band).reshape(h, n, wd, c_dx).transpose(1, 3, 0, 2)
    return dx, dw


def _conv_rows_valid_backward(dout, x, w, pad, need_dx, need_dw, dx_from):
    """dx and dw of any _conv_rows (D's 'valid' ones): dw's kernel row i is block i of _unfold_rows(x)
    transposed times dout; dx the adjoint of the forward's two steps, each kernel row's columns
    gradient dout W_i^T added onto that row's block, then the row unfolding folded back (_fold_rows)."""
    n, c_in, h, wd = x.shape
    c_out, _, k, _ = w.shape
    ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    band = n * wo
    d = _pixel_rows(dout)                                            # (Ho N Wo, C_out)
    dx = dw = None
    if need_dw:
        u = _unfold_rows(x, k, pad)
        dw_rows = np.stack([_gemm(u[i * band:(i + ho) * band].T, d) for i in range(k)])   # (k, k C_in, C_out)
        dw = np.ascontiguousarray(dw_rows.reshape(k, k, c_in, c_out).transpose(3, 2, 0, 1))
    if need_dx:
        c_dx = c_in - dx_from
        w_rows_t = w[:, dx_from:].transpose(2, 0, 3, 1).reshape(k, c_out, k * c_dx)  # [i]: W_i^T, columns j*C + c
        du = np.zeros(((h + 2 * pad) * band, k * c_dx), dtype=d.dtype)
        term = np.empty((ho * band, k * c_dx), dtype=d.dtype)
        for i in range(k):
            du[i * band:(i + ho) * band] += _gemm(d, w_rows_t[i], out=term)
        dx = _fold_rows(du, (n, c_dx, h, wd), k, pad)
    return dx, dw


def _rows(a):
    """(N, C, H, W) -> (C, N*H*W): free when a is channel-major (as conv2d's outputs are), else one copy."""
    return a.transpose(1, 0, 2, 3).reshape(a.shape[1], -1)


# --------------------------------------------------------------------------- conv2d
ROWS_MAX_C_OUT = 64      # see forward_algorithm


def use_taps(c_in, c_out, padded_pixels, out_pixels):
    """Whether the forward multiplies over the padded pixels (bench.py counts that extra work): see forward_algorithm."""
    return 4 * c_out * padded_pixels <= c_in * out_pixels


def forward_algorithm(c_in, c_out, padded_pixels, out_pixels, mode, k):
    """The forward's cost test: 'taps', 'rows' or 'unfold' (measured layer by layer, one core per
    worker at the small preset's widths, two cores at the paper's).

    taps (_add_taps) saves the unfolding's copy (C_in k^2 values per output pixel) for k^2 shifted
    additions (C_out k^2 values per padded pixel), and its GEMM runs over the padded pixels: for an
    output much thinner than the input (C_out Hp Wp <= C_in Ho Wo / 4: G's last layers at the
    paper's widths, 3 channels out of 128).
    rows (_conv_rows, pixel-major): k GEMMs on an unfolding k times smaller than im2col's, the
    pixels the GEMMs' long side: every layer of at most ROWS_MAX_C_OUT output channels (all of the
    small preset's: forward and backward 10-60% faster than the unfolding on its 16 x 16 and
    32 x 32 scales, level on the smaller ones), and G's 5 x 5 and 7 x 7 layers at the paper's
    widths (1-27%).
    unfold (_unfold, one GEMM): the other wide layers (G's 3 x 3, D's), bound by their arithmetic,
    where one GEMM over im2col's columns beats k GEMMs and their sum."""
    if use_taps(c_in, c_out, padded_pixels, out_pixels):
        return "taps"
    if c_out <= ROWS_MAX_C_OUT or (mode == "same" and k >= 5):
        return "rows"
    return "unfold"


def conv2d_forward(x, w, b, mode, relu=False):
    """numpy_ops.conv2d_forward by one of three algorithms (forward_algorithm).

    x: (N, C_in, H, W); w: (C_out, C_in, k, k), k odd for 'same'; b: (C_out,)
    mode 'same' pads by k // 2 (G's convolutions), 'valid' does not pad (D's); relu: the ReLU
    that follows, applied here (numpy_ops.relu_forward keeps the layout).
    out: (N, C_out, Ho, Wo), Ho = H for 'same', H - k + 1 for 'valid': a view of what the GEMMs give,
    pixel-major (Ho, N, Wo, C_out) from 'rows', channel-major (C_out, N, Ho, Wo) from the others.
    """
    pad = conv_check(x.shape, w.shape, mode)
    n, _, h, wd = x.shape
    c_out, _, k, _ = w.shape
    ho, wo = conv_output_size(h, wd, k, mode)
    c_in, hp, wp = x.shape[1], h + 2 * pad, wd + 2 * pad
    algorithm = forward_algorithm(c_in, c_out, hp * wp, ho * wo, mode, k)
    if algorithm == "taps":
        # A much thinner output than input: the unfolded x would be C_in k k x N Ho Wo for a GEMM
        # of only C_out rows. Instead multiply each tap's weights into every padded pixel,
        # (C_out k k, C_in) @ (C_in, N Hp Wp), and add the taps' shifted slices.
        z = _gemm(w.transpose(0, 2, 3, 1).reshape(c_out * k * k, c_in), _padded(x, pad).reshape(c_in, -1),
                  out=_scratch((c_out * k * k, n * hp * wp), x.dtype))
        out = _add_taps(z.reshape(c_out, k, k, n, hp, wp), k, ho, wo)
        out += b[:, None, None, None]
        out = out.transpose(1, 0, 2, 3)
    elif algorithm == "rows":
        out = _conv_rows(x, w, pad)                                   # (Ho, N, Wo, C_out)
        out += b
        out = out.transpose(1, 3, 0, 2)
    else:
        out = _gemm(w.reshape(c_out, -1), _unfold(x, k, pad))        # (C_out, N*Ho*Wo)
        out += b[:, None]
        out = out.reshape(c_out, n, ho, wo).transpose(1, 0, 2, 3)
    # The backward unfolds x or dout again: memory for one layer's columns, not every layer's.
    relu_cache = None
    if relu:
        out, relu_cache = relu_forward(out)
    return out, (x, w, pad, relu_cache, algorithm)


def _channel_sums(d):
    """db: d (N, C, H, W) summed over all but the channels, read in its memory's order."""
    if d.transpose(2, 0, 3, 1).flags.c_contiguous:                  # pixel-major
        return _pixel_rows(d).sum(axis=0)
    return _rows(d).sum(axis=1)


def conv2d_backward(dout, cache, need_dx=True, need_dw=True, dx_from=0):
    """dout: (N, C_out, Ho, Wo) -> dx (N, C_in - dx_from, H, W) or None, dw (C_out, C_in, k, k) or
    None, db (C_out,) or None.

    need_dx=False skips the input gradient (G's first layers see only data); dx_from > 0 computes
    it for the input channels dx_from: only (the channels before them see only data); need_dw=False
    skips the parameter gradients dw and db (D held fixed in G's step).

    The backward follows the forward's algorithm:
    - rows, 'same' (G): both gradients from one row unfolding of dout, taps flipped
      (_conv_rows_same_backward); rows, 'valid' (D): dw from the row unfolding of x, dx its adjoint
      (_conv_rows_valid_backward);
    - taps and unfold, 'same': from one unfolding of dout (padded by k // 2, taps flipped),
      U = (C_out k k, N H W): dx = W' U is the 'same' convolution of dout with the kernel flipped and
      its in and out channels swapped, and dw = U x^T, flipped back; no unfolding of x, no col2im;
    - taps and unfold, 'valid': dw from the unfolded x as in the forward; dx from the columns'
      gradient W^T dout, added back onto the pixels (_fold): the full convolution would cost
      (H / Ho)^2 more.
    A forward with relu=True: dout is first taken back through the ReLU.
    """
    x, w, pad, relu_cache, algorithm = cache
    if relu_cache is not None:
        dout = relu_backward(dout, relu_cache)
    n, c_in, h, wd = x.shape
    c_out, _, k, _ = w.shape
    check_dx_from(dx_from, c_in)
    db = _channel_sums(dout) if need_dw else None
    if not (need_dw or need_dx):
        return None, None, None
    same = 2 * pad == k - 1                                          # 'same' (and any 1 x 1)
    if algorithm == "rows":
        backward = _conv_rows_same_backward if same else _conv_rows_valid_backward
        dx, dw = backward(dout, x, w, pad, need_dx, need_dw, dx_from)
        return dx, dw, db
    dx = dw = None
    if same:
        u = _unfold(dout, k, pad)                                 # (C_out k k, N H W), taps (i', j')
        if need_dw:
            # U x^T: (C_out, k, k, C_in), tap (i', j') holding dw's tap (k-1-i', k-1-j')
            dw_u = _gemm(u, _rows(x).T).reshape(c_out, k, k, c_in)
            dw = np.ascontiguousarray(dw_u[:, ::-1, ::-1].transpose(0, 3, 1, 2))
        if need_dx:
            w_t = w[:, dx_from:, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(c_in - dx_from, -1)
            dx = _gemm(w_t, u).reshape(c_in - dx_from, n, h, wd).transpose(1, 0, 2, 3)
        return dx, dw, db
    d_rows = _rows(dout)                                          # (C_out, N*Ho*Wo)
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

