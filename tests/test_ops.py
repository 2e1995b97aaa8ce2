"""Gradient checks of every NumPy op against central finite differences (float64),
forward checks against direct loops, and clear errors for bad input.

Values are drawn from a hypothesis-drawn seed, kept away from kinks where an op has them
(relu at 0, |.| at 0, max-pool ties); the kinks' conventions are tested on purpose.
"""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from gradcheck import check_gradients
from kernels import numpy_ops as ops

batch = st.integers(1, 3)
channels = st.integers(1, 5)
side = st.integers(1, 9)
kernel = st.sampled_from([1, 3, 5, 7])
seeds = st.integers(0, 2**32 - 1)

# Tolerances on the relative error |a - n| / max(1e-8, |a| + |n|).
TOL_SMOOTH = 1e-7      # smooth ops, eps = 1e-5 (truncation ~eps^2, rounding ~1e-16/eps)
TOL_LINEAR = 1e-7      # linear / piecewise-linear ops away from kinks, eps = 1e-3: exact but for rounding


def away_from_zero(rng, shape, margin=0.1):
    x = rng.standard_normal(shape)
    return x + margin * np.sign(x) + margin * (x == 0)


# --------------------------------------------------------------------------- conv2d
def conv_case(data, mode):
    n, c_in, c_out = data.draw(batch), data.draw(channels), data.draw(channels)
    k = data.draw(kernel)
    lo = k if mode == "valid" else 1
    h, w = data.draw(st.integers(lo, 9)), data.draw(st.integers(lo, 9))
    rng = np.random.default_rng(data.draw(seeds))
    x = rng.standard_normal((n, c_in, h, w))
    wt = rng.standard_normal((c_out, c_in, k, k)) / k
    b = rng.standard_normal(c_out)
    return rng, x, wt, b


def conv2d_gradcheck(mode, data):
    rng, x, wt, b = conv_case(data, mode)
    out, cache = ops.conv2d_forward(x, wt, b, mode)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = ops.conv2d_backward(dout, cache)
    check_gradients(lambda: ops.conv2d_forward(x, wt, b, mode)[0], {"x": x, "w": wt, "b": b},
                    {"x": dx, "w": dw, "b": db}, dout, eps=1e-3, tol=TOL_LINEAR, rng=rng)


@given(data=st.data())
def test_conv2d_same_grad(data):
    conv2d_gradcheck("same", data)


@given(data=st.data())
def test_conv2d_valid_grad(data):
    conv2d_gradcheck("valid", data)


def conv2d_loops(x, w, b, mode):
    """Independent slow reference: the definition, one output pixel at a time."""
    n, c, h, wd = x.shape
    c_out, _, k, _ = w.shape
    pad = k // 2 if mode == "same" else 0
    xp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad))
    xp[:, :, pad:pad + h, pad:pad + wd] = x
    ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    out = np.zeros((n, c_out, ho, wo))
    for i in range(n):
        for o in range(c_out):
            for y in range(ho):
                for z in range(wo):
                    out[i, o, y, z] = np.sum(xp[i, :, y:y + k, z:z + k] * w[o]) + b[o]
    return out


@pytest.mark.parametrize("mode", ["same", "valid"])
@given(data=st.data())
def test_conv2d_forward_matches_loops(mode, data):
    _, x, wt, b = conv_case(data, mode)
    out, _ = ops.conv2d_forward(x, wt, b, mode)
    np.testing.assert_allclose(out, conv2d_loops(x, wt, b, mode), rtol=1e-12, atol=1e-12)


def test_conv2d_need_dx_false_skips_input_gradient():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3)), np.zeros(4)
    out, cache = ops.conv2d_forward(x, w, b, "same")
    dx, dw, db = ops.conv2d_backward(np.ones_like(out), cache, need_dx=False)
    dx_full, dw_full, _ = ops.conv2d_backward(np.ones_like(out), cache)
    assert dx is None and dx_full.shape == x.shape
    np.testing.assert_array_equal(dw, dw_full)


