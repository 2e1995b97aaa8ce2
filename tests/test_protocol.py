"""Tests of the two scoring protocols of `metrics.py evaluate` (README "Two ways to score"):
--protocol paper (the formulas as printed, metrics.psnr / ssim / sharpness_difference with masked
means) and --protocol authors (as the authors' released test script scores: psnr_authors,
ssim_authors, sharpness_difference_authors, fill_still_authors, flow_colour_mask, the 50 dB drop).

Oracles: hand-computed values and slow loops written here, independent of metrics.py.
"""
import csv
import math

import numpy as np
import pytest

import metrics
from metrics import (dropped_counts, fill_still_authors, flow_colour_mask, psnr, psnr_authors,
                     score_frame, score_frame_authors, sharpness_difference,
                     sharpness_difference_authors, ssim, ssim_authors)
from test_evaluate import make_checkpoint

SHIFT_128 = 20 * math.log10(128 / 127.5)  # 0.0340 dB: the script's 128 where 127.5 is exact
CAP = 10 * math.log10(255 ** 2 / 1e-4)    # 88.13 dB: the script's floor on the error


def rand_images(shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, shape)


# ----------------------------------------------------------------------------- PSNR

def test_psnr_authors_hand_case():
    # one of four pixels off by 0.5: mean squared error 0.0625, times 128^2 = 1024
    pred, target = np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2))
    target[0, 0, 1, 0] = 0.5
    assert psnr_authors(pred, target)[0] == pytest.approx(10 * math.log10(65025 / 1024), abs=1e-12)
    assert psnr_authors(pred, target)[0] == pytest.approx(18.0278, abs=1e-4)


def test_psnr_authors_identical_is_capped_not_inf():
    x = rand_images((2, 3, 5, 6))
    np.testing.assert_allclose(psnr_authors(x, x), CAP)
    assert CAP == pytest.approx(88.1308, abs=1e-4)


def test_protocols_agree_on_whole_frame_psnr():
    """Whole frames: the same PSNR but for the 128 / 127.5 scale, a constant 0.034 dB."""
    a, b = rand_images((4, 3, 16, 20), 1), rand_images((4, 3, 16, 20), 2) * 0.3
    np.testing.assert_allclose(psnr(a, b) - psnr_authors(a, b), SHIFT_128, atol=1e-9)


# ----------------------------------------------------------------------------- the "-1" convention

def slow_fill(pred, target, mask):
    """The script's loop: start from -1 images, copy the channels of each moving pixel."""
    n, c, h, w = pred.shape
    mp, mt = np.full(pred.shape, -1.0), np.full(target.shape, -1.0)
    for s in range(n):
        for j in range(h):
            for k in range(w):
                if mask[s, 0, j, k]:
                    for i in range(c):
                        mp[s, i, j, k] = pred[s, i, j, k]
                        mt[s, i, j, k] = target[s, i, j, k]
    return mp, mt


def test_fill_still_matches_the_slow_loop():
    pred, target = rand_images((3, 3, 7, 9), 3), rand_images((3, 3, 7, 9), 4)
    mask = np.random.default_rng(5).random((3, 1, 7, 9)) < 0.4
    got = fill_still_authors(pred, target, mask)
    for g, e in zip(got, slow_fill(pred, target, mask)):
        np.testing.assert_array_equal(g, e)
    # (N, H, W) masks and 0/1 masks mean the same
    for g, e in zip(fill_still_authors(pred, target, mask[:, 0].astype(np.uint8)), got):
        np.testing.assert_array_equal(g, e)


def test_filled_psnr_counts_the_still_pixels():
    """Moving-area PSNR: the authors' mean runs over all H x W pixels, so it exceeds the masked mean's
    PSNR by 10 log10(H W / moving pixels) (less the 0.034 dB scale shift): the protocols differ here."""
    pred, target = rand_images((2, 3, 8, 10), 6), rand_images((2, 3, 8, 10), 7)
    mask = np.zeros((2, 1, 8, 10), bool)
    mask[0, 0, 2:6, 3:8] = True    # 20 of 80 pixels
    mask[1, 0, :, :2] = True       # 16 of 80
    counts = np.array([20, 16])
    paper = psnr(pred, target, mask)
    authors = psnr_authors(*fill_still_authors(pred, target, mask))
    np.testing.assert_allclose(authors, paper + 10 * np.log10(80 / counts) - SHIFT_128, atol=1e-9)
    assert np.all(authors > paper + 5)


# ----------------------------------------------------------------------------- SSIM

