"""Tests of metrics.py: PSNR, SSIM, sharpness difference (paper section 4.2), optical flow,
motion masks, baselines and figure writers.

Oracles are hand-computed values and slow, independent loops written here; no library
implementations of the metrics are used.
"""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from PIL import Image

import metrics
from figures import image_to_uint8, save_gif, save_grid_png
from metrics import (flow_baseline, last_frame_baseline, motion_mask, optical_flow, psnr,
                     sharpness_difference, ssim, stack_frames, unstack_frames, warp)


def texture(h, w, dx=0.0, dy=0.0, seed=0, k=24):
    """Smooth random texture on about [-1, 1], (1, 3, h, w), translated exactly by (dx, dy):
    texture(dx, dy)(x, y) = texture(0, 0)(x - dx, y - dy). A sum of sinusoids with amplitude
    1 / frequency (roughly natural-image spectrum), wavelengths 10 to 80 px."""
    r = np.random.default_rng(seed)
    f = r.uniform(0.08, 0.6, k)
    th, ph = r.uniform(0, 2 * np.pi, k), r.uniform(0, 2 * np.pi, k)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = sum(np.sin(f[i] * (np.cos(th[i]) * (xx - dx) + np.sin(th[i]) * (yy - dy)) + ph[i]) / f[i]
              for i in range(k))
    img = img * 0.35 / np.sqrt(np.sum(1 / f ** 2) / 2)
    return np.repeat(img[None, None], 3, axis=1)


def rand_images(shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, shape)


# ----------------------------------------------------------------------------- PSNR

def test_psnr_identical_is_inf():
    x = rand_images((2, 3, 8, 8))
    assert np.all(np.isposinf(psnr(x, x)))


@pytest.mark.parametrize("c", [0.1, -0.25, 1.0])
def test_psnr_constant_offset_is_exact(c):
    y = rand_images((3, 3, 7, 9))
    got = psnr(y + c, y)
    assert got.shape == (3,)
    np.testing.assert_allclose(got, 10 * math.log10(4 / c ** 2), rtol=1e-12)


def test_psnr_peak_argument_matches_0_255_scale():
    a, b = rand_images((2, 3, 6, 6), 1), rand_images((2, 3, 6, 6), 2)
    to255 = lambda x: (x + 1) * 127.5
    np.testing.assert_allclose(psnr(a, b), psnr(to255(a), to255(b), peak=255.0), rtol=1e-12)


def test_psnr_per_sample_values():
    y = np.zeros((2, 3, 4, 4))
    p = y.copy()
    p[0] += 0.2
    p[1] += 0.5
    np.testing.assert_allclose(psnr(p, y), [10 * math.log10(4 / 0.04), 10 * math.log10(4 / 0.25)])


def test_psnr_shape_mismatch_raises():
    with pytest.raises(ValueError):
        psnr(np.zeros((1, 3, 4, 4)), np.zeros((1, 3, 4, 5)))


# ----------------------------------------------------------------------------- masks

@pytest.mark.parametrize("fn", [psnr, ssim, sharpness_difference])
def test_mask_all_ones_equals_unmasked(fn):
    a, b = rand_images((2, 3, 16, 15), 3), rand_images((2, 3, 16, 15), 4)
    ref = fn(a, b)
    np.testing.assert_allclose(fn(a, b, mask=np.ones((2, 1, 16, 15), bool)), ref, rtol=1e-12)
    np.testing.assert_allclose(fn(a, b, mask=np.ones((2, 16, 15))), ref, rtol=1e-12)


