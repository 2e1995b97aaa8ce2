"""bench.py (`train_min.py --bench N`) and the speed paths it measures: the analytic work against
SPEC's numbers, the bench line, the timing wrappers restored, and the shortcuts of the training
step (parameter gradients skipped in G's step, input gradients only for the channels that need
them, the thin-output convolution, the threaded copies, float32 throughout) giving what the plain
computation gives."""
import re

import numpy as np
import pytest

import bench
import emulator
import framepred as fp
import train_min
from kernels import fast_cpu as ops, numpy_ops as ref

CPU_BACKENDS = [pytest.param(ops, id="fast_cpu"), pytest.param(ref, id="reference")]

SUMS = dict(atol=1e-4, rtol=1e-4)       # float32 GEMMs, as in test_cuda_emul
LINE = re.compile(r"^bench: ms_per_step=[\d.]+ gflop_per_step=[\d.]+ gflops=[\d.]+ "
                  r"sgemm_gflops=[\d.]+ ratio=[\d.]+ peak_rss_mib=\d+( processes=(\d+))?$")


# --------------------------------------------------------------------------- analytic work
def test_analytic_work_matches_spec():
    """SPEC: G's forward is 9.33 G multiply-adds per 32x32 sample, D's four scales 1.88 G."""
    config = fp.make_config(loss="adv_gdl")
    assert bench.forward_macs(config, "G") / 1e9 == pytest.approx(9.33, abs=0.005)
    assert bench.forward_macs(config, "D") / 1e9 == pytest.approx(1.88, abs=0.005)
    lean, label = bench.analytic_gflop(config, 8)
    assert "D weight grads in G step: no" in label and "needed channels only" in label
    # computing D's weight gradients in the G step costs one more D forward's worth per sample
    with_dw = 2 * bench.step_macs(config, 8, True, "needed") / 1e9
    assert with_dw - lean == pytest.approx(2 * 8 * bench.forward_macs(config, "D") / 1e9)
    # without the adversarial term: G forward and backward only (dw everywhere, dx but the first)
    l2 = fp.make_config(loss="l2")
    g_fwd, g_dw = bench.forward_macs(l2, "G"), bench.backward_macs(l2, "G", inputs=False)
    assert g_dw == g_fwd
    assert bench.analytic_gflop(l2, 4)[0] > 2 * 4 * 2 * g_fwd / 1e9


# --------------------------------------------------------------------------- the bench itself
def test_run_bench_line_and_restores(capsys):
    config = fp.make_config(m=4, n=1, patch=32, width=1 / 4, loss="adv_gdl")
    params = fp.init_params(config)
    rng = np.random.default_rng(0)

    def next_batch():
        return (rng.uniform(-1, 1, (2, 12, 32, 32)).astype(np.float32),
                rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32))

    originals = {name: getattr(fp, name) for name in bench.MODEL_PHASES}
    gemm, unfold = ops._gemm, ops._unfold
    assert bench.run_bench(ops, params, config, next_batch, 2, sgemm_shape=(256, 256, 256)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert LINE.match(lines[-1]), lines[-1]
    assert sum(line.startswith("bench:") for line in lines) == 1
    for phase in bench.PHASES + ["total"]:
        assert any(line.startswith(phase) for line in lines), phase
    work = next(line for line in lines if line.startswith("work:"))
    analytic, counted = (float(v) for v in re.findall(r"analytic ([\d.]+) .* counted ([\d.]+)", work)[0])
    border = float(re.findall(r"([\d.]+) of them on the padded borders", work)[0])
    assert border > 0                     # at width 1/4 the taps path is taken by G's last layer (32 -> 3 channels)
    # the GEMMs do what the analytic model says, plus the padded border pixels that the taps path multiplies
    assert counted - border == pytest.approx(analytic, rel=0.005)
    assert "out of date" not in work
    assert {name: getattr(fp, name) for name in bench.MODEL_PHASES} == originals
    assert ops._gemm is gemm and ops._unfold is unfold


@pytest.mark.parametrize("device, processes", [("cpu", "1"), ("cpu", "2"), ("reference", "0")])
def test_train_min_bench_flag(capsys, device, processes):
    code = train_min.main(["--bench", "1", "--width", "0.03125", "--batch", "2", "--device", device,
                           "--processes", processes])
    assert code == 0
    out = capsys.readouterr().out
    line = LINE.match(out.strip().splitlines()[-1])
    assert line and f"backend {device}" in out
    if processes == "2":       # the group timed after the table, and the line gives its figure
        assert line.group(2) == "2" and "2 worker processes of one core each, 1 iteration after" in out
    else:                      # one process ('0' on the reference backend means one too)
        assert line.group(1) is None and "worker processes" not in out


# --------------------------------------------------------------------------- the speed paths
@pytest.mark.parametrize("ops", CPU_BACKENDS)
@pytest.mark.parametrize("mode, k", [("same", 3), ("same", 5), ("valid", 3), ("valid", 5)])
def test_conv_backward_skips_agree_with_the_full_backward(mode, k, ops):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((2, 6, 9, 9))
    w = rng.standard_normal((4, 6, k, k))
    out, cache = ops.conv2d_forward(x, w, rng.standard_normal(4), mode)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = ops.conv2d_backward(dout, cache)
    dx_only, no_dw, no_db = ops.conv2d_backward(dout, cache, need_dw=False)
    assert no_dw is None and no_db is None
    np.testing.assert_allclose(dx_only, dx, rtol=1e-12, atol=1e-12)
    dx_tail, dw2, db2 = ops.conv2d_backward(dout, cache, dx_from=4)
    np.testing.assert_allclose(dx_tail, dx[:, 4:], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw2, dw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db2, db, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="dx_from"):
        ops.conv2d_backward(dout, cache, dx_from=6)


@pytest.mark.parametrize("ops", CPU_BACKENDS)
def test_fc_backward_need_dw_false(ops):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 7)), rng.standard_normal((5, 7))
    _, cache = ops.fc_forward(x, w, np.zeros(5))
    dout = rng.standard_normal((3, 5))
    dx, _, _ = ops.fc_backward(dout, cache)
    dx2, dw, db = ops.fc_backward(dout, cache, need_dw=False)
    assert dw is None and db is None
    np.testing.assert_array_equal(dx2, dx)


