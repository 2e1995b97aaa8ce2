"""The training changes that make short runs learn: Adam (against a slow per-element loop),
the zero-started last layers (each scale starts as eq. 1's identity on the coarse guess), G's
warm-up before D joins, the temporal average of G's weights, Adam's state in checkpoints, and the validation draw of the synthetic
videos."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import data
import framepred as fp
from kernels import numpy_ops as ops


def adam_slow(w, grads, lr, beta1, beta2, eps):
    """Adam as Kingma & Ba's Algorithm 1 reads, one scalar at a time, in Python floats."""
    w = [float(x) for x in np.ravel(w)]
    m, v = [0.0] * len(w), [0.0] * len(w)
    for t, g in enumerate(grads, 1):
        for i, gi in enumerate(np.ravel(g).tolist()):
            m[i] = beta1 * m[i] + (1 - beta1) * gi
            v[i] = beta2 * v[i] + (1 - beta2) * gi * gi
            m_hat, v_hat = m[i] / (1 - beta1 ** t), v[i] / (1 - beta2 ** t)
            w[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return np.array(w), np.array(m), np.array(v)


# rtol: of the moments and of each step's size; w_rtol: rounding w itself (up to 4 steps of 0.5 ulp)
@pytest.mark.parametrize("dtype, rtol, w_rtol", [(np.float64, 1e-12, 1e-15), (np.float32, 2e-5, 3e-7)])
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 4), size=st.integers(1, 30),
       lr=st.sampled_from([1e-3, 0.1]), betas=st.sampled_from([(0.9, 0.999), (0.5, 0.9)]))
def test_adam_update_matches_slow_loop(dtype, rtol, w_rtol, seed, steps, size, lr, betas):
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal(size)
    grads = [rng.standard_normal(size) * 10.0 ** rng.integers(-4, 2) for _ in range(steps)]
    w, m, v = w0.astype(dtype), np.zeros(size, dtype), np.zeros(size, dtype)
    for t, g in enumerate(grads, 1):
        ops.adam_update(w, g.astype(dtype), m, v, lr, *betas, 1e-8, t)
    want_w, want_m, want_v = adam_slow(w0, grads, lr, *betas, 1e-8)
    assert w.dtype == dtype
    np.testing.assert_allclose(m, want_m, rtol=rtol, atol=1e-30)
    np.testing.assert_allclose(v, want_v, rtol=rtol, atol=1e-30)
    # each step moves an element by about lr at most: errors in the steps are relative to lr
    np.testing.assert_allclose(w, want_w, rtol=w_rtol, atol=rtol * lr * steps)


def test_adam_update_refuses_bad_input():
    a = np.zeros(3)
    with pytest.raises(ValueError, match="shapes differ"):
        ops.adam_update(a, np.zeros(4), a.copy(), a.copy(), 1e-3, 0.9, 0.999, 1e-8, 1)
    with pytest.raises(ValueError, match="counts from 1"):
        ops.adam_update(a, a.copy(), a.copy(), a.copy(), 1e-3, 0.9, 0.999, 1e-8, 0)


def test_model_sgd_step_is_w_minus_lr_g_on_every_tensor():
    """framepred.sgd_update through ops.sgd_update: W <- W - lr dL/dW in place, each tensor once."""
    config = fp.make_config(m=2, n=1, patch=32, width=1 / 32, loss="adv_gdl")
    params = fp.init_params(config, seed=2, dtype=np.float64)
    rng = np.random.default_rng(3)
    grads = {key: rng.normal(size=w.shape) for key, w in params.items() if key.startswith("G/")}
    before = {key: w.copy() for key, w in params.items()}
    fp.sgd_update(params, grads, 0.04, ops)
    for key, w in params.items():
        expect = before[key] - 0.04 * grads[key] if key in grads else before[key]
        np.testing.assert_array_equal(w, expect)
    with pytest.raises(ValueError, match="shapes differ"):
        ops.sgd_update(np.zeros(3), np.zeros(4), 0.1)


def test_model_adam_steps_each_network_separately():
    """fp.adam_update moves exactly the parameters it is given gradients for, with its own t."""
    config = fp.make_config(m=2, n=1, patch=32, width=1 / 32, loss="adv_gdl")
    params = fp.init_params(config, seed=0)
    before = {k: v.copy() for k, v in params.items()}
    opt = {net: fp.adam_init(params, net) for net in ("G", "D")}
    assert set(opt["G"]["m"]) == {k for k in params if k.startswith("G/")}
    grads = {k: np.ones_like(v) for k, v in params.items() if k.startswith("G/")}
    fp.adam_update(params, grads, 1e-3, opt["G"], ops)
    assert opt["G"]["t"] == 1 and opt["D"]["t"] == 0
    for key in params:
        moved = not np.array_equal(params[key], before[key])
        assert moved == key.startswith("G/"), key
        if moved:   # first Adam step: m_hat / sqrt(v_hat) = sign(g), so W moves by lr (eps aside)
            np.testing.assert_allclose(before[key] - params[key], 1e-3, rtol=1e-4)


