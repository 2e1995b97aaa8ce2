"""framepred.py end to end: finite-difference checks of dL_G/dtheta_G (through D's adversarial
term) and dL_D/dtheta_D, Table 1's parameter counts, training progress, checkpoints."""
import json

import numpy as np
import pytest
from hypothesis import Phase, given, settings, strategies as st

import framepred as fp
from gradcheck import check_gradients
from kernels import numpy_ops as ops

TINY = 1 / 64          # widths 2, 4, 8: every layer of Table 1 present, each a few channels
# float64, eps from 1e-6 down. The relu and |.| kinks inside whole networks (~1e5 units, GDL
# pairs, L1 pixels) cannot all be steered clear of; gradcheck.agreeing_estimate retries with a
# smaller eps when a kink in the interval moved the estimate. Rounding noise is ~1e-7 relative at eps 1e-8
# for the smallest sampled gradients; a wrong gradient gives errors of 1e-2 and more.
EPS_END_TO_END = 1e-6
TOL_END_TO_END = 1e-5
no_shrink = settings(max_examples=6, phases=[Phase.explicit, Phase.reuse, Phase.generate])


def tiny_case(loss, m, n, patch, single_scale, seed, batch=1, target="frame"):
    config = fp.make_config(m=m, n=n, patch=patch, width=TINY, loss=loss, single_scale=single_scale, target=target)
    params = fp.init_params(config, seed=seed, dtype=np.float64)
    for key in params:         # He-scale weights: Torch's init at these widths leaves gradients near
        if key.endswith("weight"):  # the rounding floor (1e-7), which would test the noise, not the code
            params[key] *= np.sqrt(6)
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (batch, 3 * m, patch, patch))
    Y = np.clip(X[:, -3:].repeat(n, axis=1) + 0.3 * rng.standard_normal((batch, 3 * n, patch, patch)), -1, 1)
    return config, params, X, Y, rng


def param_subsets(params, net):
    return {key: value for key, value in params.items() if key.startswith(net + "/")}


cases = dict(loss=st.sampled_from(sorted(fp.LOSS_PRESETS)), m=st.integers(1, 3), n=st.integers(1, 2),
             patch=st.sampled_from([32, 40]), single_scale=st.booleans(), seed=st.integers(0, 2**31))


@no_shrink
@given(**cases, target=st.sampled_from(fp.TARGETS))
def test_generator_end_to_end_grad(loss, m, n, patch, single_scale, seed, target):
    """dL_G/dtheta_G, L_G = lam_adv L_adv (through D, D fixed) + lam_lp L_p + lam_gdl L_gdl, on a
    sample of 3 entries and one random direction of every G parameter tensor; G predicting the
    frame (the paper's) or the change from the last input frame."""
    config, params, X, Y, rng = tiny_case(loss, m, n, patch, single_scale, seed, target=target)

    def loss_value():
        preds, _ = fp.generator_forward(ops, params, config, X)
        return fp.g_loss(ops, params, config, X, Y, preds)[0]["total"]

    preds, caches = fp.generator_forward(ops, params, config, X)
    _, dpreds = fp.g_loss(ops, params, config, X, Y, preds)
    grads = fp.generator_backward(ops, params, config, dpreds, caches)
    g_params = param_subsets(params, "G")
    assert set(grads) == set(g_params)
    check_gradients(loss_value, g_params, grads, 1.0, eps=EPS_END_TO_END, tol=TOL_END_TO_END, kinks=True, rng=rng, samples=3)


@no_shrink
@given(**cases)
def test_discriminator_end_to_end_grad(loss, m, n, patch, single_scale, seed):
    """dL_D/dtheta_D with G fixed, every D parameter tensor of every scale."""
    config, params, X, Y, rng = tiny_case("adv", m, n, patch, single_scale, seed)
    preds, _ = fp.generator_forward(ops, params, config, X)
    _, grads, _, _ = fp.d_loss(ops, params, config, X, Y, preds)
    d_params = param_subsets(params, "D")
    assert set(grads) == set(d_params)
    check_gradients(lambda: fp.d_loss(ops, params, config, X, Y, preds)[0], d_params, grads, 1.0,
                    eps=EPS_END_TO_END, tol=TOL_END_TO_END, kinks=True, rng=rng, samples=3)


def test_discriminator_candidate_grad():
    """D's gradient w.r.t. the candidate frames (the adversarial path into G), all entries sampled."""
    config, params, X, Y, rng = tiny_case("adv", 2, 1, 32, False, 3)
    for k in config["scales"]:
        X_k, Y_k = fp.downscale(ops, X, k), fp.downscale(ops, Y, k)
        logits, cache = fp.discriminator_forward(ops, params, config, X_k, Y_k, k)
        dlogits = rng.standard_normal(logits.shape)
        _, dY = fp.discriminator_backward(ops, config, dlogits, cache, k, need_candidate_grad=True)
        check_gradients(lambda: fp.discriminator_forward(ops, params, config, X_k, Y_k, k)[0], {"Y_k": Y_k},
                        {"Y_k": dY}, dlogits, eps=EPS_END_TO_END, tol=TOL_END_TO_END, kinks=True, rng=rng, samples=30)