def slow_ssim_full(y1, y2):
    """SSIM of two (H, W) 0..255 images by a loop over the 'full' map: at each output position the
    11x11 Gaussian window (sigma 1.5, sum 1) covers the images shifted, pixels outside count as 0."""
    h, w = y1.shape
    g = np.exp(-np.arange(-5, 6) ** 2 / (2 * 1.5 ** 2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for oy in range(h + 10):
        for ox in range(w + 10):
            s = {"x": 0.0, "y": 0.0, "xx": 0.0, "yy": 0.0, "xy": 0.0}
            for a in range(11):
                for b in range(11):
                    i, j = oy - 10 + a, ox - 10 + b
                    if 0 <= i < h and 0 <= j < w:
                        x, y, k = y1[i, j], y2[i, j], win[a, b]
                        s["x"] += k * x
                        s["y"] += k * y
                        s["xx"] += k * x * x
                        s["yy"] += k * y * y
                        s["xy"] += k * x * y
            mx, my = s["x"], s["y"]
            vx, vy, cxy = s["xx"] - mx * mx, s["yy"] - my * my, s["xy"] - mx * my
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_authors_matches_a_slow_loop():
    pred, target = rand_images((2, 3, 6, 7), 8), rand_images((2, 3, 6, 7), 9)
    got = ssim_authors(pred, target)
    for s in range(2):
        luma = [(0.299 * z[s, 0] + 0.587 * z[s, 1] + 0.114 * z[s, 2] + 1) / 2 * 255 for z in (pred, target)]
        assert got[s] == pytest.approx(slow_ssim_full(*luma), abs=1e-12)


def test_ssim_authors_one_pixel_hand_case():
    """A 1x1 grey image: the 'full' map is the 11x11 window itself, at each entry k the local
    mean is k x and the variance k (1 - k) x^2 (zeros around), so the map is hand-computable."""
    x, y = 0.5, -0.2                                 # [-1, 1] -> 0..255: 191.25 and 102
    X, Y = (x + 1) * 127.5, (y + 1) * 127.5
    g = np.exp(-np.arange(-5, 6) ** 2 / 4.5)
    k = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 2.55 ** 2, 7.65 ** 2
    smap = ((2 * k * X * k * Y + c1) * (2 * k * (1 - k) * X * Y + c2)
            / (((k * X) ** 2 + (k * Y) ** 2 + c1) * (k * (1 - k) * (X * X + Y * Y) + c2)))
    got = ssim_authors(np.full((1, 1, 1, 1), x), np.full((1, 1, 1, 1), y))
    assert got[0] == pytest.approx(smap.mean(), abs=1e-12)


def test_ssim_authors_sees_luminance_only():
    """Two images that differ only in colour, not in Y = 0.299 R + 0.587 G + 0.114 B: 1 for the
    authors' SSIM, below 1 for the paper protocol's RGB SSIM."""
    base = rand_images((1, 3, 16, 16), 10) * 0.5
    d = np.random.default_rng(11).uniform(-0.3, 0.3, (1, 1, 16, 16))
    chroma = np.concatenate([d, -d * 0.299 / 0.587, np.zeros_like(d)], axis=1)  # Y unchanged
    other = base + chroma
    assert ssim_authors(base, other)[0] == pytest.approx(1.0, abs=1e-12)
    assert ssim(base, other)[0] < 0.9


def test_ssim_authors_identical_is_one_and_filled_still_pixels_score_one():
    x = rand_images((2, 3, 12, 12), 12)
    np.testing.assert_allclose(ssim_authors(x, x), 1.0, atol=1e-12)
    # all pixels still: both images all -1 (0 on 0..255), and the zero padding is 0 too: SSIM 1
    none = np.zeros((2, 1, 12, 12), bool)
    np.testing.assert_allclose(ssim_authors(*fill_still_authors(x, -x, none)), 1.0, atol=1e-12)


# ----------------------------------------------------------------------------- sharpness

def test_sharpness_authors_hand_case():
    """3x3, one channel: only the centre pixel is in the script's region (rows, columns 1..H-2).
    Target: a bump of 0.5 at the centre; prediction flat. At the centre |d grad_j| = |d grad_i| = 0.5,
    error 1.0, divided by C H W = 9, times 128^2: 10 log10(255^2 * 9 / 128^2) = 15.529 dB.
    The paper's formula: region rows, columns 1..2, errors 1, 0.5, 0.5, 0, mean 0.5:
    10 log10(4 / 0.5) = 9.031 dB."""
    pred, target = np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 3, 3))
    target[0, 0, 1, 1] = 0.5
    assert sharpness_difference_authors(pred, target)[0] == pytest.approx(
        10 * math.log10(255 ** 2 * 9 / 128 ** 2), abs=1e-12)
    assert sharpness_difference_authors(pred, target)[0] == pytest.approx(15.5290, abs=1e-4)
    assert sharpness_difference(pred, target)[0] == pytest.approx(10 * math.log10(8), abs=1e-12)


