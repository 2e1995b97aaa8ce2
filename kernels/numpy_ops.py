"""The NumPy reference: every op's forward and backward, written by hand, plainly.

This file is the reference, meant to be read in one sitting: no global state, no threads,
contiguous (N, C, H, W) outputs; the convolution is im2col and one GEMM. Two other backends
offer the same names and signatures and are tested against these functions: fast_cpu.py (the
same results up to float rounding, computed in layouts and orders chosen for speed; `--device
cpu`) and cupy_ops.py (the CUDA kernels of this folder; `--device gpu`). Train with this file
itself with `--device reference`.

Conventions (as in the cs231n layer files):
    out, cache = op_forward(x, ...)
    dx, ...    = op_backward(dout, cache)
Losses return (value, gradient) in one call. Arrays are (N, C, H, W) images or (N, D)
vectors, float32 in training and float64 in the gradient checks: every op keeps the
dtype it is given.
"""
import numpy as np

xp = np
name = "reference"


def _check_rank(x, rank, what):
    if x.ndim != rank:
        raise ValueError(f"{what}: expected a {rank}-d array, got shape {tuple(x.shape)}")


# --------------------------------------------------------------------------- conv2d
def conv_output_size(h, w, k, mode):
    """Output side of a stride-1 convolution: Ho = H + 2 pad - k + 1, Wo = W + 2 pad - k + 1,
    with pad = k // 2 for 'same' (so Ho = H, Wo = W) and pad = 0 for 'valid' (H - k + 1, W - k + 1)."""
    if mode == "same":
        return h, w
    return h - k + 1, w - k + 1


def conv_check(x_shape, w_shape, mode):
    """Raise a clear ValueError for inputs conv2d cannot take; return the padding."""
    if len(x_shape) != 4:
        raise ValueError(f"conv2d: x must be (N, C, H, W), got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(f"conv2d: weight must be (C_out, C_in, kh, kw), got shape {tuple(w_shape)}")
    _, c, h, w = x_shape
    c_out, c_in, kh, kw = w_shape
    if c != c_in:
        raise ValueError(f"conv2d: x has {c} channels but the weight expects {c_in}")
    if kh != kw:
        raise ValueError(f"conv2d: only square kernels are supported, got {kh}x{kw}")
    if mode == "same":
        if kh % 2 == 0:
            raise ValueError(f"conv2d 'same' needs an odd kernel, got {kh}")
        return kh // 2
    if mode == "valid":
        if kh > h or kw > w:
            raise ValueError(f"conv2d 'valid': kernel {kh}x{kw} is larger than the input {h}x{w}")
        return 0
    raise ValueError(f"conv2d: mode must be 'same' or 'valid', got {mode!r}")


def check_dx_from(dx_from, c_in):
    """conv2d_backward's dx_from must pick at least one of the C_in input channels."""
    if not 0 <= dx_from < c_in:
        raise ValueError(f"conv2d_backward: dx_from must be in [0, {c_in}) for {c_in} input channels, got {dx_from}")


def im2col(x, k, pad):
    """Unfold every k x k window of x into one row.

    x: (N, C, H, W) -> cols: (N*Ho*Wo, C*k*k), Ho = H + 2 pad - k + 1, Wo = W + 2 pad - k + 1.
    Row n*Ho*Wo + y*Wo + x0 holds window (y, x0) of sample n; column c*k*k + i*k + j
    holds x_padded[n, c, y + i, x0 + j]. The CUDA im2col writes its transpose (C*k*k, N*Ho*Wo), as fast_cpu._unfold does.
    """
    n, c, h, w = x.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    windows = np.lib.stride_tricks.sliding_window_view(xp_, (k, k), axis=(2, 3))
    # windows: (N, C, Ho, Wo, k, k) -> (N, Ho, Wo, C, k, k), one copy
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * k * k)