def test_cuda_backward_skips_match_numpy():
    """The same keywords on the CUDA backend (emulated), against numpy_ops."""
    ops = ref
    if emulator.find_compiler() is None:
        pytest.skip("emulation needs a C++ compiler")
    gpu = emulator.emulated_backend(32, 3)
    rng = np.random.default_rng(1)
    for mode in ("same", "valid"):
        x = rng.standard_normal((2, 5, 8, 8)).astype(np.float32)
        w = (rng.standard_normal((3, 5, 3, 3)) / 3).astype(np.float32)
        b = rng.standard_normal(3).astype(np.float32)
        out_ref, cache_ref = ops.conv2d_forward(x, w, b, mode)
        _, cache = gpu.conv2d_forward(gpu.asarray(x), gpu.asarray(w), gpu.asarray(b), mode)
        dout = rng.standard_normal(out_ref.shape).astype(np.float32)
        for kwargs in (dict(need_dw=False), dict(dx_from=2), dict(need_dw=False, dx_from=4), dict(need_dx=False)):
            got = gpu.conv2d_backward(gpu.asarray(dout), cache, **kwargs)
            want = ops.conv2d_backward(dout, cache_ref, **kwargs)
            for g, r in zip(got, want):
                assert (g is None) == (r is None), kwargs
                if r is not None:
                    np.testing.assert_allclose(gpu.to_host(g), r, **SUMS, err_msg=str(kwargs))
    x, w = rng.standard_normal((3, 7)).astype(np.float32), rng.standard_normal((5, 7)).astype(np.float32)
    _, cache = gpu.fc_forward(gpu.asarray(x), gpu.asarray(w), gpu.asarray(np.zeros(5, np.float32)))
    dout = rng.standard_normal((3, 5)).astype(np.float32)
    dx, dw, db = gpu.fc_backward(gpu.asarray(dout), cache, need_dw=False)
    assert dw is None and db is None
    np.testing.assert_allclose(gpu.to_host(dx), dout @ w, **SUMS)


@pytest.mark.parametrize("mode, k", [("same", 3), ("same", 7), ("valid", 5)])
def test_thin_output_convolution(mode, k):
    """Few output channels from many (G's last layers): the taps path, against im2col's GEMM."""
    rng = np.random.default_rng(k)
    x = rng.standard_normal((2, 64, 12, 12))
    w = rng.standard_normal((3, 64, k, k))
    b = rng.standard_normal(3)
    pad = ops.conv_check(x.shape, w.shape, mode)
    ho = 12 + 2 * pad - k + 1
    assert ops.use_taps(64, 3, (12 + 2 * pad) ** 2, ho * ho)       # the thin path is the one taken
    out, _ = ops.conv2d_forward(x, w, b, mode)
    want = (ops.im2col(x, k, pad) @ w.reshape(3, -1).T + b).reshape(2, ho, ho, 3).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


def test_threaded_copies_equal_the_serial_ones(monkeypatch):
    """_unfold and _fold split across the cores give exactly im2col's matrix and col2im's sums."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 40, 16, 16)).astype(np.float32)
    monkeypatch.setattr(ops, "_PARALLEL_MIN", 1)
    for k, pad in ((5, 2), (3, 0)):
        cols = ops._unfold(x, k, pad).copy()
        np.testing.assert_array_equal(cols, ops.im2col(x, k, pad).T)
        d = rng.standard_normal(cols.shape).astype(np.float32)
        np.testing.assert_array_equal(ops._fold(d, x.shape, k, pad), ops.col2im(np.ascontiguousarray(d.T), x.shape, k, pad))


@pytest.mark.parametrize("ops", CPU_BACKENDS)
def test_train_step_is_float32_throughout(ops):
    """Every array an op returns during an adv_gdl iteration is float32 (no float64 from Python
    scalars, targets or losses), and so are the updated parameters."""
    seen = []

    class Checked:
        def __getattr__(self, name):
            fn = getattr(ops, name)
            if not callable(fn) or name in ("asarray", "to_host"):
                return fn

            def wrapped(*args, **kwargs):
                out = fn(*args, **kwargs)
                stack = [out]
                while stack:
                    o = stack.pop()
                    if isinstance(o, (tuple, list)):
                        stack.extend(o)
                    elif isinstance(o, (np.ndarray, np.generic)) and o.dtype.kind == "f":
                        seen.append((name, o.dtype))
                return out
            return wrapped

    config = fp.make_config(m=2, n=1, patch=32, width=1 / 32, loss="adv_gdl")
    params = fp.init_params(config)
    rng = np.random.default_rng(0)
    batch = lambda: (rng.uniform(-1, 1, (2, 6, 32, 32)).astype(np.float32),
                     rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32))
    fp.train_step(Checked(), params, config, batch(), batch(), lr_g=0.04)
    assert seen and all(dtype == np.float32 for _, dtype in seen), sorted({s for s in seen if s[1] != np.float32})
    assert all(p.dtype == np.float32 for p in params.values())
