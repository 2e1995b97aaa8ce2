"""The fast CPU backend (kernels/fast_cpu.py) against the plain reference (kernels/numpy_ops.py), op by op.

fast_cpu reorganises the convolutions and the fully connected layers for speed (pixel-major and
channel-major layouts, a row unfolding, a thin-output algorithm, flipped-kernel 'same' backwards,
a scratch buffer, copies and sums split across threads); every other op is the reference's own
function. Here each reorganised op runs on hypothesis-drawn shapes, forward and backward (with
the gradient skips the model uses), in float64 and float32, against the reference, elementwise:

    |fast - ref| <= atol + rtol |ref|
    float64: atol 1e-12, rtol 1e-10 (the same sums in another order)
    float32: atol 1e-4, rtol 1e-4 (sums of up to a few thousand float32 terms, as test_cuda_emul's SUMS)

The shapes reach every forward algorithm (fast_cpu.forward_algorithm), and `threaded` draws the copies
split across the cores even for small arrays.
"""
import inspect
import json
import os

import numpy as np
import pytest
from hypothesis import given, strategies as st

from kernels import fast_cpu as fast, numpy_ops as ref

TOL = {np.float64: dict(atol=1e-12, rtol=1e-10), np.float32: dict(atol=1e-4, rtol=1e-4)}
DTYPES = [pytest.param(np.float64, id="float64"), pytest.param(np.float32, id="float32")]

seeds = st.integers(0, 2**32 - 1)


def assert_close(got, want, what, dtype):
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert got.dtype == want.dtype == dtype, f"{what}: dtype {got.dtype}, reference {want.dtype}, expected {dtype}"
    atol, rtol = TOL[dtype]["atol"], TOL[dtype]["rtol"]
    err = np.abs(got.astype(np.float64) - want)
    bad = ~(err <= atol + rtol * np.abs(want))          # NaN counts as bad
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err, -1)), bad.shape)
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} elements beyond |d| <= {atol} + {rtol}|ref|; "
                             f"e.g. at {tuple(int(j) for j in i)}: fast {got[i]!r}, ref {want[i]!r}")


class forced_algorithm:
    """Within the block, fast_cpu's convolutions take the given forward algorithm (the backward
    follows the forward's)."""

    def __init__(self, algorithm):
        self.algorithm = algorithm

    def __enter__(self):
        self.saved = fast.forward_algorithm
        fast.forward_algorithm = lambda *shape: self.algorithm

    def __exit__(self, *exc):
        fast.forward_algorithm = self.saved


class threads_for_everything:
    """Within the block, fast_cpu hands every copy to the thread pool, however small."""

    def __init__(self, on):
        self.on = on

    def __enter__(self):
        self.saved = fast._PARALLEL_MIN
        if self.on:
            fast._PARALLEL_MIN = 1

    def __exit__(self, *exc):
        fast._PARALLEL_MIN = self.saved


# --------------------------------------------------------------------------- same names, same signatures
def test_fast_backend_has_every_reference_op_with_its_signature():
    public = [name for name, fn in vars(ref).items() if inspect.isfunction(fn) and not name.startswith("_")]
    assert "conv2d_forward" in public and "adam_update" in public
    for name in public:
        assert hasattr(fast, name), f"fast_cpu lacks {name}"
        assert inspect.signature(getattr(fast, name)) == inspect.signature(getattr(ref, name)), name
    own = {name for name in public if getattr(fast, name) is not getattr(ref, name)}
    assert own == {"conv2d_forward", "conv2d_backward", "fc_forward", "fc_backward", "avgpool_forward"}, own
    assert fast.name == "cpu" and ref.name == "reference" and fast.xp is ref.xp is np