def test_mask_mean_divides_by_masked_pixels_only():
    # 4x4 image, mask = top-left 2x2 block (4 pixels). An error of 0.2 on 2 of those pixels
    # (all channels): masked MSE = 2 * 0.04 / 4 = 0.02, not 2 * 0.04 / 16.
    y = np.zeros((1, 3, 4, 4))
    mask = np.zeros((1, 4, 4), bool)
    mask[0, :2, :2] = True
    p = y.copy()
    p[0, :, 0, 0] = p[0, :, 1, 1] = 0.2
    np.testing.assert_allclose(psnr(p, y, mask=mask), [10 * math.log10(4 / 0.02)])
    np.testing.assert_allclose(psnr(p, y), [10 * math.log10(4 / (2 * 0.04 / 16))])
    # An error only outside the mask is invisible to the masked score.
    q = y.copy()
    q[0, :, 3, 3] = 0.7
    assert np.isposinf(psnr(q, y, mask=mask)[0]) and np.isfinite(psnr(q, y)[0])


def test_mask_error_in_one_channel_counts_channels():
    # error 0.3 in the red channel of the single masked pixel: MSE = 0.09 / 3
    y = np.zeros((1, 3, 3, 3))
    p = y.copy()
    p[0, 0, 1, 1] = 0.3
    mask = np.zeros((1, 1, 3, 3))
    mask[0, 0, 1, 1] = 1
    np.testing.assert_allclose(psnr(p, y, mask=mask), [10 * math.log10(4 / 0.03)])


@pytest.mark.parametrize("fn", [psnr, ssim, sharpness_difference])
def test_mask_empty_gives_nan_for_that_sample_only(fn):
    a, b = rand_images((2, 3, 12, 12), 5), rand_images((2, 3, 12, 12), 6)
    mask = np.ones((2, 12, 12), bool)
    mask[1] = False
    got = fn(a, b, mask=mask)
    assert np.isfinite(got[0]) and np.isnan(got[1])


def test_mask_wrong_shape_raises():
    with pytest.raises(ValueError):
        psnr(np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 4, 4)), mask=np.ones((2, 3, 4, 4)))


# ----------------------------------------------------------------------------- SSIM

def ssim_slow(x, y, peak=2.0, mask=None):
    """Independent oracle: explicit 2-D Gaussian window and nested loops over every window."""
    n, c, h, w = x.shape
    g = np.array([[math.exp(-((i - 5) ** 2 + (j - 5) ** 2) / (2 * 1.5 ** 2)) for j in range(11)]
                  for i in range(11)])
    g /= g.sum()
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    out = []
    for s in range(n):
        vals = []
        for i in range(h - 10):
            for j in range(w - 10):
                if mask is not None and not mask[s, i + 5, j + 5]:
                    continue
                for ch in range(c):
                    a, b = x[s, ch, i:i + 11, j:j + 11], y[s, ch, i:i + 11, j:j + 11]
                    ma, mb = (g * a).sum(), (g * b).sum()
                    va, vb = (g * (a - ma) ** 2).sum(), (g * (b - mb) ** 2).sum()
                    cov = (g * (a - ma) * (b - mb)).sum()
                    vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
        out.append(np.mean(vals) if vals else np.nan)
    return np.array(out)


def test_ssim_matches_slow_loop():
    a = rand_images((2, 3, 14, 13), 7)
    b = np.clip(a + 0.3 * rand_images((2, 3, 14, 13), 8), -1, 1)
    np.testing.assert_allclose(ssim(a, b), ssim_slow(a, b), rtol=1e-9, atol=1e-12)


def test_ssim_masked_matches_slow_loop():
    a, b = rand_images((2, 3, 15, 14), 9), rand_images((2, 3, 15, 14), 10)
    mask = np.random.default_rng(11).uniform(size=(2, 15, 14)) > 0.5
    np.testing.assert_allclose(ssim(a, b, mask=mask), ssim_slow(a, b, mask=mask), rtol=1e-9)


def test_ssim_mask_outside_valid_region_is_ignored():
    # The mask is cropped to window centres [5:H-5, 5:W-5]; marks on the border rim only
    # leave nothing to average.
    a, b = rand_images((1, 3, 13, 13), 12), rand_images((1, 3, 13, 13), 13)
    mask = np.ones((1, 13, 13), bool)
    mask[0, 5:8, 5:8] = False
    assert np.isnan(ssim(a, b, mask=mask)[0])


