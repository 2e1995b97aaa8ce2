"""Full-frame prediction in tiles (framepred.predict_tiled): G's receptive field, the tile plan,
convolutions in bands of rows, and the tiled prediction against G on the whole frame (float64)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import framepred as fp
from kernels import numpy_ops as ops


def random_params(config, seed):
    return fp.init_params(config, seed=seed, dtype=np.float64)


def whole_frame(params, config, X):
    return fp.generator_forward(ops, params, config, X)[0][config["scales"][-1]]


# ----------------------------------------------------------------------------- receptive field
def test_receptive_radius_follows_table1():
    # half-widths of Table 1's kernels, times the size of a pixel of each scale in full-size pixels
    four = 8 * (1 + 1 + 1 + 1) + 4 * (2 + 1 + 1 + 2) + 2 * (2 + 1 + 1 + 1 + 1 + 2) + 1 * (3 + 2 + 2 + 2 + 2 + 3)
    assert fp.receptive_radius(fp.make_config()) == four == 86
    assert fp.tile_margin(fp.make_config()) == 88
    single = fp.make_config(single_scale=True)
    assert fp.receptive_radius(single) == 14 and fp.tile_margin(single) == 16
    # computed from the config, not from the table: other kernels, another radius
    config = fp.make_config(width=1 / 64)
    config["g_kernels"] = [[3, 3], [3, 3], [3, 3], [5, 3]]
    config["g_maps"] = [[2], [2], [2], [2]]
    assert fp.receptive_radius(config) == 8 * 2 + 4 * 2 + 2 * 2 + 1 * 3 == 31
    assert fp.tile_margin(config) == 32


@pytest.mark.parametrize("single_scale", [False, True])
def test_receptive_radius_is_how_far_g_reaches(single_scale):
    """Input columns from e on (e on the 8-pixel grid) made NaN: NaN flows into every value that
    depends on them, whatever the weights (NaN * 0 is NaN), so the first NaN column of G's
    prediction is exactly e - receptive_radius. A tile that ends at e (its zero padding standing
    for those columns) is therefore right up to that column."""
    config = fp.make_config(width=1 / 64, single_scale=single_scale, loss="l2")
    params = random_params(config, seed=3)
    X = np.random.default_rng(0).uniform(-1, 1, (1, 12, 16, 160 if not single_scale else 80))
    e = X.shape[3] - 40
    X[..., e:] = np.nan
    nan_columns = np.nonzero(np.isnan(whole_frame(params, config, X)).any(axis=(0, 1, 2)))[0]
    assert nan_columns.min() == e - fp.receptive_radius(config)


# ----------------------------------------------------------------------------- tile plan
@given(h=st.integers(1, 60), w=st.integers(1, 60), max_pixels=st.integers(1, 250_000), margin=st.sampled_from([0, 16, 88]))
def test_tile_plan_covers_every_pixel_once(h, w, max_pixels, margin):
    height, width = 8 * h, 8 * w
    plan = fp.tile_plan(height, width, max_pixels, margin)
    count = np.zeros((height, width), int)
    for (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) in plan:
        count[cy0:cy1, cx0:cx1] += 1
        assert all(v % 8 == 0 for v in (y0, y1, x0, x1, cy0, cy1, cx0, cx1))   # on the pooling grid
        assert (y0, y1, x0, x1) == (max(0, cy0 - margin), min(height, cy1 + margin),
                                    max(0, cx0 - margin), min(width, cx1 + margin))
    assert (count == 1).all()
    windows = [(y1 - y0) * (x1 - x0) for (y0, y1, x0, x1), _ in plan]
    smallest = fp.tile_plan(height, width, 0, margin)     # nothing fits: the smallest windows
    if max(windows) > max_pixels:                         # over the budget only when nothing fits
        assert max(windows) == max((y1 - y0) * (x1 - x0) for (y0, y1, x0, x1), _ in smallest)
    if height * width <= max_pixels:
        assert len(plan) == 1                             # the whole frame, when it fits


def test_tile_plan_refuses_frames_off_the_grid():
    with pytest.raises(ValueError, match="multiples of 8"):
        fp.tile_plan(36, 48, 1000, 16)


# ----------------------------------------------------------------------------- bands and tiles
@pytest.mark.parametrize("k, relu", [(3, True), (5, False), (7, True)])
def test_conv_in_bands_equals_same_convolution(k, relu):
    rng = np.random.default_rng(k)
    x = rng.normal(size=(2, 3, 13, 11))
    w, b = rng.normal(size=(4, 3, k, k)), rng.normal(size=4)
    want = ops.conv2d_forward(x, w, b, "same")[0]
    want = np.maximum(want, 0) if relu else want
    per_row = 8 * 2 * (11 + k - 1) * (3 * k * k + 3 + 2 * 4)
    for rows in (1, 2, 5, 13):
        got = fp.conv_same_in_bands(ops, x, w, b, relu, band_bytes=rows * per_row)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("target", fp.TARGETS)
def test_predict_tiled_equals_whole_frame(target):
    """A frame 3 tiles wide and 2 high, not square: tiles at the frame's border and windows with
    the frame on both sides; the convolutions in bands of a few rows. Equal to G on the whole
    frame, and clearly not with a margin short of G's receptive field."""
    config = fp.make_config(width=1 / 64, loss="l2", target=target)
    params = random_params(config, seed=1)
    X = np.random.default_rng(2).uniform(-1, 1, (1, 12, 104, 296))
    margin = fp.tile_margin(config)
    tiles = fp.tile_grid(104, 296, 2, 3, margin)
    assert any(x0 > 0 and x1 < 296 for (_, _, x0, x1), _ in tiles)                    # inside the frame
    assert any(y0 == 0 and x0 == 0 for (y0, _, x0, _), _ in tiles)                    # at its corner
    memory = 2_000_000
    assert fp.tile_budget(config, 1, 8, memory)[1] < 8 * 300 * 8 * 25 * 10            # bands of < 10 rows
    want = whole_frame(params, config, X)
    got = fp.predict_tiled(ops, params, config, X, memory=memory, tiles=tiles)
    assert got.shape == want.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    short = fp.predict_tiled(ops, params, config, X, memory=memory, tiles=fp.tile_grid(104, 296, 1, 3, margin - 48))
    assert np.abs(short - want).max() > 1e-6


