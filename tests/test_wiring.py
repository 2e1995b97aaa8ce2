"""Wiring tests: each pins one choice that a bug could change consistently in a forward pass and
its backward, where the finite-difference gradient checks of test_model.py would not see it
(eq. 1's residual, D's history input, the rho_G schedule, d_loss's targets and accuracies, the
init bound), or one that only a rare input shows (a NaN in max pooling, non-square flow fields,
d_fc in a checkpoint's architecture), or the CUDA path's gradients themselves.
"""
import copy

import numpy as np
import pytest

import emulator
import framepred as fp
import metrics
from kernels import numpy_ops as ref

SMALL = dict(m=2, n=1, patch=32, width=1 / 32)
GRAD_SEED = 3


def small_case(loss="adv_gdl", batch=2, seed=0, dtype=np.float64):
    config = fp.make_config(loss=loss, **SMALL)
    params = fp.init_params(config, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (batch, 6, 32, 32)).astype(dtype)
    Y = rng.uniform(-1, 1, (batch, 3, 32, 32)).astype(dtype)
    return config, params, X, Y


def bce(z, t):
    """Plain BCE of sigmoid(z) against t, mean over the batch (z moderate: no overflow here)."""
    p = 1 / (1 + np.exp(-z))
    return float(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p))))


def test_eq1_residual_is_added_before_the_tanh():
    """Eq. 1: Y_k = tanh(u_k(Y_(k-1)) + G'_k(concat(X_k, u_k(Y_(k-1))))), rebuilt op by op."""
    config, params, X, _ = small_case(loss="l2")
    params["G/scale1/conv4/bias"][:] = 1.5                  # Y_1 ~ 0.9: the two formulas differ
    preds, _ = fp.generator_forward(ref, params, config, X)
    prev = None
    for j, k in enumerate(config["scales"]):
        x = ref.avgpool_forward(X, 2 ** (4 - k))[0] if k < 4 else X
        if prev is not None:
            up = ref.upsample_forward(prev, 2)[0]
            x = ref.concat_forward([x, up])[0]
        n_layers = len(config["g_kernels"][j])
        for i in range(1, n_layers + 1):
            w, b = params[f"G/scale{k}/conv{i}/weight"], params[f"G/scale{k}/conv{i}/bias"]
            x = ref.conv2d_forward(x, w, b, "same")[0]
            if i < n_layers:
                x = ref.relu_forward(x)[0]
        want = np.tanh(x) if prev is None else np.tanh(x + up)
        if k == 2:
            assert np.abs(want - (np.tanh(x) + up)).max() > 0.1, "inputs too weak to tell the formulas apart"
        np.testing.assert_allclose(preds[k], want, rtol=1e-12, atol=1e-12, err_msg=f"scale {k}")
        prev = want


def test_discriminator_sees_the_history():
    """D_k's input is concat(X_k, Y_k): its logit changes when X_k changes with Y_k fixed."""
    config, params, X, Y = small_case()
    rng = np.random.default_rng(1)
    for k in config["scales"]:
        X_k, Y_k = fp.downscale(ref, X, k), fp.downscale(ref, Y, k)
        z, _ = fp.discriminator_forward(ref, params, config, X_k, Y_k, k)
        z_other, _ = fp.discriminator_forward(ref, params, config, rng.uniform(-1, 1, X_k.shape), Y_k, k)
        assert np.abs(z - z_other).max() > 1e-9 * (1 + np.abs(z).max()), f"D_{k} ignores X_{k}"  # float64


def test_lr_g_schedule_is_geometric():
    """rho_G goes from 0.04 to 0.005 geometrically (constant factor per step), not linearly."""
    assert fp.lr_g_at(0, 101) == pytest.approx(0.04, rel=1e-12)
    assert fp.lr_g_at(100, 101) == pytest.approx(0.005, rel=1e-12)
    assert fp.lr_g_at(50, 101) == pytest.approx(np.sqrt(0.04 * 0.005), rel=1e-12)
    assert fp.lr_g_at(25, 101) == pytest.approx(0.04 * (0.005 / 0.04) ** 0.25, rel=1e-12)


D_LOSSES = [pytest.param(fp.d_loss, id="d_loss"), pytest.param(fp.d_loss_batched, id="d_loss_batched")]