def test_ssim_identical_is_one():
    x = texture(32, 32)
    np.testing.assert_allclose(ssim(x, x), [1.0], atol=1e-12)


def test_ssim_constant_images_hand_value():
    # Constant images: zero variances, so SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 2)^2.
    a, b = np.full((1, 3, 11, 11), 0.5), np.full((1, 3, 11, 11), 0.2)
    np.testing.assert_allclose(ssim(a, b), [(0.2 + 0.0004) / (0.25 + 0.04 + 0.0004)], rtol=1e-12)


def test_ssim_decreases_monotonically_with_noise():
    x = texture(32, 32)
    noise = np.random.default_rng(14).standard_normal(x.shape)
    scores = [ssim(x + s * noise, x)[0] for s in (0.0, 0.02, 0.05, 0.1, 0.3)]
    assert scores[0] == pytest.approx(1.0)
    assert all(s1 > s2 for s1, s2 in zip(scores, scores[1:])), scores


def test_ssim_small_image_raises():
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((1, 3, 10, 20)), np.zeros((1, 3, 10, 20)))


@given(st.integers(0, 10 ** 6))
def test_ssim_symmetric_and_bounded(seed):
    a, b = rand_images((1, 3, 12, 12), seed), rand_images((1, 3, 12, 12), seed + 1)
    s = ssim(a, b)
    np.testing.assert_allclose(s, ssim(b, a), rtol=1e-12)
    assert -1 <= s[0] <= 1


# ----------------------------------------------------------------------------- sharpness

def sharpness_slow(p, y, peak=2.0):
    n, c, h, w = y.shape
    out = []
    for s in range(n):
        tot = 0.0
        for ch in range(c):
            for i in range(1, h):
                for j in range(1, w):
                    gy = abs(y[s, ch, i, j] - y[s, ch, i - 1, j]) + abs(y[s, ch, i, j] - y[s, ch, i, j - 1])
                    gp = abs(p[s, ch, i, j] - p[s, ch, i - 1, j]) + abs(p[s, ch, i, j] - p[s, ch, i, j - 1])
                    tot += abs(gy - gp)
        out.append(10 * math.log10(peak ** 2 / (tot / (c * (h - 1) * (w - 1)))))
    return np.array(out)


def test_sharpness_hand_case():
    # 2x2 target [[0, 1], [0, 0]]; only pixel (1, 1) has both neighbours:
    # grad_i = |0 - 1| = 1, grad_j = |0 - 0| = 0; flat prediction -> mean |1 - 0| = 1.
    y = np.array([[0.0, 1.0], [0.0, 0.0]])[None, None]
    np.testing.assert_allclose(sharpness_difference(np.zeros_like(y), y), [10 * math.log10(4.0)])


def test_sharpness_matches_slow_loop():
    a, b = rand_images((2, 3, 6, 7), 15), rand_images((2, 3, 6, 7), 16)
    np.testing.assert_allclose(sharpness_difference(a, b), sharpness_slow(a, b), rtol=1e-12)


def test_sharpness_identical_and_constant_offset_are_inf():
    y = rand_images((2, 3, 9, 9), 17)
    assert np.all(np.isposinf(sharpness_difference(y, y)))
    # values on a dyadic grid, so that the offset cancels exactly in floating point
    yq = np.round(y * 64) / 64
    assert np.all(np.isposinf(sharpness_difference(yq + 0.25, yq)))
    # with rounding, a constant offset still scores far above any real prediction
    assert np.all(sharpness_difference(y + 0.3, y) > 150)


def box_blur(x, times):
    for _ in range(times):
        p = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)], mode="edge")
        x = sum(p[..., i:i + x.shape[-2], j:j + x.shape[-1]] for i in range(3) for j in range(3)) / 9
    return x


def test_sharpness_blur_lowers_score():
    y = rand_images((1, 3, 24, 24), 18) * 0.5 + texture(24, 24) * 0.5
    sharp_pred = y + 0.02 * np.random.default_rng(19).standard_normal(y.shape)
    scores = [sharpness_difference(p, y)[0] for p in (sharp_pred, box_blur(y, 1), box_blur(y, 3))]
    assert scores[0] > scores[1] > scores[2], scores