def test_sharpness_authors_compares_each_gradient_on_its_own():
    """At the centre the target has grad_j = 0.5, grad_i = 0 and the prediction grad_j = 0,
    grad_i = 0.5: the printed formula sees equal sums (a perfect score, +inf), the script an error
    of 0.5 + 0.5 (15.529 dB, as in the hand case above)."""
    pred, target = np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 3, 3))
    target[0, 0, 1, 0] = -0.5     # Y[1,1] - Y[1,0] = 0.5 in the target
    pred[0, 0, 0, 1] = -0.5       # Y[1,1] - Y[0,1] = 0.5 in the prediction
    assert np.isposinf(sharpness_difference(pred, target)[0])
    assert sharpness_difference_authors(pred, target)[0] == pytest.approx(15.5290, abs=1e-4)


def test_sharpness_authors_matches_a_slow_loop():
    pred, target = rand_images((2, 3, 5, 6), 13), rand_images((2, 3, 5, 6), 14)
    got = sharpness_difference_authors(pred, target)
    for s in range(2):
        total = 0.0
        for c in range(3):
            for i in range(1, 4):
                for j in range(1, 5):
                    p, t = pred[s, c], target[s, c]
                    total += abs(abs(p[i, j] - p[i, j - 1]) - abs(t[i, j] - t[i, j - 1]))
                    total += abs(abs(p[i, j] - p[i - 1, j]) - abs(t[i, j] - t[i - 1, j]))
        assert got[s] == pytest.approx(10 * math.log10(255 ** 2 / (128 ** 2 * total / (3 * 5 * 6))), abs=1e-10)


# ----------------------------------------------------------------------------- the flow colour rule

def colour_wheel():
    """The Middlebury flow colour wheel, (55, 3) on 0..255: red-yellow 15, yellow-green 6,
    green-cyan 4, cyan-blue 11, blue-magenta 13, magenta-red 6 steps."""
    rows = []
    for n, (start, ramp, sign) in zip((15, 6, 4, 11, 13, 6),
                                      (((255, 0, 0), 1, 1), ((255, 255, 0), 0, -1), ((0, 255, 0), 2, 1),
                                       ((0, 255, 255), 1, -1), ((0, 0, 255), 0, 1), ((255, 0, 255), 2, -1))):
        for i in range(n):
            c = list(start)
            c[ramp] = math.floor(255 * i / n) if sign > 0 else 255 - math.floor(255 * i / n)
            rows.append(c)
    return np.array(rows, dtype=np.float64)


def slow_colour_code(u, v):
    """The Middlebury flow-to-colour coding of one (H, W) flow, per pixel: normalised by the largest
    magnitude, the angle picks (and blends) two wheel entries, the radius blends them from white,
    then uint8 floor; returns (3, H, W) on 0..1 as a png loads."""
    wheel = colour_wheel() / 255
    ncols = len(wheel)
    maxrad = max(-1.0, float(np.max(np.hypot(u, v))))
    out = np.zeros((3,) + u.shape)
    for y in range(u.shape[0]):
        for x in range(u.shape[1]):
            uu, vv = u[y, x] / (maxrad + 2.2e-16), v[y, x] / (maxrad + 2.2e-16)
            rad = math.hypot(uu, vv)
            a = math.atan2(-vv, -uu) / math.pi
            fk = (a + 1) / 2 * (ncols - 1)
            k0 = int(math.floor(fk))
            k1 = (k0 + 1) % ncols
            f = fk - k0
            for ch in range(3):
                col = (1 - f) * wheel[k0, ch] + f * wheel[k1, ch]
                col = 1 - rad * (1 - col) if rad <= 1 else col * 0.75
                out[ch, y, x] = math.floor(255 * col) / 255
    return out


def test_flow_colour_mask_is_the_colour_image_below_point_two():
    rng = np.random.default_rng(15)
    flow = rng.normal(0, 1.5, (3, 2, 9, 11))
    flow[2] *= 0.01                                  # slow motion everywhere: still relative
    got = flow_colour_mask(flow)
    for s in range(3):
        img = slow_colour_code(flow[s, 0], flow[s, 1])
        expect = (img < 0.2).any(axis=0)
        np.testing.assert_array_equal(got[s, 0], expect)
    assert 0 < got.sum() < got.size
    assert not flow_colour_mask(np.zeros((1, 2, 4, 4))).any()


def test_moving_masks_authors_take_one_flow_per_frame_pair():
    from metrics import motion_mask_authors, moving_masks_authors
    from data import open_source
    clips = open_source(None).test_clips(3, 6, (32, 32))
    truth = moving_masks_authors(clips, "truth")
    np.testing.assert_array_equal(truth[0], motion_mask_authors(clips[:, 3], clips[:, 4]))
    np.testing.assert_array_equal(truth[1], motion_mask_authors(clips[:, 4], clips[:, 5]))
    inputs = moving_masks_authors(clips, "inputs", chunk=2)        # chunks give the same masks
    np.testing.assert_array_equal(inputs[0], motion_mask_authors(clips[:, 2], clips[:, 3]))
    np.testing.assert_array_equal(inputs[1], inputs[0])
    assert all(0 < m.mean() < 0.5 for m in truth + inputs)
    with pytest.raises(ValueError, match="mask pair"):
        moving_masks_authors(clips, "both")


