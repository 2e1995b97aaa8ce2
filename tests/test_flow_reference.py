"""Our optical flow (metrics.optical_flow, pyramidal Lucas-Kanade; the flow baseline and the
moving-area masks use it) judged against the known motion and against OpenCV's DIS and Farneback
flows (test-only dependency opencv-python-headless), on a smooth texture moved by sub-pixel and
multi-pixel shifts and zoomed about its centre.

Two errors per flow: the mean endpoint error against the true flow (8 px border left out, and over
the whole frame), and the PSNR of frame 1 warped back by the flow against frame 0 (metrics.warp,
inside the border): what the optical-flow baseline relies on. All flows see the same 8-bit frames.
`python tests/test_flow_reference.py` prints the table (README, "Two ways to score").
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script
cv2 = pytest.importorskip("cv2")

from metrics import optical_flow, psnr, warp  # noqa: E402

BORDER = 8
SHIFTS = [(0.4, -0.7), (-0.3, 0.6), (2.0, -3.0), (-2.5, 1.5), (5.0, 4.0)]
ZOOMS = [1.05, 1.1]
CASES = [("shift", d) for d in SHIFTS] + [("zoom", s) for s in ZOOMS]
# Stated bounds of our flow against the truth (measured at 64x64: interior EPE 0.04-0.09 px,
# whole frame 0.10-0.16 px): every case below must stay within them.
EPE_INTERIOR, EPE_WHOLE = 0.12, 0.2


def texture_at(xs, ys, seed=0, k=24):
    """A smooth random texture (the one of tests/test_metrics.py) sampled at float coordinates
    xs, ys (H, W): (1, 3, H, W) on about [-1, 1]. Sampling at moved coordinates moves it exactly."""
    r = np.random.default_rng(seed)
    f = r.uniform(0.08, 0.6, k)
    th, ph = r.uniform(0, 2 * np.pi, k), r.uniform(0, 2 * np.pi, k)
    img = sum(np.sin(f[i] * (np.cos(th[i]) * xs + np.sin(th[i]) * ys) + ph[i]) / f[i] for i in range(k))
    img = img * 0.35 / np.sqrt(np.sum(1 / f ** 2) / 2)
    return np.repeat(img[None, None], 3, axis=1)


def moved_pair(kind, p, h=64, w=64, seed=0):
    """(frame0, frame1, true flow (1, 2, H, W)) with frame1(x + flow(x)) = frame0(x).
    shift (dx, dy): frame1 = frame0 moved by (dx, dy). zoom s: frame1 = frame0 scaled by s about
    the image centre c, so the pixel at x goes to c + s (x - c): flow (s - 1)(x - c)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == "shift":
        dx, dy = p
        truth = np.stack([np.full((h, w), dx), np.full((h, w), dy)])[None]
        return texture_at(xx, yy, seed), texture_at(xx - dx, yy - dy, seed), truth
    cx, cy = (w - 1) / 2, (h - 1) / 2
    truth = np.stack([(p - 1) * (xx - cx), (p - 1) * (yy - cy)])[None]
    return texture_at(xx, yy, seed), texture_at(cx + (xx - cx) / p, cy + (yy - cy) / p, seed), truth


def to_8bit(frame):
    """(1, 3, H, W) on [-1, 1] -> (H, W) uint8 luma (what OpenCV takes)."""
    y = 0.299 * frame[0, 0] + 0.587 * frame[0, 1] + 0.114 * frame[0, 2]
    return np.clip(np.round((y + 1) * 127.5), 0, 255).astype(np.uint8)


def flows(f0, f1):
    """{name: (1, 2, H, W) flow} of ours and OpenCV's on the same 8-bit frames; each is on frame0's
    grid, pointing into frame1 (OpenCV: prev(y, x) ~ next(y + flow_y, x + flow_x), our convention)."""
    u0, u1 = to_8bit(f0), to_8bit(f1)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(u0, u1, None)
    farneback = cv2.calcOpticalFlowFarneback(u0, u1, None, 0.5, 4, 15, 5, 7, 1.5, 0)
    ours = optical_flow((u0 / 127.5 - 1)[None, None], (u1 / 127.5 - 1)[None, None])
    as_ours = lambda f: f.transpose(2, 0, 1)[None].astype(np.float64)  # noqa: E731
    return {"ours (Lucas-Kanade)": ours, "OpenCV DIS": as_ours(dis), "OpenCV Farneback": as_ours(farneback)}


def errors(flow, truth, f0, f1):
    """(mean EPE inside the border, mean EPE over the frame, warped-frame PSNR inside the border)."""
    epe = np.hypot(*(flow - truth)[0])
    b = BORDER
    warped = warp(f1, flow)
    return (float(epe[b:-b, b:-b].mean()), float(epe.mean()),
            float(psnr(warped[..., b:-b, b:-b], f0[..., b:-b, b:-b])[0]))


def describe(kind, p):
    return f"shift ({p[0]:+.1f}, {p[1]:+.1f}) px" if kind == "shift" else f"zoom x{p}"


@pytest.mark.parametrize("kind,p", CASES, ids=[describe(*c) for c in CASES])
def test_our_flow_within_its_stated_bound_and_beside_opencv(kind, p):
    f0, f1, truth = moved_pair(kind, p)
    res = {name: errors(flow, truth, f0, f1) for name, flow in flows(f0, f1).items()}
    for name, (inner, whole, warped) in res.items():
        print(f"{describe(kind, p)}: {name}: EPE {inner:.3f} px inside, {whole:.3f} px whole, "
              f"warped PSNR {warped:.2f} dB")
    inner, whole, warped = res["ours (Lucas-Kanade)"]
    assert inner < EPE_INTERIOR and whole < EPE_WHOLE
    # the references are read with the right convention (else their EPE would be about 2 |flow|)
    assert res["OpenCV DIS"][0] < 0.3 and res["OpenCV Farneback"][0] < 0.4
    # the baseline warps frames: ours leaves no more residual than the better OpenCV flow
    assert warped >= max(res["OpenCV DIS"][2], res["OpenCV Farneback"][2])


def main():
    print(f"{'motion (64x64 texture)':<24}{'flow':<22}{'EPE inside':>12}{'EPE whole':>11}{'warped PSNR':>13}")
    for kind, p in CASES:
        f0, f1, truth = moved_pair(kind, p)
        for name, flow in flows(f0, f1).items():
            inner, whole, warped = errors(flow, truth, f0, f1)
            print(f"{describe(kind, p):<24}{name:<22}{inner:>9.3f} px{whole:>8.3f} px{warped:>10.2f} dB")


if __name__ == "__main__":
    main()