# --------------------------------------------------------------------------- conv2d
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["same", "valid"])
@given(data=st.data())
def test_fast_conv2d_matches_reference(dtype, mode, data):
    k = data.draw(st.sampled_from([1, 3, 5, 7]), label="k")
    lo = k if mode == "valid" else 1
    n = data.draw(st.integers(1, 3), label="n")
    c_in, c_out = data.draw(st.integers(1, 24), label="c_in"), data.draw(st.integers(1, 12), label="c_out")
    # every forward algorithm on every shape (the cost test picks one by the layer's size alone)
    algorithm = data.draw(st.sampled_from(["taps", "rows", "unfold"]), label="algorithm")
    h, w = data.draw(st.integers(lo, 12), label="h"), data.draw(st.integers(lo, 12), label="w")
    threaded = data.draw(st.booleans(), label="threaded")
    relu = data.draw(st.booleans(), label="relu")
    rng = np.random.default_rng(data.draw(seeds, label="seed"))
    x = rng.standard_normal((n, c_in, h, w)).astype(dtype)
    wt = (rng.standard_normal((c_out, c_in, k, k)) / (k * np.sqrt(c_in))).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    with threads_for_everything(threaded), forced_algorithm(algorithm):
        out, cache = fast.conv2d_forward(x, wt, b, mode, relu=relu)
        out_ref, cache_ref = ref.conv2d_forward(x, wt, b, mode, relu=relu)
        assert_close(out, out_ref, "conv2d out", dtype)
        dout = rng.standard_normal(out_ref.shape).astype(dtype)
        # the model's calls: everything; no dw (D held fixed); no dx (data input); dx of the channels after the data
        skips = [dict(), dict(need_dw=False), dict(need_dx=False)]
        if c_in > 1:
            skips.append(dict(dx_from=data.draw(st.integers(1, c_in - 1), label="dx_from"), need_dw=False))
        for kwargs in skips:
            got = fast.conv2d_backward(dout, cache, **kwargs)
            want = ref.conv2d_backward(dout, cache_ref, **kwargs)
            for name, g, g_ref in zip(["dx", "dw", "db"], got, want):
                assert (g is None) == (g_ref is None), f"conv2d {name} {kwargs}: fast gives {g is not None}"
                if g_ref is not None:
                    assert_close(g, g_ref, f"conv2d {name} {kwargs}", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode, c_in, c_out, k, algorithm", [
    ("same", 64, 3, 3, "taps"), ("same", 40, 3, 7, "taps"), ("valid", 48, 2, 5, "taps"),   # thin outputs
    ("same", 32, 16, 5, "rows"), ("same", 64, 32, 3, "rows"), ("valid", 64, 16, 5, "rows"),   # small widths
    ("same", 15, 16, 7, "rows"), ("same", 32, 64, 5, "rows"), ("valid", 16, 32, 7, "rows"),
    ("same", 96, 128, 5, "rows"), ("same", 8, 80, 7, "rows"),                                # wide, 5 x 5 and 7 x 7 in G
    ("same", 96, 128, 3, "unfold"), ("same", 8, 80, 3, "unfold"), ("valid", 8, 72, 7, "unfold")])    # wide, G's 3 x 3, D's
def test_fast_conv2d_cost_test_and_each_algorithm(dtype, mode, c_in, c_out, k, algorithm):
    """The cost test picks the algorithm stated; each gives the reference's results, forward and backward
    (the backward follows the forward's algorithm)."""
    rng = np.random.default_rng(c_in + k)
    x = rng.standard_normal((2, c_in, 12, 10)).astype(dtype)
    wt = (rng.standard_normal((c_out, c_in, k, k)) / (k * np.sqrt(c_in))).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    pad = ref.conv_check(x.shape, wt.shape, mode)
    ho, wo = ref.conv_output_size(12, 10, k, mode)
    assert fast.forward_algorithm(c_in, c_out, (12 + 2 * pad) * (10 + 2 * pad), ho * wo, mode, k) == algorithm
    out, cache = fast.conv2d_forward(x, wt, b, mode)
    out_ref, cache_ref = ref.conv2d_forward(x, wt, b, mode)
    assert_close(out, out_ref, "conv2d out", dtype)
    dout = rng.standard_normal(out.shape).astype(dtype)
    for name, g, g_ref in zip(["dx", "dw", "db"], fast.conv2d_backward(dout, cache), ref.conv2d_backward(dout, cache_ref)):
        assert_close(g, g_ref, f"conv2d {name}", dtype)


def test_fast_conv2d_refuses_what_the_reference_refuses():
    x, w = np.zeros((1, 3, 8, 8)), np.zeros((4, 2, 3, 3))
    with pytest.raises(ValueError, match="3 channels but the weight expects 2"):
        fast.conv2d_forward(x, w, np.zeros(4), "same")
    _, cache = fast.conv2d_forward(x, np.zeros((4, 3, 3, 3)), np.zeros(4), "same")
    with pytest.raises(ValueError, match="dx_from must be in"):
        fast.conv2d_backward(np.zeros((1, 4, 8, 8)), cache, dx_from=3)


# --------------------------------------------------------------------------- average pooling
@pytest.mark.parametrize("dtype", DTYPES)
@given(n=st.integers(1, 3), c=st.integers(1, 4), f=st.sampled_from([1, 2, 4, 8]), blocks_h=st.integers(1, 4),
       blocks_w=st.integers(1, 4), seed=seeds, channel_major=st.booleans())
def test_fast_avgpool_matches_reference(dtype, n, c, f, blocks_h, blocks_w, seed, channel_major):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, f * blocks_h, f * blocks_w)).astype(dtype)
    if channel_major:                       # as the convolutions' outputs are laid out
        x = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    out, cache = fast.avgpool_forward(x, f)
    out_ref, cache_ref = ref.avgpool_forward(x, f)
    assert_close(out, out_ref, "avgpool out", dtype)
    assert cache == cache_ref                # the reference's backward takes it
    with pytest.raises(ValueError, match="must divide by"):
        fast.avgpool_forward(np.zeros((1, 1, 3 * f + 1, f)), 2 * f)


# --------------------------------------------------------------------------- fully connected
@pytest.mark.parametrize("dtype", DTYPES)
@given(n=st.integers(1, 16), d_in=st.integers(1, 300), d_out=st.integers(1, 40), seed=seeds,
       need_dw=st.booleans())