@pytest.mark.parametrize("d_loss", D_LOSSES)
def test_d_loss_equals_the_separate_real_and_generated_terms(d_loss):
    """d_loss = sum_k bce(D_k(X_k, Y_k), 1) + bce(D_k(X_k, Y_hat_k), 0), value and gradients, batch 2;
    and so does its 2N-batch form, d_loss_batched."""
    config, params, X, Y = small_case(batch=2)
    preds, _ = fp.generator_forward(ref, params, config, X)
    total, grads, _, _ = d_loss(ref, params, config, X, Y, preds)
    want_total, want_grads, tile_shift = 0.0, {}, 0.0
    for k in config["scales"]:
        X_k = fp.downscale(ref, X, k)
        for candidate, t in ((fp.downscale(ref, Y, k), 1.0), (preds[k], 0.0)):
            z, cache = fp.discriminator_forward(ref, params, config, X_k, candidate, k)
            want_total += bce(z, t)
            dz = (1 / (1 + np.exp(-z)) - t) / len(z)
            g, _ = fp.discriminator_backward(ref, config, dz, cache, k, need_candidate_grad=False)
            for key, value in g.items():
                want_grads[key] = want_grads.get(key, 0) + value
            tile_shift += (z[1, 0] if t else -z[0, 0]) / 2  # targets 1,0,1,0 (np.tile) add z_r2 - z_f1, halved
    assert abs(tile_shift) > 1e-6, "samples too alike to tell np.repeat's targets from np.tile's"
    assert total == pytest.approx(want_total, rel=1e-12, abs=1e-12)
    assert set(grads) == set(want_grads) == {key for key in params if key.startswith("D/")}
    for key, want in want_grads.items():
        np.testing.assert_allclose(grads[key], want, rtol=1e-10, atol=1e-12 * np.abs(want).max(), err_msg=key)


@pytest.mark.parametrize("d_loss", D_LOSSES)
def test_d_loss_accuracies_count_the_right_signs(monkeypatch, d_loss):
    """d_loss's accuracies: real counted when z > 0, generated when z < 0 (0 for neither), mean over scales."""
    config, _, X, Y = small_case(batch=4)
    logits = {1: [2, -1, 0, 3, -1, -2, -3, 0],     # real 2/4, generated 3/4
              2: [1, 1, 1, 1, 1, -1, 2, 3],        # real 4/4, generated 1/4
              3: [-1, -1, -1, 1, -1, -1, -1, -1],  # real 1/4, generated 4/4
              4: [0, 0, 0, 0, 5, 6, 7, -8]}        # real 0/4, generated 1/4
    preds = {k: fp.downscale(ref, Y, k) + 10 for k in config["scales"]}     # generated: values above 9

    def fake_forward(ops, params, config, X_k, Y_k, k):       # the logits of the 2N samples, real ones first
        z = np.array(logits[k], float)[:, None]
        if len(Y_k) == len(z):                                 # real and generated in one batch
            return z, None
        return (z[len(Y_k):] if Y_k.min() > 9 else z[:len(Y_k)]), None

    monkeypatch.setattr(fp, "discriminator_forward", fake_forward)
    monkeypatch.setattr(fp, "discriminator_backward", lambda *args, **kwargs: ({}, None))
    _, _, acc_real, acc_fake = d_loss(ref, {}, config, X, Y, preds)
    assert acc_real == pytest.approx((2 + 4 + 1 + 0) / 16, abs=1e-12)
    assert acc_fake == pytest.approx((3 + 1 + 4 + 1) / 16, abs=1e-12)


def test_cuda_maxpool2_lets_a_nan_win_like_numpy():
    """maxpool2's CUDA kernel propagates a NaN anywhere in a window (as numpy's argmax), value and gradient."""
    if emulator.find_compiler() is None:
        pytest.skip(f"emulation needs a C++ compiler: {emulator.CXX!r} is not on PATH")
    ops = emulator.emulated_backend()
    # windows (2x2, row-major q = 0..3): a NaN at q, larger numbers after it; the last has none
    x = np.zeros((1, 1, 2, 10), np.float32)
    for q in range(5):
        window = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
        if q < 4:
            window[q] = np.nan
        x[0, 0, :, 2 * q:2 * q + 2] = window.reshape(2, 2)
    out_ref, cache_ref = ref.maxpool2_forward(x)
    out, cache = ops.maxpool2_forward(ops.asarray(x))
    assert np.isnan(out_ref[0, 0, 0, :4]).all() and out_ref[0, 0, 0, 4] == 4
    np.testing.assert_array_equal(ops.to_host(out), out_ref)
    dout = np.arange(1, 6, dtype=np.float32).reshape(1, 1, 1, 5)
    np.testing.assert_array_equal(ops.to_host(ops.maxpool2_backward(ops.asarray(dout), cache)),
                                  ref.maxpool2_backward(dout, cache_ref))


def test_resize_flow_scales_x_and_y_by_their_own_factors():
    """_resize_flow: channel 0 (dx) scaled by w/fw, channel 1 (dy) by h/fh, on non-square grids."""
    flow = np.zeros((1, 2, 4, 6))
    flow[:, 0], flow[:, 1] = 1.0, -2.0
    out = metrics._resize_flow(flow, 12, 9)                # y factor 12/4 = 3, x factor 9/6 = 1.5
    assert out.shape == (1, 2, 12, 9)
    np.testing.assert_allclose(out[:, 0], 1.5, rtol=1e-12)
    np.testing.assert_allclose(out[:, 1], -6.0, rtol=1e-12)
    ramp = np.zeros((1, 2, 4, 6))
    ramp[:, 0] = np.arange(6.0)                            # dx varying along x only
    out = metrics._resize_flow(ramp, 12, 9)
    assert np.ptp(out[0, 0], axis=0).max() < 1e-12 and np.ptp(out[0, 0], axis=1).min() > 1