@pytest.mark.parametrize("x_shape, w_shape, mode, message", [
    ((1, 3, 8, 8), (4, 2, 3, 3), "same", "3 channels but the weight expects 2"),
    ((1, 3, 4, 4), (4, 3, 5, 5), "valid", "larger than the input"),
    ((1, 3, 8, 8), (4, 3, 4, 4), "same", "odd kernel"),
    ((3, 8, 8), (4, 3, 3, 3), "same", "must be (N, C, H, W)"),
    ((1, 3, 8, 8), (4, 3, 3, 3), "full", "mode must be"),
])
def test_conv2d_bad_input(x_shape, w_shape, mode, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ops.conv2d_forward(np.zeros(x_shape), np.zeros(w_shape), np.zeros(w_shape[0]), mode)


# --------------------------------------------------------------------------- fully connected
@given(n=batch, d_in=st.integers(1, 40), d_out=st.integers(1, 20), seed=seeds)
def test_fc_grad(n, d_in, d_out, seed):
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal((n, d_in)), rng.standard_normal((d_out, d_in)), rng.standard_normal(d_out)
    out, cache = ops.fc_forward(x, w, b)
    np.testing.assert_allclose(out, np.einsum("ni,oi->no", x, w) + b, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = ops.fc_backward(dout, cache)
    check_gradients(lambda: ops.fc_forward(x, w, b)[0], {"x": x, "w": w, "b": b},
                    {"x": dx, "w": dw, "b": db}, dout, eps=1e-3, tol=TOL_LINEAR, rng=rng)


@pytest.mark.parametrize("layer", ["conv_same", "conv_valid", "fc"])
@given(seed=seeds)
def test_relu_keyword_is_the_layer_then_relu(layer, seed):
    """conv2d_forward / fc_forward with relu=True give relu_forward of the layer's output, and their
    backward takes dout through relu_backward first: exactly the two ops called one after the other.
    On coarse-grid data, so that pre-activations are often exactly 0 (the kink's gradient 0)."""
    rng = np.random.default_rng(seed)
    grid = lambda *shape: rng.integers(-2, 3, shape) / 2
    if layer == "fc":
        args = (grid(3, 7), grid(4, 7), grid(4))
        forward, backward = ops.fc_forward, ops.fc_backward
    else:
        args = (grid(2, 3, 6, 6), grid(4, 3, 3, 3), grid(4), layer[5:])
        forward, backward = ops.conv2d_forward, ops.conv2d_backward
    out, cache = forward(*args, relu=True)
    plain, plain_cache = forward(*args)
    want, relu_cache = ops.relu_forward(plain)
    np.testing.assert_array_equal(out, want)
    dout = rng.standard_normal(out.shape)
    for g, g_want in zip(backward(dout, cache), backward(ops.relu_backward(dout, relu_cache), plain_cache)):
        np.testing.assert_array_equal(g, g_want)


def test_fc_bad_input():
    with pytest.raises(ValueError, match="5 features but the weight expects 4"):
        ops.fc_forward(np.zeros((2, 5)), np.zeros((3, 4)), np.zeros(3))
    with pytest.raises(ValueError, match="2-d"):
        ops.fc_forward(np.zeros((2, 1, 4)), np.zeros((3, 4)), np.zeros(3))


# --------------------------------------------------------------------------- activations
image_shape = st.tuples(batch, channels, side, side)


@given(shape=image_shape, seed=seeds)
def test_relu_grad(shape, seed):
    rng = np.random.default_rng(seed)
    x = away_from_zero(rng, shape)           # |x| >= 0.1 >> eps: no sample crosses the kink
    out, cache = ops.relu_forward(x)
    dout = rng.standard_normal(shape)
    check_gradients(lambda: ops.relu_forward(x)[0], {"x": x}, {"x": ops.relu_backward(dout, cache)},
                    dout, eps=1e-3, tol=TOL_LINEAR, rng=rng)


def test_relu_kink_takes_zero_gradient():
    out, cache = ops.relu_forward(np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(out, [0, 0, 2])
    np.testing.assert_array_equal(ops.relu_backward(np.ones(3), cache), [0, 0, 1])


def smooth_activation_gradcheck(op, shape, seed):
    fwd, bwd = getattr(ops, op + "_forward"), getattr(ops, op + "_backward")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)     # saturated inputs (|x| >> 4) have gradients below the rounding floor
    out, cache = fwd(x)
    dout = rng.standard_normal(shape)
    check_gradients(lambda: fwd(x)[0], {"x": x}, {"x": bwd(dout, cache)},
                    dout, eps=1e-5, tol=TOL_SMOOTH, rng=rng)


@given(shape=image_shape, seed=seeds)
def test_tanh_grad(shape, seed):
    smooth_activation_gradcheck("tanh", shape, seed)


@given(shape=image_shape, seed=seeds)
def test_sigmoid_grad(shape, seed):
    smooth_activation_gradcheck("sigmoid", shape, seed)


def test_sigmoid_extreme_inputs_are_finite():
    out, _ = ops.sigmoid_forward(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_array_equal(out, [0.0, 0.5, 1.0])


# --------------------------------------------------------------------------- resampling
@given(n=batch, c=channels, f=st.sampled_from([1, 2, 4, 8]), hb=st.integers(1, 3), wb=st.integers(1, 3), seed=seeds)
def test_avgpool_grad(n, c, f, hb, wb, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, hb * f, wb * f))
    out, cache = ops.avgpool_forward(x, f)
    assert out.shape == (n, c, hb, wb)
    np.testing.assert_allclose(out[0, 0, 0, 0], x[0, 0, :f, :f].mean(), rtol=1e-12)
    dout = rng.standard_normal(out.shape)
    check_gradients(lambda: ops.avgpool_forward(x, f)[0], {"x": x}, {"x": ops.avgpool_backward(dout, cache)},
                    dout, eps=1e-3, tol=TOL_LINEAR, rng=rng)


def test_avgpool_bad_input():
    with pytest.raises(ValueError, match="must divide by 4"):
        ops.avgpool_forward(np.zeros((1, 3, 6, 8)), 4)


@given(shape=image_shape, f=st.sampled_from([1, 2, 3]), seed=seeds)
def test_upsample_grad(shape, f, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    out, cache = ops.upsample_forward(x, f)
    np.testing.assert_array_equal(out, x.repeat(f, axis=2).repeat(f, axis=3))
    dout = rng.standard_normal(out.shape)
    check_gradients(lambda: ops.upsample_forward(x, f)[0], {"x": x}, {"x": ops.upsample_backward(dout, cache)},
                    dout, eps=1e-3, tol=TOL_LINEAR, rng=rng)


@given(n=batch, c=channels, h=st.integers(2, 9), w=st.integers(2, 9), seed=seeds)
def test_maxpool2_grad(n, c, h, w, seed):
    rng = np.random.default_rng(seed)
    # distinct values 0.05 apart: no tie, and no perturbation (<= 1e-3 * 6) reorders a window
    x = rng.permutation(n * c * h * w).reshape(n, c, h, w) * 0.05
    out, cache = ops.maxpool2_forward(x)
    assert out.shape == (n, c, h // 2, w // 2)
    np.testing.assert_array_equal(out[0, 0, 0, 0], x[0, 0, :2, :2].max())
    dout = rng.standard_normal(out.shape)
    check_gradients(lambda: ops.maxpool2_forward(x)[0], {"x": x}, {"x": ops.maxpool2_backward(dout, cache)},
                    dout, eps=1e-3, tol=TOL_LINEAR, rng=rng)


def test_maxpool2_tie_goes_to_first_input():
    x = np.array([[[[1.0, 3.0], [3.0, 3.0]]]])
    out, cache = ops.maxpool2_forward(x)
    np.testing.assert_array_equal(ops.maxpool2_backward(np.ones_like(out), cache), [[[[0, 1], [0, 0]]]])


def test_maxpool2_bad_input():
    with pytest.raises(ValueError, match="smaller than the 2x2 window"):
        ops.maxpool2_forward(np.zeros((1, 1, 1, 5)))


# --------------------------------------------------------------------------- plumbing
@given(n=batch, cs=st.lists(channels, min_size=1, max_size=3), h=side, w=side, seed=seeds)
def test_concat_grad(n, cs, h, w, seed):
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((n, c, h, w)) for c in cs]
    out, cache = ops.concat_forward(xs)
    dout = rng.standard_normal(out.shape)
    dxs = ops.concat_backward(dout, cache)
    check_gradients(lambda: ops.concat_forward(xs)[0], {f"x{i}": x for i, x in enumerate(xs)},
                    {f"x{i}": d for i, d in enumerate(dxs)}, dout, eps=1e-3, tol=TOL_LINEAR, rng=rng)


@given(shape=image_shape, seed=seeds)
def test_flatten_grad(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    out, cache = ops.flatten_forward(x)
    np.testing.assert_array_equal(out[0], x[0].ravel(order="C"))
    dout = rng.standard_normal(out.shape)
    check_gradients(lambda: ops.flatten_forward(x)[0], {"x": x}, {"x": ops.flatten_backward(dout, cache)},
                    dout, eps=1e-3, tol=TOL_LINEAR, rng=rng)


# --------------------------------------------------------------------------- losses
def loss_gradcheck(loss_fn, pred, target, rng, eps, tol):
    _, dpred = loss_fn(pred, target)
    return check_gradients(lambda: loss_fn(pred, target)[0], {"pred": pred}, {"pred": dpred},
                           1.0, eps=eps, tol=tol, rng=rng)


def gdl_loops(pred, target, alpha):
    """Independent slow reference of SPEC's GDL."""
    n, c, h, w = pred.shape
    vert, horiz = [], []
    for a in range(n):
        for b in range(c):
            for i in range(h):
                for j in range(w):
                    if i > 0:
                        vert.append(abs(abs(target[a, b, i, j] - target[a, b, i - 1, j])
                                        - abs(pred[a, b, i, j] - pred[a, b, i - 1, j])) ** alpha)
                    if j > 0:
                        horiz.append(abs(abs(target[a, b, i, j - 1] - target[a, b, i, j])
                                         - abs(pred[a, b, i, j - 1] - pred[a, b, i, j])) ** alpha)
    return (np.mean(vert) if vert else 0.0) + (np.mean(horiz) if horiz else 0.0)


@pytest.mark.parametrize("p", [1, 2])
@given(shape=image_shape, seed=seeds)
def test_lp_loss_grad(p, shape, seed):
    rng = np.random.default_rng(seed)
    target = rng.standard_normal(shape)
    pred = target + away_from_zero(rng, shape)          # |pred - target| >= 0.1: away from |.|'s kink
    loss, _ = ops.lp_loss(pred, target, p)
    np.testing.assert_allclose(loss, np.mean(np.abs(pred - target) ** p), rtol=1e-12)
    loss_gradcheck(lambda a, b: ops.lp_loss(a, b, p), pred, target, rng,
                   eps=1e-3 if p == 1 else 1e-5, tol=TOL_LINEAR if p == 1 else TOL_SMOOTH)


@pytest.mark.parametrize("alpha", [1, 2])
@given(shape=image_shape, seed=seeds)
def test_gdl_loss_grad(alpha, shape, seed):
    rng = np.random.default_rng(seed)
    pred, target = rng.standard_normal(shape), rng.standard_normal(shape)
    # keep |P_i - P_(i-1)| and | |Y diff| - |P diff| | away from |.|'s kinks at 0
    margins = [np.abs(np.diff(pred, axis=a)) for a in (2, 3)]
    margins += [np.abs(np.abs(np.diff(target, axis=a)) - np.abs(np.diff(pred, axis=a))) for a in (2, 3)]
    assume(min((m.min() for m in margins if m.size), default=1.0) > 1e-3)
    loss, _ = ops.gdl_loss(pred, target, alpha)
    np.testing.assert_allclose(loss, gdl_loops(pred, target, alpha), rtol=1e-12)
    loss_gradcheck(lambda a, b: ops.gdl_loss(a, b, alpha), pred, target, rng, eps=1e-5,
                   tol=TOL_LINEAR if alpha == 1 else TOL_SMOOTH)


def test_gdl_loss_zero_for_shifted_copy():
    """GDL compares gradients only: a constant offset costs nothing."""
    y = np.random.default_rng(0).standard_normal((2, 3, 5, 6))
    assert ops.gdl_loss(y + 0.7, y, 1)[0] == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("target", [0.0, 1.0])
@given(n=batch, seed=seeds)
def test_bce_logits_loss_grad(target, n, seed):
    rng = np.random.default_rng(seed)
    z = 3 * rng.standard_normal((n, 1))
    loss, _ = ops.bce_logits_loss(z, target)
    p = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(loss, np.mean(-(target * np.log(p) + (1 - target) * np.log(1 - p))), rtol=1e-10)
    loss_gradcheck(lambda a, t: ops.bce_logits_loss(a, t), z, target, rng, eps=1e-5, tol=TOL_SMOOTH)


def test_bce_logits_loss_finite_at_extreme_logits():
    z = np.array([[-100.0], [100.0]])
    for t in (0.0, 1.0):
        loss, grad = ops.bce_logits_loss(z, t)
        assert np.isfinite(loss) and np.all(np.isfinite(grad))
    loss, grad = ops.bce_logits_loss(z, 1.0)
    assert loss == pytest.approx(50.0)          # -log sigmoid(-100) = 100, averaged with ~0
    np.testing.assert_allclose(grad, [[-0.5], [0.0]], atol=1e-40)


@pytest.mark.parametrize("fn", [lambda a, b: ops.lp_loss(a, b, 2), lambda a, b: ops.gdl_loss(a, b, 1)])
def test_loss_shape_mismatch(fn):
    with pytest.raises(ValueError, match="differ"):
        fn(np.zeros((1, 3, 4, 4)), np.zeros((1, 3, 4, 5)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ops_keep_dtype(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    b = np.zeros(4, dtype)
    out, cache = ops.conv2d_forward(x, w, b, "same")
    dx, dw, db = ops.conv2d_backward(out, cache)
    assert {out.dtype, dx.dtype, dw.dtype, db.dtype} == {np.dtype(dtype)}
    assert ops.gdl_loss(x, x * 0.5, 1)[1].dtype == dtype
    assert ops.avgpool_forward(x, 2)[0].dtype == dtype