@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 12), beta=st.sampled_from([0.5, 0.7, 0.9, 0.998]))
def test_averaged_weights_are_the_normalised_mean_of_the_steps(seed, steps, beta):
    """Adam's temporal averaging (Kingma & Ba section 7.2), kept in G's state by fp.adam_update with
    beta_t = min(beta, (1 + t) / (10 + t)) after step t: averaged_weights gives
    sum_i c_i W_i / sum_i c_i, c_i = (1 - beta_i) prod_(j > i) beta_j, over the weights W_i after each of
    the t steps, written out here from the iterates; D, which keeps no average, is its own."""
    config = fp.make_config(m=2, n=1, patch=32, width=1 / 32, loss="adv_gdl")
    params = fp.init_params(config, seed=0, dtype=np.float64)
    opt = {"G": fp.adam_init(params, "G", ema=beta), "D": fp.adam_init(params, "D")}
    assert "ema" not in opt["D"]
    assert fp.averaged_weights(params, opt) == params          # no step yet: the weights themselves
    rng = np.random.default_rng(seed)
    iterates = []
    for _ in range(steps):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items() if k.startswith("G/")}
        fp.adam_update(params, grads, 1e-2, opt["G"], ops)
        iterates.append({k: params[k].copy() for k in grads})
    betas = [min(beta, (1 + t) / (10 + t)) for t in range(1, steps + 1)]
    weights = [(1 - betas[i]) * np.prod(betas[i + 1:]) for i in range(steps)]
    assert opt["G"]["ema_weight"] == pytest.approx(sum(weights), rel=1e-12)
    averaged = fp.averaged_weights(params, opt)
    for key in params:
        if key.startswith("G/"):
            want = sum(c * w[key] for c, w in zip(weights, iterates)) / sum(weights)
            np.testing.assert_allclose(averaged[key], want, rtol=1e-12, atol=1e-15, err_msg=key)
            assert averaged[key] is not params[key]
        else:
            assert averaged[key] is params[key]
    assert fp.averaged_weights(params, None) == params          # SGD: no state


def test_average_beta_grows_to_its_largest():
    """beta_t = min(beta, (1 + t) / (10 + t)): about the last tenth of the steps early in a run, the
    largest beta (0.998: the last ~500 steps) from t = 4,490 on."""
    assert fp.ema_beta_at(0.998, 1) == pytest.approx(2 / 11)
    assert fp.ema_beta_at(0.998, 990) == pytest.approx(0.991)
    assert fp.ema_beta_at(0.998, 4480) < 0.998 == fp.ema_beta_at(0.998, 4491) == fp.ema_beta_at(0.998, 10**6)
    assert fp.ema_beta_at(0.5, 8) == pytest.approx(0.5) and fp.ema_beta_at(0.5, 100) == 0.5


def test_ema_update_many_refuses_bad_input():
    with pytest.raises(ValueError, match="1 averages but 2 tensors"):
        ops.ema_update_many([np.zeros(3)], [np.zeros(3), np.zeros(3)], 0.9)
    with pytest.raises(ValueError, match="shapes differ"):
        ops.ema_update_many([np.zeros(3)], [np.zeros(4)], 0.9)


def test_zero_last_init_starts_each_scale_as_the_coarse_guess():
    """Eq. 1 with G'_k's last convolution at 0: Y_hat_1 = tanh(0) = 0 and, for k > 1,
    Y_hat_k = tanh(u_k(Y_hat_(k-1))); every other layer keeps Torch's initialisation."""
    config = fp.make_config(m=2, n=1, patch=32, width=1 / 16, loss="l2")
    torch = fp.init_params(config, seed=4)
    zero = fp.init_params(config, seed=4, zero_last=True)
    last = {f"G/scale{k}/conv{len(config['g_kernels'][j])}" for j, k in enumerate(config["scales"])}
    for key in torch:
        if key.rsplit("/", 1)[0] in last:
            assert not zero[key].any(), key
        else:
            np.testing.assert_array_equal(zero[key], torch[key], err_msg=key)
    X = np.random.default_rng(0).uniform(-1, 1, (2, 6, 32, 32)).astype(np.float32)
    preds, _ = fp.generator_forward(ops, zero, config, X)
    assert not preds[1].any()
    for k in (2, 3, 4):
        np.testing.assert_allclose(preds[k], np.tanh(ops.upsample_forward(preds[k - 1], 2)[0]), atol=1e-7)
    # and the stacks still learn from there: one step moves the last layers off zero
    _, caches = fp.generator_forward(ops, zero, config, X)
    Y = np.full((2, 3, 32, 32), 0.5, np.float32)
    _, dpreds = fp.g_loss(ops, zero, config, X, Y, preds)
    grads = fp.generator_backward(ops, zero, config, dpreds, caches)
    assert all(np.abs(grads[f"{key}/weight"]).max() > 0 for key in last)