def table1_counts(m, n):
    """Parameter counts straight from SPEC's Table 1: (C_in k^2 + 1) C_out per conv, (D_in + 1) D_out per fc."""
    g = [(3 * m, [128, 256, 128, 3 * n], [3, 3, 3, 3]),
         (3 * m + 3 * n, [128, 256, 128, 3 * n], [5, 3, 3, 5]),
         (3 * m + 3 * n, [128, 256, 512, 256, 128, 3 * n], [5, 3, 3, 3, 3, 5]),
         (3 * m + 3 * n, [128, 256, 512, 256, 128, 3 * n], [7, 5, 5, 5, 5, 7])]
    d = [([64], [3], [256, 512, 256, 1]),
         ([64, 128, 128], [3, 3, 3], [512, 1024, 512, 1]),
         ([128, 256, 256], [5, 5, 5], [4096, 1024, 512, 1]),
         ([128, 256, 512, 128], [7, 7, 5, 5], [4608, 1024, 512, 1])]

    def convs(c_in, maps, kernels):
        total = 0
        for c_out, k in zip(maps, kernels):
            total += (c_in * k * k + 1) * c_out
            c_in = c_out
        return total

    n_g = sum(convs(c_in, maps, ks) for c_in, maps, ks in g)
    n_d = sum(convs(3 * (m + n), maps, ks) + sum((a + 1) * b for a, b in zip(fc[:-1], fc[1:])) for maps, ks, fc in d)
    return n_g, n_d


def test_paper_parameter_counts():
    config = fp.make_config(m=4, n=1, patch=32, loss="adv_gdl")
    n_g, n_d = table1_counts(4, 1)
    assert fp.count_parameters(config, "G") == n_g == 12_569_740
    assert fp.count_parameters(config, "D") == n_d == 20_640_388
    assert fp.d_flat_sizes(config) == [256, 512, 4096, 4608]


@pytest.mark.parametrize("loss", sorted(fp.LOSS_PRESETS))
def test_training_on_fixed_batch_lowers_loss(loss):
    """Algorithm 1 on one fixed tiny batch: G's loss goes down; with the adversarial term D's too."""
    config = fp.make_config(m=2, n=1, patch=32, width=1 / 32, loss=loss)
    params = fp.init_params(config, seed=1)
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (2, 6, 32, 32)).astype(np.float32)
    Y = np.clip(X[:, -3:] + 0.2, -1, 1).astype(np.float32)
    logs = [fp.train_step(ops, params, config, (X, Y), (X, Y), lr_g=0.04) for _ in range(30)]
    first, last = logs[0], logs[-1]
    assert last["g_lp"] < 0.8 * first["g_lp"], (first, last)
    if config["lam_gdl"]:
        assert last["g_gdl"] < first["g_gdl"], (first, last)
    if config["lam_adv"]:
        assert last["d_loss"] < first["d_loss"], (first, last)


def test_checkpoint_round_trip_is_exact(tmp_path):
    config = fp.make_config(m=2, n=2, patch=32, width=TINY, loss="adv_gdl")
    params = fp.init_params(config, seed=5)
    path = tmp_path / "checkpoint.npz"
    fp.save_checkpoint(path, params, config, state={"step": 7})
    loaded, config2, state = fp.load_checkpoint(path, expect_config=config)
    assert config2 == json.loads(json.dumps(config)) and state == {"step": 7}
    assert set(loaded) == set(params)
    for key in params:
        assert loaded[key].dtype == np.float32
        np.testing.assert_array_equal(loaded[key], params[key])
    with np.load(path) as z:                       # the documented keys and layouts
        assert z["G/scale1/conv1/weight"].shape == (max(1, round(128 * TINY)), 6, 3, 3)
        assert z["D/scale4/fc1/weight"].shape[0] == max(1, round(1024 * TINY))


def test_checkpoint_mismatch_refused(tmp_path):
    config = fp.make_config(m=2, n=1, patch=32, width=TINY, loss="l2")
    path = tmp_path / "c.npz"
    fp.save_checkpoint(path, fp.init_params(config), config)
    other = fp.make_config(m=4, n=1, patch=32, width=TINY, loss="l2")
    with pytest.raises(fp.CheckpointError, match="m: checkpoint 2, expected 4"):
        fp.load_checkpoint(path, expect_config=other)
    params = fp.init_params(config)
    params["G/scale2/conv1/weight"] = params["G/scale2/conv1/weight"][:, :3]
    fp.save_checkpoint(path, params, config)
    with pytest.raises(fp.CheckpointError, match=r"G/scale2/conv1/weight is \(2, 3, 5, 5\), expected \(2, 9, 5, 5\)"):
        fp.load_checkpoint(path)
    with pytest.raises(fp.CheckpointError, match="not found"):
        fp.load_checkpoint(tmp_path / "nope.npz")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    with pytest.raises(fp.CheckpointError, match="cannot read"):
        fp.load_checkpoint(tmp_path / "garbage.npz")