def test_fast_fc_matches_reference(dtype, n, d_in, d_out, seed, need_dw):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in)).astype(dtype)
    w = (rng.standard_normal((d_out, d_in)) / np.sqrt(d_in)).astype(dtype)
    b = rng.standard_normal(d_out).astype(dtype)
    out, cache = fast.fc_forward(x, w, b)
    out_ref, cache_ref = ref.fc_forward(x, w, b)
    assert_close(out, out_ref, "fc out", dtype)
    dout = rng.standard_normal(out.shape).astype(dtype)
    got, want = fast.fc_backward(dout, cache, need_dw=need_dw), ref.fc_backward(dout, cache_ref, need_dw=need_dw)
    for name, g, g_ref in zip(["dx", "dw", "db"], got, want):
        assert (g is None) == (g_ref is None), name
        if g_ref is not None:
            assert_close(g, g_ref, f"fc {name}", dtype)


# --------------------------------------------------------------------------- a whole iteration
def test_fast_training_iteration_matches_reference():
    """One adv_gdl iteration of Algorithm 1 in float64 (the fast backend batching D's two terms,
    the reference not): the same losses and the same updated parameters, to float64 rounding."""
    import framepred as fp
    config = fp.make_config(m=2, n=1, patch=32, width=1 / 32, loss="adv_gdl")
    rng = np.random.default_rng(0)
    batches = [(rng.uniform(-1, 1, (2, 6, 32, 32)), rng.uniform(-1, 1, (2, 3, 32, 32))) for _ in range(2)]
    params = {name: fp.init_params(config, seed=3, dtype=np.float64) for name in ("fast", "ref")}
    logs = {name: fp.train_step(ops, params[name], config, *batches, lr_g=0.04)
            for name, ops in (("fast", fast), ("ref", ref))}
    for key in logs["ref"]:
        assert logs["fast"][key] == pytest.approx(logs["ref"][key], rel=1e-12, abs=1e-12), key
    for key in params["ref"]:
        np.testing.assert_allclose(params["fast"][key], params["ref"][key], rtol=1e-10, atol=1e-13, err_msg=key)


# --------------------------------------------------------------------------- --device reference
def test_device_reference_trains_predicts_and_evaluates_like_cpu(tmp_path, capsys):
    """The plain path end to end: train_min.py, framepred.py predict and metrics.py evaluate take
    --device reference, and give what --device cpu gives (to float32 rounding)."""
    import csv

    from PIL import Image

    import data
    import framepred as fp
    import metrics
    import train_min
    from test_train import TINY

    runs = {}
    for device in ("cpu", "reference"):
        runs[device] = str(tmp_path / f"run_{device}")
        argv = ["--out", runs[device], "--loss", "gdl_l1", "--steps", "2", "--eval-every", "100"] + TINY
        assert train_min.main(argv + ["--device", device]) == 0             # the last --device counts
    assert "reference: G" in capsys.readouterr().out                     # train_min names the backend
    # the held-out scores and mean losses of the two runs (Adam's steps, +-rho each, turn float32
    # rounding into parameter differences of up to ~rho, so the parameters are not compared)
    evals = [[json.loads(line) for line in open(os.path.join(runs[d], "eval.jsonl"))] for d in runs]
    assert len(evals[0]) == len(evals[1]) == 2 and "g_total" in evals[0][1]      # steps 0 and 2
    for a, b in zip(*evals):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-4), key

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(data.to_uint8(data.open_source(None).test_clips(1, 5)[0]).transpose(0, 2, 3, 1)):
        Image.fromarray(f).save(frames / f"f{i}.png")
    tables = {}
    for device in ("cpu", "reference"):
        out = tmp_path / f"pred_{device}"
        assert fp.main(["predict", "--checkpoint", runs["cpu"], "--input", str(frames), "--out", str(out),
                        "--frames", "2", "--device", device]) == 0
        ev = tmp_path / f"eval_{device}"
        assert metrics.main(["evaluate", "--checkpoint", runs["cpu"], "--clips", "2", "--figures", "0",
                             "--device", device, "--out", str(ev)]) == 0
        with open(ev / "table.csv", newline="") as f:
            tables[device] = list(csv.reader(f))
    for i in (1, 2):
        a, b = (np.asarray(Image.open(tmp_path / f"pred_{d}" / f"pred_{i}.png"), dtype=int) for d in ("cpu", "reference"))
        assert np.abs(a - b).max() <= 1, f"pred_{i}.png differs by more than one grey level"
    assert len(tables["cpu"]) == len(tables["reference"]) > 1
    for row_cpu, row_ref in zip(tables["cpu"], tables["reference"]):
        for a, b in zip(row_cpu, row_ref):
            try:
                assert float(a) == pytest.approx(float(b), rel=1e-3, abs=1e-3), (row_cpu, row_ref)
            except ValueError:
                assert a == b