def test_predict_tiled_follows_the_memory_budget():
    """The plan comes from the budget, not the frame: one tile when the frame fits, more as the
    budget shrinks, each window within it; the result is the same."""
    config = fp.make_config(width=1 / 64, loss="l2", single_scale=True)
    params = random_params(config, seed=6)
    X = np.random.default_rng(7).uniform(-1, 1, (3, 12, 40, 64))
    want = whole_frame(params, config, X)
    per_pixel = 8 * 3 * fp.tile_values_per_pixel(config)
    counts = []
    for memory in (10 ** 9, int(40 * 48 * per_pixel * 4 / 3) + 100, int(40 * 40 * per_pixel * 4 / 3) + 100):
        max_pixels = fp.tile_budget(config, 3, 8, memory)[0]
        tiles = fp.tile_plan(40, 64, max_pixels, fp.tile_margin(config))
        counts.append(len(tiles))
        assert all((y1 - y0) * (x1 - x0) <= max_pixels for (y0, y1, x0, x1), _ in tiles)
        np.testing.assert_allclose(fp.predict_tiled(ops, params, config, X, memory=memory), want, rtol=0, atol=1e-12)
    assert counts[0] == 1 < counts[1] < counts[2]


def test_predict_tiled_on_the_gpu_backend():
    """The same code through cupy_ops (CUDA kernels emulated on the CPU, float32): equal to NumPy."""
    emulator = pytest.importorskip("emulator")
    try:
        gpu = emulator.emulated_backend()
    except Exception as e:   # no C++ compiler
        pytest.skip(f"no CUDA emulator: {e}")
    config = fp.make_config(width=1 / 64, loss="l2", single_scale=True, target="change")
    params = fp.init_params(config, seed=4)
    X = np.random.default_rng(5).uniform(-1, 1, (1, 12, 24, 56)).astype(np.float32)
    memory = 200_000
    plan = fp.tile_plan(24, 56, fp.tile_budget(config, 1, 4, memory)[0], fp.tile_margin(config))
    assert len(plan) >= 2
    want = fp.predict_tiled(ops, params, config, X, memory=10 ** 9)
    got = fp.predict_tiled(gpu, params, config, X, memory=memory)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