def test_sharpness_masked_crops_first_row_and_column():
    # error placed in row 0 only affects pixels (1, j) through grad_i; mask the last row only
    y = np.zeros((1, 1, 4, 4))
    p = y.copy()
    p[0, 0, 0, :] = 0.5
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 3] = True
    assert np.isposinf(sharpness_difference(p, y, mask=mask)[0])
    mask[0, 1] = True  # pixels (1, 1..3): |0 - 0.5| each; (3, 1..3): 0 -> mean 0.25
    np.testing.assert_allclose(sharpness_difference(p, y, mask=mask), [10 * math.log10(4 / 0.25)])


# ----------------------------------------------------------------------------- flow, warp

def epe(flow, d, border=8):
    e = np.hypot(flow[:, 0] - d[0], flow[:, 1] - d[1])
    return e[:, border:-border, border:-border].mean()


def test_flow_warp_zero_and_integer_shift():
    x = rand_images((2, 3, 10, 12), 20)
    np.testing.assert_allclose(warp(x, np.zeros((2, 2, 10, 12))), x)
    f = np.zeros((2, 2, 10, 12))
    f[:, 0], f[:, 1] = 2, -1  # out(y, x) = in(y - 1, x + 2)
    np.testing.assert_allclose(warp(x, f)[..., 1:, :-2], x[..., :-1, 2:])
    # outside samples take the border value
    np.testing.assert_allclose(warp(x, f)[..., 0, :-2], x[..., 0, 2:])


def test_flow_warp_bilinear_half_pixel():
    x = rand_images((1, 1, 5, 5), 21)
    f = np.zeros((1, 2, 5, 5))
    f[:, 0], f[:, 1] = 0.5, 0.25
    expect = (0.75 * (x[..., :-1, :-1] + x[..., :-1, 1:]) / 2 + 0.25 * (x[..., 1:, :-1] + x[..., 1:, 1:]) / 2)
    np.testing.assert_allclose(warp(x, f)[..., :-1, :-1], expect)


@pytest.mark.parametrize("d", [(2.0, -3.0), (-3.0, 2.0), (-2.5, 1.5), (0.4, -0.7), (-0.3, 0.6), (0.0, 0.0)])
def test_flow_recovers_translation(d):
    # Stated accuracy: mean endpoint error < 0.15 px on interior pixels (8 px border left out)
    # and the mean flow within 0.05 px of the shift, for 0-3 px shifts of a 64x64 texture.
    f0, f1 = texture(64, 64), texture(64, 64, *d)
    flow = optical_flow(f0, f1)
    assert flow.shape == (1, 2, 64, 64)
    assert epe(flow, d) < 0.15
    inner = flow[..., 8:-8, 8:-8].mean(axis=(2, 3))[0]
    np.testing.assert_allclose(inner, d, atol=0.05)
    # convention: warp(frame1, flow) ~= frame0
    err = np.abs(warp(f1, flow) - f0)[..., 8:-8, 8:-8].mean()
    assert err <= 0.1 * np.abs(f1 - f0)[..., 8:-8, 8:-8].mean()


def test_flow_identical_frames_is_zero():
    x = texture(32, 40)
    np.testing.assert_array_equal(optical_flow(x, x), 0.0)


def test_flow_batch_independence():
    # speed is the benchmark's business, not a test's (a timed assert fails on a busy machine)
    shifts = [(1.5 * np.cos(t), 2.0 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 8, endpoint=False)]
    f0 = np.concatenate([texture(64, 64, seed=s) for s in range(8)])
    f1 = np.concatenate([texture(64, 64, *d, seed=s) for s, d in enumerate(shifts)])
    flow = optical_flow(f0, f1)
    for s, d in enumerate(shifts):
        assert epe(flow[s:s + 1], d) < 0.15
        np.testing.assert_allclose(flow[s:s + 1], optical_flow(f0[s:s + 1], f1[s:s + 1]), atol=1e-12)