def test_checkpoint_differing_only_in_d_fc_is_refused(tmp_path):
    """d_fc is an architecture key: load_checkpoint refuses a checkpoint whose config differs only there."""
    expected = fp.make_config(**SMALL)
    other = copy.deepcopy(expected)
    other["d_fc"][0] = [c + 3 for c in other["d_fc"][0]]
    assert [key for key in expected if expected[key] != other[key]] == ["d_fc"]
    path = str(tmp_path / "other.npz")
    fp.save_checkpoint(path, fp.init_params(other, seed=0), other)
    fp.load_checkpoint(path)                               # a sound checkpoint in itself
    with pytest.raises(fp.CheckpointError, match="d_fc"):
        fp.load_checkpoint(path, expect_config=expected)


class KinkRecorder:
    """A backend that records the signs of every ReLU's input, in call order: relu_forward's, and
    those of the ReLUs applied by conv2d_forward and fc_forward (relu=True), which are the signs of
    their outputs (the ReLU keeps exactly the positive values)."""

    def __init__(self, ops):
        self.ops, self.signs = ops, []

    def __getattr__(self, name):
        return getattr(self.ops, name)

    def relu_forward(self, x):
        self.signs.append(self.ops.to_host(x) > 0)
        return self.ops.relu_forward(x)

    def conv2d_forward(self, x, w, b, mode, relu=False):
        return self._record(self.ops.conv2d_forward(x, w, b, mode, relu=relu), relu)

    def fc_forward(self, x, w, b, relu=False):
        return self._record(self.ops.fc_forward(x, w, b, relu=relu), relu)

    def _record(self, result, relu):
        if relu:
            self.signs.append(self.ops.to_host(result[0]) > 0)
        return result


def test_cuda_training_gradients_match_numpy():
    """Emulated CUDA vs NumPy, adv_gdl: G's gradients (adversarial term included), D's (d_loss), both losses."""
    if emulator.find_compiler() is None:
        pytest.skip(f"emulation needs a C++ compiler: {emulator.CXX!r} is not on PATH")
    config, params, X, Y = small_case(batch=2, seed=GRAD_SEED, dtype=np.float32)
    for key in params:              # He-scale weights, as test_model.py: gradients well above float32 noise
        if key.endswith("weight"):
            params[key] *= np.float32(np.sqrt(6))

    def gradients(ops):
        ops = KinkRecorder(ops)
        p = {key: ops.asarray(value.copy()) for key, value in params.items()}
        x, y = ops.asarray(X), ops.asarray(Y)
        preds, caches = fp.generator_forward(ops, p, config, x)
        terms, dpreds = fp.g_loss(ops, p, config, x, y, preds)
        grads = fp.generator_backward(ops, p, config, dpreds, caches)
        loss_d, grads_d, _, _ = fp.d_loss(ops, p, config, x, y, preds)
        grads.update(grads_d)
        for k in config["scales"]:  # GDL's kinks: the signs of |P_i - P_(i-1)| and of r
            pk, yk = ops.to_host(preds[k]), fp.downscale(ref, Y, k)
            for axis in (2, 3):
                gp = np.diff(pk, axis=axis)
                ops.signs += [gp > 0, np.abs(np.diff(yk, axis=axis)) > np.abs(gp)]
        return terms["total"], loss_d, {key: ops.to_host(g) for key, g in grads.items()}, ops.signs

    g_total, d_total, got, signs = gradients(emulator.emulated_backend())
    g_ref, d_ref, want, signs_ref = gradients(ref)
    # Where float32 rounding puts a value on the other side of a ReLU or |.| kink, the gradients
    # differ legitimately: the data must keep clear of every kink (GRAD_SEED was chosen so).
    assert all(np.array_equal(a, b) for a, b in zip(signs, signs_ref)), "backends on different sides of a kink"
    assert g_total == pytest.approx(g_ref, rel=1e-5) and d_total == pytest.approx(d_ref, rel=1e-5)
    assert set(got) == set(want) == set(params)
    for key, b in want.items():
        a = got[key].astype(np.float64)
        bad = np.abs(a - b) > 1e-4 * np.abs(b).max() + 1e-4 * np.abs(b)
        assert not bad.any(), (f"{key}: {bad.sum()} of {bad.size} differ, max |d| {np.abs(a - b).max():.3g}, "
                               f"max |ref| {np.abs(b).max():.3g}")


def test_init_params_within_and_spanning_the_torch_bound():
    """init_params: every weight and bias uniform on +-1/sqrt(fan_in) (C_in k k or D_in), spanning the bound."""
    config = fp.make_config(m=4, n=1, patch=32, width=1 / 4)
    params = fp.init_params(config, seed=5)
    for key, value in params.items():
        w = params[key.rsplit("/", 1)[0] + "/weight"]
        bound = 1 / np.sqrt(np.prod(w.shape[1:]))         # (C_out, C_in, k, k) or (D_out, D_in)
        assert value.dtype == np.float32
        assert np.abs(value).max() <= bound * (1 + 1e-6), f"{key} beyond +-{bound:.3g}"
        if value.size >= 100:
            assert value.max() > 0.9 * bound and value.min() < -0.9 * bound, f"{key} does not span +-{bound:.3g}"