def col2im(cols, x_shape, k, pad):
    """Adjoint of im2col: add every window's entries back onto the pixels they came from.

    cols: (N*Ho*Wo, C*k*k) -> dx: (N, C, H, W), contiguous. Each pixel gathers the k*k entries
    that its taps (i, j) took from it, added in tap order (a loop over the k*k taps, each one
    shifted slice, not over pixels): deterministic, and the order the CUDA col2im (one thread per
    dx element) adds them in.
    """
    n, c, h, w = x_shape
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    cols6 = cols.reshape(n, ho, wo, c, k, k).transpose(0, 3, 4, 5, 1, 2)  # (N, C, k, k, Ho, Wo)
    dxp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)
    for i in range(k):
        for j in range(k):
            dxp[:, :, i:i + ho, j:j + wo] += cols6[:, :, i, j]
    return np.ascontiguousarray(dxp[:, :, pad:pad + h, pad:pad + w])


def conv2d_forward(x, w, b, mode, relu=False):
    """Stride-1 convolution (cross-correlation, as in Torch): im2col, then one GEMM.

    x: (N, C_in, H, W); w: (C_out, C_in, k, k), k odd for 'same'; b: (C_out,).
    mode 'same' pads by k // 2 (G's convolutions), 'valid' does not pad (D's).
    relu=True: the ReLU that follows the layer, applied here (relu_forward), and its gradient
    taken by conv2d_backward (the GPU backend does it in the launch that adds the bias).
    -> out: (N, C_out, Ho, Wo), Ho = H + 2 pad - k + 1 (= H for 'same', H - k + 1 for 'valid'),
       cache: (x, w, pad, the ReLU's cache or None).

        cols = im2col(x)                    (N*Ho*Wo, C_in*k*k)
        out  = cols @ W^T + b               (N*Ho*Wo, C_out), W = w as (C_out, C_in*k*k)
    """
    pad = conv_check(x.shape, w.shape, mode)
    n, _, h, wd = x.shape
    c_out, _, k, _ = w.shape
    ho, wo = conv_output_size(h, wd, k, mode)
    rows = im2col(x, k, pad) @ w.reshape(c_out, -1).T + b              # (N*Ho*Wo, C_out)
    out = np.ascontiguousarray(rows.reshape(n, ho, wo, c_out).transpose(0, 3, 1, 2))
    relu_cache = None
    if relu:
        out, relu_cache = relu_forward(out)
    return out, (x, w, pad, relu_cache)   # the backward unfolds x again: one layer's columns in memory at a time


def conv2d_backward(dout, cache, need_dx=True, need_dw=True, dx_from=0):
    """dout: (N, C_out, Ho, Wo) -> dx (N, C_in - dx_from, H, W) or None, dw (C_out, C_in, k, k) or
    None, db (C_out,) or None.

        D    = dout as (N*Ho*Wo, C_out)
        dW   = D^T @ im2col(x)                       one GEMM
        db   = column sums of D
        dx   = col2im(D @ W)                         one GEMM, then the windows added back

    Gradients nobody needs can be skipped: need_dx=False gives no dx (an input that is all data);
    dx_from > 0 gives dx for the input channels dx_from: only (the channels before them are data);
    need_dw=False gives neither dw nor db (parameters held fixed). A forward with relu=True:
    dout is first taken back through the ReLU.
    """
    x, w, pad, relu_cache = cache
    if relu_cache is not None:
        dout = relu_backward(dout, relu_cache)
    n, c_in, h, wd = x.shape
    c_out, _, k, _ = w.shape
    check_dx_from(dx_from, c_in)
    d_rows = dout.transpose(0, 2, 3, 1).reshape(-1, c_out)             # (N*Ho*Wo, C_out)
    dx = dw = db = None
    if need_dw:
        dw = (d_rows.T @ im2col(x, k, pad)).reshape(w.shape)
        db = d_rows.sum(axis=0)
    if need_dx:
        w_rows = w[:, dx_from:].reshape(c_out, -1)                      # (C_out, (C_in - dx_from)*k*k)
        dx = col2im(d_rows @ w_rows, (n, c_in - dx_from, h, wd), k, pad)
    return dx, dw, db