def test_generator_is_fully_convolutional():
    """G trained at 32x32 runs on a 48x64 input: every scale's prediction has the input's shape / 2^(4-k)."""
    config = fp.make_config(m=4, n=1, patch=32, width=TINY, loss="l2")
    params = fp.init_params(config)
    X = np.random.default_rng(0).uniform(-1, 1, (1, 12, 48, 64)).astype(np.float32)
    preds, _ = fp.generator_forward(ops, params, config, X)
    assert {k: p.shape for k, p in preds.items()} == {1: (1, 3, 6, 8), 2: (1, 3, 12, 16), 3: (1, 3, 24, 32), 4: (1, 3, 48, 64)}
    assert np.all(np.abs(preds[4]) <= 1)


def test_generator_bad_input():
    config = fp.make_config(m=4, n=1, patch=32, width=TINY, loss="l2")
    params = fp.init_params(config)
    with pytest.raises(ValueError, match="divide by 8"):
        fp.generator_forward(ops, params, config, np.zeros((1, 12, 36, 32), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 12, H, W\)"):
        fp.generator_forward(ops, params, config, np.zeros((1, 9, 32, 32), np.float32))
    with pytest.raises(ValueError, match="too small for D"):
        fp.make_config(patch=16)


def test_lr_schedule():
    assert fp.lr_g_at(0, 100) == pytest.approx(0.04)
    assert fp.lr_g_at(99, 100) == pytest.approx(0.005)
    assert fp.lr_g_at(0, 100) > fp.lr_g_at(50, 100) > fp.lr_g_at(99, 100)


@pytest.mark.parametrize("n", [1, 2])
def test_change_target_with_zero_last_layers_copies_the_last_input(n):
    """target "change": Y_hat_k = last_k + C_k. With every G'_k's last convolution at 0 (the
    change is tanh(0) = 0 at every scale) G predicts the last input frame, downscaled, at every
    scale, n times; and generator_predict, prediction's path, agrees with generator_forward."""
    config = fp.make_config(m=3, n=n, patch=32, width=TINY, loss="l2", target="change")
    params = fp.init_params(config, seed=1, dtype=np.float64, zero_last=True)
    X = np.random.default_rng(2).uniform(-1, 1, (2, 9, 32, 32))
    preds, _ = fp.generator_forward(ops, params, config, X)
    for k in config["scales"]:
        last_k = fp.downscale(ops, X, k)[:, 6:9]
        np.testing.assert_allclose(preds[k], np.concatenate([last_k] * n, axis=1), rtol=0, atol=1e-15)
    params = fp.init_params(config, seed=1, dtype=np.float64)
    preds, _ = fp.generator_forward(ops, params, config, X)
    np.testing.assert_allclose(fp.generator_predict(ops, params, config, X), preds[4], rtol=0, atol=1e-12)
    frame = dict(config, target="frame")
    np.testing.assert_allclose(fp.generator_forward(ops, params, frame, X)[0][4],
                               preds[4] - np.concatenate([X[:, 6:9]] * n, axis=1), rtol=0, atol=1e-12)


def test_checkpoint_target(tmp_path):
    """A checkpoint saved before the target option (no key) loads as the paper's "frame"; a model
    that predicts the change is refused where one that predicts frames is expected."""
    config = fp.make_config(m=2, n=1, patch=32, width=TINY, loss="l2", target="change")
    params = fp.init_params(config, seed=0)
    fp.save_checkpoint(tmp_path / "change.npz", params, config)
    with pytest.raises(fp.CheckpointError, match="target: checkpoint 'change', expected 'frame'"):
        fp.load_checkpoint(tmp_path / "change.npz", expect_config=dict(config, target="frame"))
    old = {key: value for key, value in config.items() if key != "target"}
    fp.save_checkpoint(tmp_path / "old.npz", params, old)
    assert fp.load_checkpoint(tmp_path / "old.npz", expect_config=dict(config, target="frame"))[1]["target"] == "frame"
    old_config, _ = fp.peek_checkpoint(tmp_path / "old.npz")
    assert old_config["target"] == "frame" and "change" not in fp.describe_checkpoint(old_config, None)
    assert "G predicts the change" in fp.describe_checkpoint(*fp.peek_checkpoint(tmp_path / "change.npz"))
    with pytest.raises(ValueError, match="unknown target"):
        fp.make_config(target="difference")