def moving_square_pair(shift=3):
    bg = texture(64, 64, seed=1)

    def frame(dx):
        f = bg.copy()
        obj = texture(64, 64, dx=dx, seed=2)
        f[..., 22:42, 20 + dx:40 + dx] = obj[..., 22:42, 20 + dx:40 + dx]
        return f

    return frame(0), frame(shift)


def test_mask_motion_marks_moving_object_not_background():
    prev, last = moving_square_pair()
    m = motion_mask(prev, last)
    assert m.shape == (1, 1, 64, 64) and m.dtype == bool
    m = m[0, 0]
    assert m[24:40, 25:41].mean() > 0.95  # the square's interior in the last frame
    far = np.ones((64, 64), bool)
    far[12:52, 10:53] = False  # everything more than ~10 px from the square
    assert m[far].mean() < 0.01
    assert not motion_mask(last, last).any()


def test_mask_motion_threshold():
    prev, last = texture(48, 48), texture(48, 48, 1.0, 0.0)
    assert motion_mask(prev, last, threshold=0.5)[..., 8:-8, 8:-8].all()
    assert not motion_mask(prev, last, threshold=1.5)[..., 8:-8, 8:-8].any()


# ----------------------------------------------------------------------------- baselines

def test_mask_frame_stacking_round_trip():
    x = rand_images((2, 12, 5, 6), 22)
    f = unstack_frames(x)
    assert f.shape == (2, 4, 3, 5, 6)
    np.testing.assert_array_equal(f[:, 1, 2], x[:, 5])  # channel 3t + c
    np.testing.assert_array_equal(stack_frames(f), x)
    with pytest.raises(ValueError):
        unstack_frames(np.zeros((1, 10, 4, 4)))


def test_flow_last_frame_baseline():
    x = rand_images((2, 12, 5, 6), 23)
    np.testing.assert_array_equal(last_frame_baseline(x), x[:, 9:12])
    np.testing.assert_array_equal(last_frame_baseline(x, steps=2), np.concatenate([x[:, 9:12]] * 2, axis=1))


def test_flow_baseline_beats_last_frame_on_translation():
    v = (1.5, -1.0)  # px per frame
    seq = [texture(64, 64, t * v[0], t * v[1], seed=3) for t in range(6)]
    history = np.concatenate(seq[:4], axis=1)  # (1, 12, 64, 64)
    pred_flow = flow_baseline(history, steps=2)
    pred_last = last_frame_baseline(history, steps=2)
    assert pred_flow.shape == pred_last.shape == (1, 6, 64, 64)
    c = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    for k in range(2):
        target = seq[4 + k][c]
        p_flow = psnr(pred_flow[:, 3 * k:3 * k + 3][c], target)[0]
        p_last = psnr(pred_last[:, 3 * k:3 * k + 3][c], target)[0]
        assert p_flow > p_last + 10, (k, p_flow, p_last)


def test_flow_baseline_needs_two_frames():
    with pytest.raises(ValueError):
        flow_baseline(np.zeros((1, 3, 16, 16)))


# ----------------------------------------------------------------------------- figures

def test_grid_png_size_and_pixels(tmp_path):
    img = rand_images((3, 32, 32), 24)
    rows = [[img, None, img], [img, img]]
    path = tmp_path / "grid.png"
    size = save_grid_png(path, rows)
    # cells 32 * 3 = 96 px, gap 4: width 3 * 96 + 4 * 4, height 2 * 96 + 3 * 4
    assert size == (304, 204)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (304, 204)
        a = np.asarray(im.convert("RGB"))
    up = image_to_uint8(img).repeat(3, axis=0).repeat(3, axis=1)
    np.testing.assert_array_equal(a[4:100, 4:100], up)
    np.testing.assert_array_equal(a[104:200, 104:200], up)
    assert (a[4:100, 104:200] == 255).all()  # empty cell