# --------------------------------------------------------------------------- fully connected
def fc_forward(x, w, b, relu=False):
    """x: (N, D_in); w: (D_out, D_in); b: (D_out,) -> out: (N, D_out) = x w^T + b,
    cache: (x, w, the ReLU's cache or None). relu=True: the ReLU that follows, as conv2d_forward."""
    _check_rank(x, 2, "fc")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"fc: x has {x.shape[1]} features but the weight expects {w.shape[1]}")
    out, relu_cache = x @ w.T + b, None
    if relu:
        out, relu_cache = relu_forward(out)
    return out, (x, w, relu_cache)


def fc_backward(dout, cache, need_dw=True):
    """dout: (N, D_out) -> dx (N, D_in) = dout w, dw (D_out, D_in) = dout^T x, db (D_out,)
    (dout first taken back through the ReLU of a forward with relu=True).

    need_dw=False skips the parameter gradients (dw and db None: parameters held fixed)."""
    x, w, relu_cache = cache
    if relu_cache is not None:
        dout = relu_backward(dout, relu_cache)
    if not need_dw:
        return dout @ w, None, None
    return dout @ w, dout.T @ x, dout.sum(axis=0)


# --------------------------------------------------------------------------- activations
def relu_forward(x):
    """Any shape. The gradient at exactly 0 is taken as 0."""
    mask = x > 0
    return x * mask, mask


def relu_backward(dout, cache):
    return dout * cache


def tanh_forward(x):
    out = np.tanh(x)
    return out, out


def tanh_backward(dout, cache):
    return dout * (1 - cache * cache)


def sigmoid_forward(x):
    # exp of a non-positive number only: no overflow for any x
    e = np.exp(-np.abs(x))
    out = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
    return out, out


def sigmoid_backward(dout, cache):
    return dout * cache * (1 - cache)