@pytest.mark.parametrize("loss", ["gdl_l1", "adv_gdl"])
def test_adam_training_on_fixed_batch_lowers_every_loss(loss):
    """Algorithm 1 with Adam and the zero-started last layers on one fixed tiny batch: l_p, GDL
    and (adversarial) D's loss all go down."""
    config = fp.make_config(m=2, n=1, patch=32, width=1 / 32, loss=loss)
    params = fp.init_params(config, seed=1, zero_last=True)
    opt = {net: fp.adam_init(params, net) for net in ("G", "D")}
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (2, 6, 32, 32)).astype(np.float32)
    Y = np.clip(X[:, -3:] + 0.2, -1, 1).astype(np.float32)
    logs = [fp.train_step(ops, params, config, (X, Y), (X, Y), lr_g=3e-3, lr_d=1e-3, opt=opt) for _ in range(30)]
    first, last = logs[0], logs[-1]
    assert last["g_lp"] < 0.8 * first["g_lp"], (first, last)
    assert last["g_gdl"] < first["g_gdl"], (first, last)
    if config["lam_adv"]:
        assert last["d_loss"] < first["d_loss"], (first, last)
    assert opt["G"]["t"] == 30 and opt["D"]["t"] == (30 if config["lam_adv"] else 0)


def test_warmup_step_leaves_d_alone():
    """adversarial=False: no D step, no adversarial term, D's parameters untouched."""
    config = fp.make_config(m=2, n=1, patch=32, width=1 / 32, loss="adv_gdl")
    params = fp.init_params(config, seed=2)
    before = {k: v.copy() for k, v in params.items()}
    rng = np.random.default_rng(1)
    batch = (rng.uniform(-1, 1, (2, 6, 32, 32)).astype(np.float32), rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32))
    log = fp.train_step(ops, params, config, batch, batch, lr_g=0.04, adversarial=False)
    assert "d_loss" not in log and log["g_adv"] == 0.0
    assert log["g_total"] == pytest.approx(log["g_lp"] + log["g_gdl"])
    for key in params:
        if key.startswith("D/"):
            assert np.array_equal(params[key], before[key]), key
    assert not np.array_equal(params["G/scale4/conv6/weight"], before["G/scale4/conv6/weight"])
    log = fp.train_step(ops, params, config, batch, batch, lr_g=0.04)
    assert "d_loss" in log and log["g_adv"] > 0
    assert not np.array_equal(params["D/scale1/fc1/weight"], before["D/scale1/fc1/weight"])


def test_d_can_train_during_g_warmup():
    """adversarial=False, train_d=True: D takes its step, but G's loss has no adversarial term, so
    G's step equals the one of a run without D at all."""
    config = fp.make_config(m=2, n=1, patch=32, width=1 / 32, loss="adv_gdl")
    rng = np.random.default_rng(3)
    batch = (rng.uniform(-1, 1, (2, 6, 32, 32)).astype(np.float32), rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32))
    with_d, without_d = fp.init_params(config, seed=4), fp.init_params(config, seed=4)
    log = fp.train_step(ops, with_d, config, batch, batch, lr_g=0.04, adversarial=False, train_d=True)
    fp.train_step(ops, without_d, config, None, batch, lr_g=0.04, adversarial=False)
    assert "d_loss" in log and log["g_adv"] == 0.0
    assert log["g_total"] == pytest.approx(log["g_lp"] + log["g_gdl"])
    for key in with_d:
        same = np.array_equal(with_d[key], without_d[key])
        assert same == key.startswith("G/"), key       # G's step unchanged, every D tensor moved