# ----------------------------------------------------------------------------- the 50 dB drop

def test_authors_drop_clips_at_50_db_and_count_them():
    """Per clip: 0 an ordinary error (kept); 1 no moving pixel (88.13 dB, dropped); 2 a tiny error
    (above 50 dB, dropped); 3 an error just under the line (49.9 dB, kept). The whole-frame scores
    drop nothing."""
    rng = np.random.default_rng(16)
    target = rng.uniform(-1, 1, (4, 3, 16, 16))
    mask = np.zeros((4, 1, 16, 16), bool)
    mask[:, :, 4:12, 4:12] = True
    mask[1] = False
    pred = target.copy()
    pred[0] += rng.normal(0, 0.2, (3, 16, 16))
    pred[1] += rng.normal(0, 0.2, (3, 16, 16))       # error only where nothing moves
    pred[2] += 1e-4
    # clip 3: moving-area PSNR 49.9 dB from a constant error e on the 64 of 256 pixels:
    # 255^2 / (128^2 e^2 64 / 256) = 10^4.99
    e = math.sqrt(255 ** 2 / 10 ** 4.99 * 4) / 128
    pred[3] = np.where(mask[3], target[3] + e, target[3])
    out = score_frame_authors(pred, target, mask)
    moving = out["moving", "psnr"]
    assert moving[3] == pytest.approx(49.9, abs=1e-9)
    for score in ("psnr", "ssim", "sharp"):
        assert np.isnan(out["moving", score]).tolist() == [False, True, True, False]
        assert not np.isnan(out["whole", score]).any()
    assert out["whole", "psnr"][1] < 30
    row = {"scores": {("moving", f, "psnr"): moving for f in ("1st", "2nd")}}
    assert dropped_counts(row) == [2, 2]
    # the paper protocol keeps every clip with moving pixels (clip 1 has none: NaN, not dropped by dB)
    assert np.isnan(score_frame(pred, target, mask)["moving", "psnr"]).tolist() == [False, True, False, False]


def test_protocols_differ_on_ssim_and_sharpness_of_whole_frames():
    a = rand_images((2, 3, 16, 16), 17)
    b = a + np.random.default_rng(18).normal(0, 0.1, a.shape)
    paper, authors = score_frame(b, a, None), score_frame_authors(b, a, np.ones((2, 1, 16, 16)))
    assert np.all(np.abs(paper["whole", "ssim"] - authors["whole", "ssim"]) > 0.01)
    assert np.all(paper["whole", "sharp"] != authors["whole", "sharp"])  # by how much: the hand cases
    # a mask of every pixel: the authors' moving areas are their whole frames
    for score in ("psnr", "ssim", "sharp"):
        np.testing.assert_array_equal(authors["moving", score], authors["whole", score])


# ----------------------------------------------------------------------------- the command line

def test_evaluate_protocol_flag_end_to_end(tmp_path, capsys):
    ckpt = make_checkpoint(str(tmp_path / "run_l1"), "l1", m=2, seed=3)
    whole_psnr = {}
    for protocol in ("paper", "authors"):
        out = str(tmp_path / protocol)
        rc = metrics.main(["evaluate", "--checkpoint", ckpt, "--clips", "3", "--size", "32", "32",
                           "--device", "cpu", "--out", out, "--figures", "0", "--protocol", protocol])
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        assert captured.out.startswith(f"Protocol: {protocol}")
        with open(f"{out}/table.md", encoding="utf-8") as fh:
            assert f"- Protocol: {protocol}" in fh.read()
        with open(f"{out}/table.csv", newline="", encoding="utf-8") as fh:
            whole_psnr[protocol] = [float(r["whole_1st_psnr"]) for r in csv.DictReader(fh)]
        if protocol == "authors":
            assert "Dropped (moving-area PSNR >= 50 dB)" in captured.out
            assert "0.8 x the frame's largest flow" in captured.err
    # the same predictions, whole frames: the PSNRs agree but for the 0.034 dB of the 128 scale
    np.testing.assert_allclose(np.subtract(whole_psnr["paper"], whole_psnr["authors"]), SHIFT_128, atol=1e-6)
    with pytest.raises(SystemExit) as exc:
        metrics.main(["evaluate", "--checkpoint", ckpt, "--protocol", "both", "--device", "cpu"])
    assert exc.value.code == 2
    assert "--protocol: invalid choice: 'both'" in capsys.readouterr().err