# --------------------------------------------------------------------------- resampling
def avgpool_forward(x, f):
    """SPEC's d_k: average over f x f blocks. x: (N, C, H, W), H and W divisible by f -> (N, C, H/f, W/f)."""
    _check_rank(x, 4, "avgpool")
    n, c, h, w = x.shape
    if h % f or w % f:
        raise ValueError(f"avgpool by {f}: the sides {h}x{w} must divide by {f}")
    return x.reshape(n, c, h // f, f, w // f, f).mean(axis=(3, 5)), (x.shape, f)


def avgpool_backward(dout, cache):
    (n, c, h, w), f = cache
    d = np.broadcast_to(dout[:, :, :, None, :, None] / (f * f), (n, c, h // f, f, w // f, f))
    return d.reshape(n, c, h, w)


def upsample_forward(x, f):
    """SPEC's u_k: nearest-neighbour upscaling by f. x: (N, C, H, W) -> (N, C, H f, W f)."""
    _check_rank(x, 4, "upsample")
    n, c, h, w = x.shape
    out = np.broadcast_to(x[:, :, :, None, :, None], (n, c, h, f, w, f)).reshape(n, c, h * f, w * f)
    return out, f


def upsample_backward(dout, cache):
    f = cache
    n, c, h, w = dout.shape
    return dout.reshape(n, c, h // f, f, w // f, f).sum(axis=(3, 5))


def maxpool2_forward(x):
    """2x2 max pooling, stride 2 (D's scale 4). x: (N, C, H, W) -> (N, C, H//2, W//2).

    An odd last row or column is dropped, as in Torch. On a tie the gradient goes to the
    first maximal input of the window in row-major order (argmax's choice).
    """
    _check_rank(x, 4, "maxpool2")
    n, c, h, w = x.shape
    if h < 2 or w < 2:
        raise ValueError(f"maxpool2: input {h}x{w} is smaller than the 2x2 window")
    ho, wo = h // 2, w // 2
    blocks = x[:, :, :2 * ho, :2 * wo].reshape(n, c, ho, 2, wo, 2).transpose(0, 1, 2, 4, 3, 5)
    blocks = blocks.reshape(n, c, ho, wo, 4)
    arg = blocks.argmax(axis=4)
    out = np.take_along_axis(blocks, arg[..., None], axis=4)[..., 0]
    return out, (x.shape, arg)


def maxpool2_backward(dout, cache):
    (n, c, h, w), arg = cache
    ho, wo = h // 2, w // 2
    onehot = (arg[..., None] == np.arange(4)) * dout[..., None]  # (N, C, Ho, Wo, 4)
    dx = np.zeros((n, c, h, w), dtype=dout.dtype)
    dx[:, :, :2 * ho, :2 * wo] = onehot.reshape(n, c, ho, wo, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(
        n, c, 2 * ho, 2 * wo)
    return dx


# --------------------------------------------------------------------------- plumbing
def concat_forward(xs):
    """Channel concatenation, history first (SPEC). xs: list of (N, C_i, H, W) -> (N, sum C_i, H, W)."""
    return np.concatenate(xs, axis=1), [x.shape[1] for x in xs]


def concat_backward(dout, cache):
    """-> list of dx_i (N, C_i, H, W), the split of dout."""
    return np.split(dout, np.cumsum(cache)[:-1], axis=1)


def flatten_forward(x):
    """(N, C, H, W) -> (N, C*H*W), C order (SPEC's checkpoint layout for D's first fc)."""
    return x.reshape(x.shape[0], -1), x.shape


def flatten_backward(dout, cache):
    return dout.reshape(cache)


# --------------------------------------------------------------------------- losses
def _check_pair(pred, target, what):
    if pred.shape != target.shape:
        raise ValueError(f"{what}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")


def lp_loss(pred, target, p):
    """SPEC's L_p = mean |pred - target|^p, p in {1, 2}. -> (loss, dpred).

    For p = 1 the gradient at pred == target is taken as 0.
    """
    _check_pair(pred, target, "lp_loss")
    d = pred - target
    if p == 1:
        return np.abs(d).mean(), np.sign(d) / d.size
    if p == 2:
        return (d * d).mean(), 2 * d / d.size
    raise ValueError(f"lp_loss: p must be 1 or 2, got {p}")


def gdl_loss(pred, target, alpha):
    """The gradient difference loss (paper section 3, SPEC). pred, target: (N, C, H, W).

    L = mean over vertical neighbour pairs of | |Y_ij - Y_(i-1)j| - |P_ij - P_(i-1)j| |^alpha
      + the same mean over horizontal pairs; alpha in {1, 2}. A side of 1 has no pairs and
    adds nothing. -> (loss, dpred). Kinks (|.| at 0) take the gradient 0.
    """
    _check_pair(pred, target, "gdl_loss")
    if alpha not in (1, 2):
        raise ValueError(f"gdl_loss: alpha must be 1 or 2, got {alpha}")
    loss = 0.0
    dpred = np.zeros_like(pred)
    for axis in (2, 3):                                   # vertical pairs, then horizontal
        if pred.shape[axis] < 2:
            continue
        gp = np.diff(pred, axis=axis)                     # P_i - P_(i-1)
        r = np.abs(np.diff(target, axis=axis)) - np.abs(gp)
        loss += (np.abs(r) ** alpha).mean()
        dr = (np.sign(r) if alpha == 1 else 2 * r) / r.size
        dgp = -dr * np.sign(gp)
        lo = [slice(None)] * 4
        hi = [slice(None)] * 4
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        dpred[tuple(hi)] += dgp
        dpred[tuple(lo)] -= dgp
    return loss, dpred


def bce_logits_loss(logits, target):
    """SPEC's L_bce(sigmoid(z), t) = -(t log p + (1 - t) log(1 - p)), mean over the batch,
    computed from the pre-sigmoid z as max(z, 0) - z t + log(1 + exp(-|z|)), so it is finite
    for any z. logits: (N, 1); target: a scalar 0 or 1 or an array like logits.
    -> (loss, dlogits), dlogits = (sigmoid(z) - t) / N.
    """
    t = np.broadcast_to(np.asarray(target, dtype=logits.dtype), logits.shape)
    loss = (np.maximum(logits, 0) - logits * t + np.log1p(np.exp(-np.abs(logits)))).mean()
    prob, _ = sigmoid_forward(logits)
    return loss, (prob - t) / logits.size


# --------------------------------------------------------------------------- optimiser
def sgd_update(w, g, lr):
    """One plain SGD step (Algorithm 1) on one tensor, in place on w: w <- w - lr g.
    w, g: arrays of one shape."""
    if w.shape != g.shape:
        raise ValueError(f"sgd_update: shapes differ: w {w.shape}, g {g.shape}")
    w -= lr * g


def adam_update(w, g, m, v, lr, beta1, beta2, eps, t):
    """One Adam step (Kingma & Ba 2015, Algorithm 1) on one tensor, in place on w, m and v.
    w, g, m, v: arrays of one shape; t: the step number, from 1.
        m <- beta1 m + (1 - beta1) g
        v <- beta2 v + (1 - beta2) g^2
        w <- w - lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
    """
    if not (w.shape == g.shape == m.shape == v.shape):
        raise ValueError(f"adam_update: shapes differ: w {w.shape}, g {g.shape}, m {m.shape}, v {v.shape}")
    if t < 1:
        raise ValueError(f"adam_update: the step number t counts from 1, got {t}")
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    m_hat = m / (1 - beta1 ** t)
    v_hat = v / (1 - beta2 ** t)
    w -= (lr * m_hat / (np.sqrt(v_hat) + eps)).astype(w.dtype)


def sgd_update_many(ws, gs, lr):
    """sgd_update on every pair of the lists ws and gs (a network's parameters and gradients).
    The GPU backend updates them all in one kernel launch; here, one tensor after the other."""
    if len(ws) != len(gs):
        raise ValueError(f"sgd_update_many: {len(ws)} tensors but {len(gs)} gradients")
    for w, g in zip(ws, gs):
        sgd_update(w, g, lr)


def adam_update_many(ws, gs, ms, vs, lr, beta1, beta2, eps, t):
    """adam_update on every (w, g, m, v) of the lists ws, gs, ms, vs, all at step t (see sgd_update_many)."""
    if not len(ws) == len(gs) == len(ms) == len(vs):
        raise ValueError(f"adam_update_many: {len(ws)} tensors, {len(gs)} gradients, {len(ms)} and {len(vs)} moments")
    for w, g, m, v in zip(ws, gs, ms, vs):
        adam_update(w, g, m, v, lr, beta1, beta2, eps, t)


def ema_update_many(avgs, ws, beta):
    """Temporal averaging of the weights (Kingma & Ba 2015, section 7.2), in place on every avg of
    the list avgs: avg <- beta avg + (1 - beta) w, for the pairs of avgs and ws (arrays of one shape)."""
    if len(avgs) != len(ws):
        raise ValueError(f"ema_update_many: {len(avgs)} averages but {len(ws)} tensors")
    for avg, w in zip(avgs, ws):
        if avg.shape != w.shape:
            raise ValueError(f"ema_update_many: shapes differ: average {avg.shape}, w {w.shape}")
        avg *= beta
        avg += (1 - beta) * w


# --------------------------------------------------------------------------- backend plumbing
def asarray(a, dtype=None):
    """Host array -> this backend's array."""
    return np.asarray(a, dtype=dtype)


def to_host(a):
    """This backend's array -> NumPy array."""
    return np.asarray(a)