def test_checkpoint_keeps_adam_state_exactly(tmp_path):
    config = fp.make_config(m=2, n=1, patch=32, width=1 / 32, loss="adv_gdl")
    params = fp.init_params(config, seed=0)
    rng = np.random.default_rng(0)
    opt = {"G": fp.adam_init(params, "G", ema=0.998), "D": fp.adam_init(params, "D")}
    for net, t in (("G", 7), ("D", 3)):
        opt[net]["t"] = t
        for moment in fp.OPTIMIZER_ARRAYS[:2 + (net == "G")]:
            for key in opt[net][moment]:
                opt[net][moment][key] = rng.standard_normal(params[key].shape).astype(np.float32) ** 2
    path = str(tmp_path / "c.npz")
    opt["G"]["ema_weight"] = 0.123456789012345
    fp.save_checkpoint(path, params, config, {"step": 5}, opt)
    loaded, _, state = fp.load_checkpoint(path)
    assert set(loaded) == set(params)
    saved = state["optimizer"]
    assert saved["G"]["t"] == 7 and saved["D"]["t"] == 3
    assert saved["G"]["ema_beta"] == 0.998 and "ema" not in saved["D"] and "ema_beta" not in saved["D"]
    assert saved["G"]["ema_weight"] == 0.123456789012345 and "ema_weight" not in saved["D"]
    for net in ("G", "D"):
        for moment in fp.OPTIMIZER_ARRAYS[:2 + (net == "G")]:
            assert set(saved[net][moment]) == set(opt[net][moment])
            for key, value in opt[net][moment].items():
                np.testing.assert_array_equal(saved[net][moment][key], value)
    fp.save_checkpoint(path, params, config, {"step": 5})           # SGD: no optimizer arrays
    assert "optimizer" not in fp.load_checkpoint(path)[2]


def test_checkpoint_saved_before_the_growing_beta_reads_its_constant_beta(tmp_path):
    """Runs saved before stop 28 kept no "ema_weight": their beta was constant, so the total weight
    of their average is 1 - beta^t, and their averaged G reads as it did."""
    config = fp.make_config(m=2, n=1, patch=32, width=1 / 32, loss="l2")
    params = fp.init_params(config, seed=0)
    opt = {"G": fp.adam_init(params, "G", ema=0.9), "D": fp.adam_init(params, "D")}
    opt["G"]["t"] = 3
    opt["G"]["ema"] = {key: np.full_like(params[key], 0.271) for key in opt["G"]["ema"]}
    path = str(tmp_path / "c.npz")
    fp.save_checkpoint(path, params, config, {"step": 3}, opt)
    with np.load(path) as f:
        arrays = {key: f[key] for key in f.files if key != "optimizer/G/ema_weight"}
    np.savez(path, **arrays)
    _, _, state = fp.load_checkpoint(path)
    assert state["optimizer"]["G"]["ema_weight"] == pytest.approx(1 - 0.9 ** 3)
    model = fp.checkpoint_weights(params, state)
    key = next(iter(opt["G"]["ema"]))
    np.testing.assert_allclose(model[key], 0.271 / (1 - 0.9 ** 3), rtol=1e-6)


def test_synthetic_validation_draw_differs_from_test():
    source = data.SyntheticVideos(seed=0)
    test, val = source.test_clips(3, 5), source.test_clips(3, 5, split="val")
    assert test.shape == val.shape
    assert not np.allclose(test, val)
    np.testing.assert_array_equal(val, source.test_clips(3, 5, split="val"))      # fixed
    with pytest.raises(data.DataError, match="split"):
        source.test_clips(1, 5, split="train")


def test_d_width_scales_only_the_discriminator():
    config = fp.make_config(width=1 / 8, d_width=1 / 4, loss="adv_gdl")
    same = fp.make_config(width=1 / 8, loss="adv_gdl")
    assert config["g_maps"] == same["g_maps"] and same["d_width"] == 1 / 8
    assert config["d_maps"][3] == [32, 64, 128, 32] and config["d_fc"][3] == [256, 128]
    assert fp.count_parameters(config, "G") == fp.count_parameters(same, "G")
    assert fp.count_parameters(config, "D") > 3 * fp.count_parameters(same, "D")


def test_read_log_reads_every_value_as_a_float():
    """train_step's log holds backend scalars (summed on the device on the GPU); read_log gives the
    same values as Python floats (on the GPU in one transfer: tests/test_gpu_path.py counts it)."""
    config = fp.make_config(m=2, n=1, patch=32, width=1 / 32, loss="adv_gdl")
    params = fp.init_params(config, seed=5)
    src = data.open_source(None, seed=0)
    rng = np.random.default_rng(0)
    log = fp.train_step(ops, params, config, src.sample(2, 2, 1, 32, rng), src.sample(2, 2, 1, 32, rng), lr_g=0.04)
    read = fp.read_log(ops, log)
    assert set(read) == set(log) and all(type(v) is float for v in read.values())
    for key, value in log.items():
        assert read[key] == pytest.approx(float(value), rel=1e-6)
    assert 0 <= read["d_acc_real"] <= 1 and read["d_loss"] > 0