def test_grid_png_labels_and_large_images(tmp_path):
    img = rand_images((3, 120, 100), 25)
    plain = save_grid_png(tmp_path / "a.png", [[img, img]])
    assert plain == (2 * 100 + 3 * 4, 120 + 2 * 4)  # no upscaling above 96 px
    labelled = save_grid_png(tmp_path / "b.png", [[img, img]], labels=["Ground truth"],
                             col_labels=["t+1", "t+2"])
    assert labelled[0] > plain[0] and labelled[1] > plain[1]
    with Image.open(tmp_path / "b.png") as im:
        assert im.size == labelled
        a = np.asarray(im.convert("RGB"))
    assert (a[:, : labelled[0] - plain[0]] < 128).any()  # some dark text pixels in the label column


def test_grid_png_title_and_captions_above_a_row(tmp_path):
    img = rand_images((3, 32, 32), 26)
    plain = save_grid_png(tmp_path / "a.png", [[img, img], [img]])
    titled = save_grid_png(tmp_path / "b.png", [[img, img], [img]], title="Clip 1")
    size = save_grid_png(tmp_path / "c.png", [[img, img], [img]], title="Clip 1", captions=[None, ["t+1"]])
    title_h, caption_h = titled[1] - plain[1], size[1] - titled[1]
    assert size[0] == plain[0] and title_h > 0 and caption_h > 0
    with Image.open(tmp_path / "c.png") as im:
        a = np.asarray(im.convert("RGB"))
    assert (a[:title_h] < 128).any()                         # the title's text
    band = a[title_h + 4 + 96 + 4:title_h + 4 + 96 + 4 + caption_h]   # between row 1 and row 2
    assert (band[:, 4:100] < 128).any() and not (band[:, 104:200] < 128).any()   # over row 2's only cell


def test_grid_to_uint8_scale():
    x = np.array([-1.0, 0.0, 1.0, 2.0])[None, None].repeat(3, axis=0)
    np.testing.assert_array_equal(image_to_uint8(x)[0, :, 0], [0, 128, 255, 255])
    assert image_to_uint8(x).shape == (1, 4, 3)
    np.testing.assert_array_equal(image_to_uint8(x[:1]), image_to_uint8(x))  # grey -> RGB


def test_grid_helpers_are_data_modules():
    import data
    assert metrics.stack_frames is data.stack_frames and metrics.unstack_frames is data.unstack_frames
    assert metrics.to_uint8 is data.to_uint8


def test_grid_gif_frames_and_size(tmp_path):
    frames = [texture(32, 32, t, 0, seed=4)[0] for t in range(3)]
    path = tmp_path / "clip.gif"
    save_gif(path, frames, fps=5)
    with Image.open(path) as im:
        assert im.format == "GIF" and im.size == (96, 96)
        assert im.n_frames == 3
        assert im.info["duration"] == 200


def test_main_without_command_prints_help(capsys):
    assert metrics.main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_blockiness_against_a_slow_loop_and_known_cases():
    """A slow loop over pixel pairs is the oracle; a smooth texture scores about 1, the same texture
    seen through 8x8 nearest-neighbour blocks far more."""
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 3, 17, 20))
    for n in range(2):
        across, within = [], []
        for c in range(3):
            for y in range(17):
                for x in range(19):
                    (across if x % 8 == 7 else within).append(abs(img[n, c, y, x + 1] - img[n, c, y, x]))
            for y in range(16):
                for x in range(20):
                    (across if y % 8 == 7 else within).append(abs(img[n, c, y + 1, x] - img[n, c, y, x]))
        assert metrics.blockiness(img)[n] == pytest.approx(np.mean(across) / np.mean(within), rel=1e-12)
    smooth = texture(64, 64)
    blocks = smooth[:, :, ::8, ::8].repeat(8, axis=2).repeat(8, axis=3) + 0.01 * texture(64, 64, seed=1)
    assert 0.75 < metrics.blockiness(smooth)[0] < 1.25
    assert metrics.blockiness(blocks)[0] > 5
    with pytest.raises(ValueError, match="larger than 8 px"):
        metrics.blockiness(np.zeros((1, 3, 8, 8)))
