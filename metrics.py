"""Evaluation metrics, optical flow, baselines and `metrics.py evaluate` (SPEC "Evaluation"; paper section 4.2).

The pictures it draws (Figure 4 grids, clip GIFs) are figures.py's.

Conventions used throughout:
- Images are float arrays on the [-1, 1] scale (SPEC "Tensors"), one frame per call, batches
  shaped (N, C, H, W) with C = 3 (RGB). On this scale the peak value ``max`` of the paper's
  formulas is 2 (the range width, as 255 is on 0..255); every metric takes ``peak=`` to change it.
- Metrics return one value per sample, shape (N,), as float64; the caller averages.
- ``mask`` (optional): (N, 1, H, W) or (N, H, W), boolean or 0/1. It selects pixels, the same
  ones in every channel. A masked mean divides by the number of selected pixels times the
  number of channels, i.e. by the masked pixels only (SPEC). A sample whose mask selects no
  pixel (after any cropping a metric does) gets NaN.
- Optical flow (N, 2, H, W), channel 0 = dx (along W), channel 1 = dy (along H), in pixels,
  defined on the grid of ``frame0`` and pointing to where that pixel is in ``frame1``:
  frame1(x + flow(x)) ~= frame0(x), i.e. ``warp(frame1, flow) ~= frame0``.
- Frame histories use the network-input layout of SPEC "Tensors": (N, 3m, H, W), oldest frame
  first, channel 3t + c. ``unstack_frames`` / ``stack_frames`` (data.py's) convert to and from
  (N, m, 3, H, W).
"""
import argparse
import math
import os
import sys
import time

import numpy as np

# The frame-layout helpers are data.py's (one definition in the project); re-exported here.
from data import stack_frames, to_uint8, unstack_frames  # noqa: F401
import framepred
from figures import save_gif, save_grid_png
from framepred import CheckpointError, int_at_least, run_command

PEAK = 2.0  # peak value ("max" in PSNR) of images on the [-1, 1] scale


# ----------------------------------------------------------------------------- helpers

def _pair(pred, target):
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.ndim != 4 or pred.shape != target.shape:
        raise ValueError(f"pred and target must be (N, C, H, W) of one shape, got "
                         f"{pred.shape} and {target.shape}")
    return pred, target


def _as_mask(mask, shape):
    """(N, 1, H, W) float 0/1 mask for images of ``shape`` (N, C, H, W), or None."""
    if mask is None:
        return None
    m = np.asarray(mask)
    n, _, h, w = shape
    if m.shape == (n, h, w):
        m = m[:, None]
    if m.shape != (n, 1, h, w):
        raise ValueError(f"mask must be (N, 1, H, W) or (N, H, W) for images {shape}, got {m.shape}")
    return (m != 0).astype(np.float64)


def _masked_mean(err, mask):
    """Per-sample mean of err (N, C, h, w) over the pixels where mask (N, 1, h, w) is set.

    Divides by (number of masked pixels) * C; NaN where the mask is empty."""
    if mask is None:
        return err.reshape(len(err), -1).mean(axis=1)
    total = (err * mask).reshape(len(err), -1).sum(axis=1)
    count = mask.reshape(len(mask), -1).sum(axis=1) * err.shape[1]
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _db(peak, denominator):
    """10 log10(peak^2 / denominator): +inf where the denominator is 0, NaN stays NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return 10.0 * np.log10(peak ** 2 / denominator)


def _gaussian_kernel(sigma, radius):
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-x ** 2 / (2.0 * sigma ** 2))
    return k / k.sum()


def _filter_sep(x, k, same=False):
    """Separable correlation of the last two axes of x with the 1-D kernel k in both directions.

    'valid' output (H - len(k) + 1, W - len(k) + 1), or 'same' size with edge-replicated
    borders when same=True. Vectorised: one array operation per kernel tap."""
    r = len(k) - 1
    if same:
        pad = [(0, 0)] * (x.ndim - 2) + [(r // 2, r - r // 2)] * 2
        x = np.pad(x, pad, mode="edge")
    h, w = x.shape[-2] - r, x.shape[-1] - r
    rows = sum(k[i] * x[..., i:i + h, :] for i in range(len(k)))
    return sum(k[i] * rows[..., :, i:i + w] for i in range(len(k)))


# The authors' released test script (coupriec/VideoPredictionICLR2016: image_error_measures.lua and
# test-frame-prediction-on-ucf-rec_gdl.lua), read for `metrics.py evaluate --protocol authors`. Our own
# code; each *_authors function below sits next to the formula the paper prints and says where it differs.
AUTHORS_SCALE = 128.0     # the script's factor from [-1, 1] to 0..255 differences (exactly it is 127.5)
AUTHORS_PEAK = 255.0      # "max" in the script's dB formulas
AUTHORS_EPS = 1e-4        # the script floors the (scaled) error at this before taking the dB
AUTHORS_DROP_DB = 50.0    # moving areas: a frame whose masked PSNR is >= this is left out of the means
AUTHORS_FILL = -1.0       # moving areas: still pixels of prediction and target are set to this


def _db_authors(error):
    """The script's 10 log10(255^2 / error), the error floored at AUTHORS_EPS (so at most 88.13 dB)."""
    return 10.0 * np.log10(AUTHORS_PEAK ** 2 / np.maximum(error, AUTHORS_EPS))


# ----------------------------------------------------------------------------- metrics

def psnr(pred, target, mask=None, peak=PEAK):
    """Peak signal-to-noise ratio, paper section 4.2 / SPEC "Evaluation".

    PSNR = 10 log10(peak^2 / mean (Y - Y_hat)^2), the mean over channels and (masked) pixels.
    pred, target: (N, C, H, W) on [-1, 1] (peak = 2; use peak=255 for 0..255 images).
    Returns (N,) float64 in dB; +inf for a sample with identical images, NaN for an empty mask.
    """
    pred, target = _pair(pred, target)
    return _db(peak, _masked_mean((target - pred) ** 2, _as_mask(mask, pred.shape)))


def psnr_authors(pred, target):
    """PSNR as the authors' test script computes it (image_error_measures.lua, PSNR).

    Differs from ``psnr`` only in the scale: the mean squared difference on [-1, 1] is multiplied by
    128^2 (not 127.5^2) to stand for 0..255, and floored at 1e-4 (identical images: 88.13 dB, not inf):
    PSNR_authors = 10 log10(255^2 / max(128^2 mean (Y - Y_hat)^2, 1e-4)), i.e. psnr(peak=2) minus
    20 log10(128 / 127.5) = 0.034 dB wherever the floor is not reached. No mask argument: the script
    masks by filling the still pixels (``fill_still_authors``) and averages over the whole image.
    pred, target: (N, C, H, W) on [-1, 1]. Returns (N,) float64 in dB.
    """
    pred, target = _pair(pred, target)
    mse = ((target - pred) ** 2).reshape(len(pred), -1).mean(axis=1)
    return _db_authors(AUTHORS_SCALE ** 2 * mse)


SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def ssim(pred, target, mask=None, peak=PEAK):
    """Structural similarity of Wang et al. 2004 (paper section 4.2 / SPEC "Evaluation").

    Local statistics use an 11x11 Gaussian window (sigma 1.5, normalised to sum 1), applied
    separably with 'valid' filtering, per channel; C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = peak
    (2 on the [-1, 1] scale). The SSIM map, (N, C, H - 10, W - 10), is averaged over channels
    and pixels. Each map entry belongs to the centre pixel of its window, so a mask is cropped
    the same way, to mask[..., 5:H-5, 5:W-5], before the masked mean.
    pred, target: (N, C, H, W), H and W >= 11 (smaller images raise ValueError: no clipped
    window, so scores are always the standard 11x11 SSIM). Returns (N,) float64 in [-1, 1];
    1 for identical images, NaN where the cropped mask is empty.
    """
    pred, target = _pair(pred, target)
    n, c, h, w = pred.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}")
    c1, c2 = (SSIM_K1 * peak) ** 2, (SSIM_K2 * peak) ** 2
    k = _gaussian_kernel(SSIM_SIGMA, SSIM_WINDOW // 2)
    # One filtering call for the five local moments: E[x], E[y], E[x^2], E[y^2], E[xy].
    mom = _filter_sep(np.stack([pred, target, pred * pred, target * target, pred * target]), k)
    mx, my = mom[0], mom[1]
    vx, vy, cxy = mom[2] - mx * mx, mom[3] - my * my, mom[4] - mx * my
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    m = _as_mask(mask, pred.shape)
    r = SSIM_WINDOW // 2
    return _masked_mean(smap, None if m is None else m[..., r:h - r, r:w - r])


def _luma(images):
    """(N, 3, H, W) -> (N, 1, H, W): Y = 0.299 R + 0.587 G + 0.114 B (torch image.rgb2y); (N, 1, H, W) as is."""
    if images.shape[1] == 1:
        return images
    if images.shape[1] != 3:
        raise ValueError(f"expected RGB (N, 3, H, W) or grey (N, 1, H, W) images, got {images.shape}")
    return 0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3]


def ssim_authors(pred, target):
    """SSIM as the authors' test script computes it (image_error_measures.lua, SSIM).

    Same window (11x11 Gaussian, sigma 1.5, sum 1) and constants K1 = 0.01, K2 = 0.03 as ``ssim``;
    it differs in these ways:
    - luminance only: Y = 0.299 R + 0.587 G + 0.114 B of each image;
    - on 0..255 ((Y + 1) / 2 * 255, L = 255): the contrast and structure terms are the same as on
      [-1, 1] with L = 2, but the luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1) is not
      invariant to that offset (``ssim`` on [-1, 1] can even make it negative);
    - 'full' filtering (the script's image.convolve(..., 'full')): the images are zero-padded by 10
      pixels (0 on 0..255, i.e. black) and the map is (H + 10) x (W + 10), border windows included;
    - the plain mean of that map (no mask: the still pixels were filled with -1 beforehand, where
      the map is 1 once a window holds only filled pixels).
    pred, target: (N, 3, H, W) RGB or (N, 1, H, W), on [-1, 1]. Returns (N,) float64.
    """
    pred, target = _pair(pred, target)
    x, y = [(_luma(z)[:, 0] + 1.0) * (AUTHORS_PEAK / 2.0) for z in (pred, target)]
    c1, c2 = (SSIM_K1 * AUTHORS_PEAK) ** 2, (SSIM_K2 * AUTHORS_PEAK) ** 2
    k = _gaussian_kernel(SSIM_SIGMA, SSIM_WINDOW // 2)
    r = SSIM_WINDOW - 1
    full = [(0, 0), (0, 0), (r, r), (r, r)]  # 'valid' filtering of the zero-padded images = 'full'
    mom = _filter_sep(np.pad(np.stack([x, y, x * x, y * y, x * y]), full), k)
    mx, my = mom[0], mom[1]
    vx, vy, cxy = mom[2] - mx * mx, mom[3] - my * my, mom[4] - mx * my
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return smap.reshape(len(smap), -1).mean(axis=1)


def sharpness_difference(pred, target, mask=None, peak=PEAK):
    """Sharpness difference of paper section 4.2 / SPEC "Evaluation".

    10 log10(peak^2 / mean |(grad_i Y + grad_j Y) - (grad_i Y_hat + grad_j Y_hat)|) with
    grad_i Y = |Y[i, j] - Y[i-1, j]| (rows, H) and grad_j Y = |Y[i, j] - Y[i, j-1]| (columns, W),
    per channel. Both neighbours exist only for i, j >= 1, so the mean is over that
    (H - 1) x (W - 1) region and a mask is cropped to mask[..., 1:, 1:].
    Note the mean is of absolute (not squared) differences, as in the paper.
    pred, target: (N, C, H, W) on [-1, 1]. Returns (N,) float64 in dB, larger = sharper match;
    +inf when the gradients agree everywhere (e.g. identical images or a constant offset),
    NaN where the cropped mask is empty.
    """
    pred, target = _pair(pred, target)

    def grad_sum(y):
        return (np.abs(y[..., 1:, 1:] - y[..., :-1, 1:]) + np.abs(y[..., 1:, 1:] - y[..., 1:, :-1]))

    m = _as_mask(mask, pred.shape)
    err = np.abs(grad_sum(target) - grad_sum(pred))
    return _db(peak, _masked_mean(err, None if m is None else m[..., 1:, 1:]))


def blockiness(images, block=8):
    """How much an image's steps line up with the block grid of the coarsest scale (not a measure
    of the paper: it quantifies the 8x8 blocks that nearest-neighbour upscaling, SPEC's u_k, leaves
    when the fine scales do not smooth them away).

    The mean |difference| between neighbouring pixels across the grid lines (between columns
    block-1 and block, 2 block-1 and 2 block, ...; rows likewise) over the mean across all other
    pixel pairs. About 1 for natural images and the synthetic frames; a picture made of
    block x block tiles of flat colour scores (nearly) infinity. images: (N, C, H, W) with H, W >=
    block + 1. Returns (N,) float64; NaN for a flat image."""
    images = np.asarray(images, np.float64)
    if images.ndim != 4 or min(images.shape[2:]) <= block:
        raise ValueError(f"blockiness needs (N, C, H, W) images larger than {block} px, got shape {images.shape}")
    dx, dy = np.abs(np.diff(images, axis=3)), np.abs(np.diff(images, axis=2))
    on_x = np.zeros(dx.shape[3], bool)
    on_x[block - 1::block] = True
    on_y = np.zeros(dy.shape[2], bool)
    on_y[block - 1::block] = True
    across = np.concatenate([dx[..., on_x].reshape(len(images), -1), dy[:, :, on_y].reshape(len(images), -1)], 1)
    within = np.concatenate([dx[..., ~on_x].reshape(len(images), -1), dy[:, :, ~on_y].reshape(len(images), -1)], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return across.mean(axis=1) / within.mean(axis=1)


def sharpness_difference_authors(pred, target):
    """Sharpness difference as the authors' test script computes it (image_error_measures.lua,
    computel1difference).

    Differs from ``sharpness_difference`` in:
    - the error per pixel: |grad_i Y - grad_i Y_hat| + |grad_j Y - grad_j Y_hat| (each gradient
      compared on its own), where the paper prints |(grad_i Y + grad_j Y) - (grad_i Y_hat +
      grad_j Y_hat)|; by the triangle inequality it is never smaller at any pixel;
    - the region: rows and columns 1 .. H-2 / 1 .. W-2 (0-based; the last row and column are left out
      too), but the sum is divided by C * H * W, the whole image's size;
    - the scale: the mean is multiplied by 128^2, the squared-error factor of ``psnr_authors``, though
      these are absolute differences; 10 log10(255^2 / (128^2 e)) is 10 log10(3.97 / e), about the
      paper's formula on [-1, 1] with peak 2 (on a true 0..255 scale it would be 21 dB higher);
    - the error is floored at 1e-4 (at most 88.13 dB), as in ``psnr_authors``.
    All channels are used (no luminance conversion). pred, target: (N, C, H, W) on [-1, 1],
    H, W >= 3. Returns (N,) float64 in dB.
    """
    pred, target = _pair(pred, target)
    n, c, h, w = pred.shape

    def grads(y):  # |Y[i, j] - Y[i, j-1]| and |Y[i, j] - Y[i-1, j]| on rows, columns 1 .. -2
        core = y[..., 1:-1, 1:-1]
        return np.abs(core - y[..., 1:-1, :-2]), np.abs(core - y[..., :-2, 1:-1])

    (pj, pi), (tj, ti) = grads(pred), grads(target)
    total = (np.abs(pj - tj) + np.abs(pi - ti)).reshape(n, -1).sum(axis=1)
    return _db_authors(AUTHORS_SCALE ** 2 * total / (c * h * w))


def fill_still_authors(pred, target, mask, fill=AUTHORS_FILL):
    """The authors' way to score moving areas: still pixels (mask 0) of both prediction and target,
    in every channel, are set to ``fill`` (-1, black), and the whole images are then scored, so the
    means run over the whole image, filled pixels included (which raises PSNR), not over the moving
    pixels (``psnr(..., mask)``). pred, target: (N, C, H, W); mask: (N, 1, H, W) or (N, H, W).
    Returns the filled (pred, target), float64."""
    pred, target = _pair(pred, target)
    keep = _as_mask(mask, pred.shape) > 0
    return np.where(keep, pred, fill), np.where(keep, target, fill)


# ----------------------------------------------------------------------------- optical flow

def _sample(img, x, y):
    """Bilinear samples of img (N, C, H, W) at float coordinates x, y (N, h, w) -> (N, C, h, w).

    Coordinates outside the image are clamped to its border (edge replication)."""
    n, c, h, w = img.shape
    x = np.clip(x, 0.0, w - 1.0)
    y = np.clip(y, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x), max(w - 2, 0)).astype(np.intp)
    y0 = np.minimum(np.floor(y), max(h - 2, 0)).astype(np.intp)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    flat = img.reshape(n, c, h * w)

    def at(yy, xx):
        idx = (yy * w + xx).reshape(n, 1, -1)
        return np.take_along_axis(flat, idx, axis=2).reshape(n, c, *x.shape[1:])

    top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
    return top * (1 - fy) + bottom * fy


def warp(image, flow):
    """Bilinear backward warp: out[n, :, y, x] = image[n, :, y + dy, x + dx].

    image: (N, C, H, W); flow: (N, 2, H, W) in pixels, channel 0 = dx, 1 = dy. Samples falling
    outside the image take the value of the nearest border pixel. Returns (N, C, H, W) float64.
    With the flow convention of ``optical_flow``, warp(frame1, flow) ~= frame0.
    """
    image = np.asarray(image, dtype=np.float64)
    flow = np.asarray(flow, dtype=np.float64)
    h, w = image.shape[-2:]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return _sample(image, xx + flow[:, 0], yy + flow[:, 1])


def _gray(frames):
    f = np.asarray(frames, dtype=np.float64)
    if f.ndim == 3:
        f = f[:, None]
    if f.shape[1] == 3:  # ITU-R BT.601 luma
        f = 0.299 * f[:, 0:1] + 0.587 * f[:, 1:2] + 0.114 * f[:, 2:3]
    elif f.shape[1] != 1:
        raise ValueError(f"frames must be (N, 3, H, W), (N, 1, H, W) or (N, H, W), got {f.shape}")
    return f


_PYR_KERNEL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _resize_flow(flow, h, w):
    """Bilinearly resample a flow field to (h, w), rescaling its vectors to the new grid."""
    fh, fw = flow.shape[-2:]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    xs = np.broadcast_to((xx + 0.5) * fw / w - 0.5, (len(flow), h, w))
    ys = np.broadcast_to((yy + 0.5) * fh / h - 0.5, (len(flow), h, w))
    out = _sample(flow, xs, ys)
    out[:, 0] *= w / fw
    out[:, 1] *= h / fh
    return out


def optical_flow(frame0, frame1, levels=4, iterations=6, window_sigma=2.0, presmooth=1.0,
                 reg=1e-4, min_size=8):
    """Dense optical flow by pyramidal, iterative Lucas-Kanade with warping, on grayscale.

    Returns flow (N, 2, H, W) float64 in pixels, (dx, dy), on frame0's grid, such that
    frame1(x + flow(x)) ~= frame0(x): a pixel at x in frame0 has moved to x + flow(x) in frame1,
    and warp(frame1, flow) ~= frame0.
    frame0, frame1: (N, 3, H, W) RGB (converted to luma), (N, 1, H, W) or (N, H, W), any scale.

    Method: both frames are Gaussian-smoothed (``presmooth`` sigma) and put in an image pyramid
    (5-tap binomial blur, halving, at most ``levels`` levels, none smaller than ``min_size``).
    Coarse to fine, the flow is refined ``iterations`` times per level: frame1 and its gradient
    are warped by the current flow, and each pixel solves the 2x2 Lucas-Kanade system
    (structure tensor and mismatch summed with a Gaussian window of sigma ``window_sigma``,
    gradients averaged between frame0 and warped frame1), damped by ``reg`` on the diagonal.
    The damping only slows steps where there is no texture (there the flow stays near 0); it
    does not move the fixed point elsewhere. Each step is clipped to 1 px.
    Why Lucas-Kanade rather than Horn-Schunck: every pixel's update is a closed-form 2x2 solve,
    so a few iterations per level suffice (Horn-Schunck needs hundreds of smoothing sweeps) and
    there is no global smoothness weight to tune; flat areas, which carry no measurable motion,
    get ~0 flow, which suits a motion mask. The paper used EpicFlow; this is a simpler substitute.
    Accuracy (tests/test_metrics.py): for 0.3-3 px translations of a smooth textured 64x64
    image, mean endpoint error 0.05-0.12 px away from the 8 px border (asserted < 0.15 px;
    about 0.11-0.16 px over the whole frame, where content enters or leaves), mean flow
    within 0.05 px of the shift. A batch of 8 64x64 frames takes about 0.15 s on 2 CPU cores.
    """
    i0, i1 = _gray(frame0), _gray(frame1)
    if i0.shape != i1.shape:
        raise ValueError(f"frame shapes differ: {i0.shape} vs {i1.shape}")
    if presmooth > 0:
        k = _gaussian_kernel(presmooth, int(math.ceil(3 * presmooth)))
        i0, i1 = _filter_sep(i0, k, same=True), _filter_sep(i1, k, same=True)
    pyramid = [(i0, i1)]
    while len(pyramid) < levels and min(pyramid[-1][0].shape[-2:]) >= 2 * min_size:
        a, b = pyramid[-1]
        pyramid.append(tuple(_filter_sep(z, _PYR_KERNEL, same=True)[..., ::2, ::2] for z in (a, b)))
    win = _gaussian_kernel(window_sigma, int(math.ceil(3 * window_sigma)))
    flow = np.zeros((len(i0), 2) + pyramid[-1][0].shape[-2:])
    for a, b in reversed(pyramid):
        h, w = a.shape[-2:]
        if flow.shape[-2:] != (h, w):
            flow = _resize_flow(flow, h, w)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        ay, ax = np.gradient(a[:, 0], axis=(1, 2))
        by, bx = np.gradient(b[:, 0], axis=(1, 2))
        b_stack = np.stack([b[:, 0], bx, by], axis=1)  # warped together, one sampling call
        for _ in range(iterations):
            tx, ty = xx + flow[:, 0], yy + flow[:, 1]
            bw = _sample(b_stack, tx, ty)  # warp(b_stack, flow)
            # Pixels whose match x + flow lies outside frame1 carry no information: weight 0.
            valid = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
            gx, gy = valid * 0.5 * (ax + bw[:, 1]), valid * 0.5 * (ay + bw[:, 2])
            it = bw[:, 0] - a[:, 0]
            sxx, sxy, syy, sxt, syt = _filter_sep(
                np.stack([gx * gx, gx * gy, gy * gy, gx * it, gy * it]), win, same=True)
            sxx, syy = sxx + reg, syy + reg
            det = sxx * syy - sxy * sxy
            du = -(syy * sxt - sxy * syt) / det
            dv = -(sxx * syt - sxy * sxt) / det
            flow = flow + np.clip(np.stack([du, dv], axis=1), -1.0, 1.0)
    return flow


MOTION_THRESHOLD = 0.5  # px; the paper thresholds EpicFlow (section 4.2, footnote 2)
AUTHORS_FLOW_FRACTION = 0.8  # the authors' rule, read off their flow colour coding (flow_colour_mask)


def motion_mask(frame_prev, frame_last, threshold=MOTION_THRESHOLD, **flow_kwargs):
    """Moving-area mask of paper section 4.2 (Figure 3): optical flow magnitude > threshold.

    frame_prev, frame_last: (N, 3, H, W) on [-1, 1]. The flow is ``optical_flow(frame_last,
    frame_prev)``, so the mask lies on frame_last's pixel grid. ``threshold`` is in pixels
    (default 0.5 px); ``flow_kwargs`` go to ``optical_flow``. Returns (N, 1, H, W) bool.
    The paper used EpicFlow and a threshold on its colour-coded flow image; we use our own
    Lucas-Kanade flow and an absolute magnitude threshold, so masks are comparable, not equal.
    """
    flow = optical_flow(frame_last, frame_prev, **flow_kwargs)
    return np.hypot(flow[:, 0], flow[:, 1])[:, None] > threshold


def flow_colour_mask(flow, fraction=AUTHORS_FLOW_FRACTION):
    """The authors' moving-pixel rule on a flow field (N, 2, H, W): (N, 1, H, W) bool, set where
    |flow| > fraction * (the largest |flow| of that image).

    The script marks a pixel moving where a channel of the colour-coded flow image is below 0.2
    (paper footnote 2: EpicFlow's .flo turned into a png by the Middlebury Matlab code). That code
    (flowToColor / computeColor) divides the flow by the image's largest magnitude, so r = |flow| /
    max|flow| <= 1, and blends a colour-wheel entry towards white as 1 - r (1 - colour); every wheel
    entry, and every blend of two neighbouring entries, has a channel at 0, so the smallest channel
    is 1 - r (quantised as floor(255 (1 - r)) / 255, which is < 0.2 exactly when 1 - r < 0.2). So
    "a channel below 0.2" is "r > 0.8": a threshold relative to each image's fastest motion, not a
    fixed flow magnitude in pixels. Our reading: the script does not show the png conversion, and a
    conversion with a fixed maximum flow would make the threshold absolute. An image without motion
    (max 0) has no moving pixel."""
    mag = np.hypot(flow[:, 0], flow[:, 1])[:, None]
    top = mag.reshape(len(mag), -1).max(axis=1) if mag.size else np.zeros(len(mag))
    return mag > fraction * top[:, None, None, None]


def motion_mask_authors(frame_a, frame_b, fraction=AUTHORS_FLOW_FRACTION, **flow_kwargs):
    """Moving area of the pair a -> b by the authors' rule (``flow_colour_mask``), our Lucas-Kanade
    standing in for EpicFlow: flow_colour_mask(optical_flow(a, b)), on a's grid (EpicFlow gives
    the flow of its first image). frame_a, frame_b: (N, 3, H, W). Returns (N, 1, H, W) bool."""
    return flow_colour_mask(optical_flow(frame_a, frame_b, **flow_kwargs), fraction)


# ----------------------------------------------------------------------------- baselines

def last_frame_baseline(history, steps=1):
    """Baseline "last input" of paper Table 2: the last frame copied.

    history: (N, 3m, H, W), oldest first (SPEC "Tensors"). Returns (N, 3 * steps, H, W): the
    last frame repeated for each of the ``steps`` future frames, stacked like Y.
    """
    last = unstack_frames(history)[:, -1]
    return np.concatenate([last] * steps, axis=1)


def flow_baseline(history, steps=1, **flow_kwargs):
    """Baseline "optical flow" of paper Table 2: the last frame moved on by a constant flow.

    history: (N, 3m, H, W), m >= 2, oldest first. With F = optical_flow(last, previous), which
    lies on the last frame's grid and points back in time (previous(x + F) ~= last(x)), a
    constant motion gives next(x) = last(x + F(x)), i.e. next = warp(last, F); the k-th future
    frame is warped k times by the same F. Returns (N, 3 * steps, H, W) float64, stacked like Y.
    """
    frames = unstack_frames(history)
    if frames.shape[1] < 2:
        raise ValueError("flow_baseline needs at least two history frames")
    prev, cur = frames[:, -2], frames[:, -1]
    flow = optical_flow(cur, prev, **flow_kwargs)
    out = []
    for _ in range(steps):
        cur = warp(cur, flow)
        out.append(cur)
    return np.concatenate(out, axis=1)


# ----------------------------------------------------------------------------- evaluation (Table 2, Figure 4)
#
# `python metrics.py evaluate`: paper section 4.2 / SPEC "Evaluation" for one or more checkpoints
# against the two baselines, on a fixed test set. Choices, each following the authors' released
# test script (coupriec/VideoPredictionICLR2016, test-frame-prediction-on-ucf-rec_gdl.lua) where
# it says something:
# - Every model sees the last m of its own clip's input frames; a clip has max(m, 2) + 2 frames
#   (the largest m of the models compared, at least the 2 frames the flow baseline needs), its
#   last two frames are the ground truth of the 1st and the 2nd predicted frame.
# - 2nd frame: recursive, as in the paper (section 4, Figure 4) and the authors' script: the 1st
#   prediction becomes the newest input frame. A model with n >= 2 output frames gives its own
#   2nd output frame instead (one forward pass); the table says which in its "2nd frame" column.
# - Moving areas ("truth", the default): the mask of predicted frame t+k comes from the optical
#   flow of the ground-truth pair (t+k-1, t+k) (t = the last input frame): for frame 1 the last
#   input and the 1st target, for frame 2 the 1st and the 2nd target: our reading of the authors'
#   flow images pred_4_flow / target_1_flow (EpicFlow there, our Lucas-Kanade here; the names could
#   also mean the pairs one frame earlier, which "inputs" approximates). A pixel
#   moves where the flow magnitude exceeds the threshold on either frame's grid: where the content
#   was and where it is now. "inputs": both masks from the last two input frames (t-1, t), which
#   a predictor could know. Masks depend only on the clip, so every row is scored on the same pixels.
# - Masked scores follow SPEC (the mean over the masked pixels only). The authors instead set the
#   unmasked pixels of prediction and target to -1 and scored the whole images, and dropped images
#   whose masked PSNR was 50 dB or more; here every clip counts, a clip without moving pixels
#   is left out of the moving-area means (the table says how many clips had some).
# - `--protocol authors` scores as that script does instead (psnr_authors, ssim_authors,
#   sharpness_difference_authors, fill_still_authors, flow_colour_mask; the section "Two ways to score"
#   of README.md). Where the script leaves a choice open (which frame pair a flow png holds, how
#   the .flo was coloured), the functions' docstrings say what we read.

SCORES = ("psnr", "ssim", "sharp")
SCORE_TITLES = {"psnr": "PSNR", "ssim": "SSIM", "sharp": "Sharp. diff."}
REGIONS = ("whole", "moving")
REGION_TITLES = {"whole": "Whole frames", "moving": "Moving areas"}
FRAMES = ("1st", "2nd")
BASELINES = ("Last input", "Optical flow")


class EvaluationError(Exception):
    """A problem the user can fix (arguments, checkpoint, data, output folder); the message says which."""


CHUNK_PIXELS = 1 << 22      # a chunk's frames hold about this many pixels (4 M: one 4K frame, 16 of 512x512)


def _in_chunks(mask_of_pair, frame_a, frame_b, chunk=16, progress=None):
    """mask_of_pair(a, b) -> (n, 1, H, W) bool, applied to frames (N, 3, H, W) ``chunk`` at a time,
    fewer where they are large (about CHUNK_PIXELS a chunk: the flow's scratch stays bounded).
    progress(text), if given, hears how far it got, at most every 10 s."""
    n, (h, w) = len(frame_a), frame_a.shape[-2:]
    chunk = max(1, min(int(chunk), CHUNK_PIXELS // max(1, h * w)))
    out, start, told = [], time.time(), time.time()
    for s in range(0, n, chunk):
        out.append(mask_of_pair(frame_a[s:s + chunk], frame_b[s:s + chunk]))
        done = min(n, s + chunk)
        if progress is not None and done < n and time.time() - told > 10:
            spent = time.time() - start
            progress(f"  optical flow: {done} of {n} frame pairs, {spent:.0f} s, about {spent * (n - done) / done:.0f} s "
                     f"left for these")
            told = time.time()
    return np.concatenate(out) if out else np.zeros((0, 1, h, w), bool)


def pair_motion_mask(frame_a, frame_b, threshold=MOTION_THRESHOLD, chunk=16, progress=None):
    """Moving area of a pair of consecutive frames a -> b, each (N, 3, H, W) on [-1, 1]:
    (N, 1, H, W) bool, set where the optical flow magnitude exceeds ``threshold`` px on b's grid
    (motion_mask(a, b)) or on a's grid (motion_mask(b, a)). Computed ``chunk`` frames at a time."""
    return _in_chunks(lambda a, b: motion_mask(a, b, threshold) | motion_mask(b, a, threshold), frame_a, frame_b,
                      chunk, progress)


def _mask_frame_pairs(T, pair):
    """The frame pairs (indices into clips of T frames) whose motion masks the 1st and the 2nd
    predicted frame: "truth": (t+k-1, t+k); "inputs": (t-1, t) for both."""
    pairs = {"truth": [(T - 3, T - 2), (T - 2, T - 1)], "inputs": [(T - 4, T - 3)] * 2}
    if pair not in pairs:
        raise ValueError(f"mask pair must be 'truth' or 'inputs', got {pair!r}")
    return pairs[pair]


def moving_masks(clips, pair="truth", threshold=MOTION_THRESHOLD, progress=None):
    """The masks of the 1st and 2nd predicted frame of clips (N, T, 3, H, W), whose last two frames
    are the targets (see the section comment): [mask_1st, mask_2nd], each (N, 1, H, W) bool."""
    pairs = _mask_frame_pairs(clips.shape[1], pair)
    masks = {p: pair_motion_mask(clips[:, p[0]], clips[:, p[1]], threshold, progress=progress)
             for p in sorted(set(pairs))}
    return [masks[p] for p in pairs]


def moving_masks_authors(clips, pair="truth", fraction=AUTHORS_FLOW_FRACTION, chunk=16, progress=None):
    """moving_masks by the authors' rule: the mask of predicted frame t+k is motion_mask_authors of
    the same frame pair as moving_masks uses, on the grid of the pair's first frame (one flow
    image, as the script loads one per frame)."""
    pairs = _mask_frame_pairs(clips.shape[1], pair)
    masks = {p: _in_chunks(lambda a, b: motion_mask_authors(a, b, fraction), clips[:, p[0]], clips[:, p[1]], chunk,
                           progress)
             for p in sorted(set(pairs))}
    return [masks[p] for p in pairs]


def score_frame(pred, target, mask):
    """{(region, score): (N,) per-clip values} for one predicted frame, whole and masked
    (--protocol paper: the formulas as printed, a masked mean over the moving pixels only)."""
    out = {}
    for region, m in (("whole", None), ("moving", mask)):
        out[region, "psnr"] = psnr(pred, target, m)
        out[region, "ssim"] = ssim(pred, target, m)
        out[region, "sharp"] = sharpness_difference(pred, target, m)
    return out


def score_frame_authors(pred, target, mask, drop_db=AUTHORS_DROP_DB):
    """score_frame as the authors' test script scores (--protocol authors): whole frames with the
    *_authors metrics; moving areas on the whole images after fill_still_authors, a clip whose
    moving-area PSNR is >= drop_db (50) losing all three of its moving-area scores (NaN: left out
    of the means and counted by ``dropped_counts``). A clip without moving pixels scores 88.13 dB
    there and so is dropped too. The whole-frame scores drop nothing (the script's run without
    flow images)."""
    out = {}
    for region, (p, t) in (("whole", (pred, target)), ("moving", fill_still_authors(pred, target, mask))):
        out[region, "psnr"] = psnr_authors(p, t)
        out[region, "ssim"] = ssim_authors(p, t)
        out[region, "sharp"] = sharpness_difference_authors(p, t)
    keep = out["moving", "psnr"] < drop_db
    for score in SCORES:
        out["moving", score] = np.where(keep, out["moving", score], np.nan)
    return out


PROTOCOLS = {"paper": score_frame, "authors": score_frame_authors}


def dropped_counts(row):
    """Per predicted frame, the number of clips whose moving-area PSNR is NaN in a scored row: under
    --protocol authors the clips dropped at >= 50 dB; under paper those without moving pixels."""
    return [int(np.sum(np.isnan(row["scores"]["moving", frame, "psnr"]))) for frame in FRAMES]


def model_name(path, config):
    """Table name of a checkpoint: its loss preset and the name of the folder it is in."""
    folder = os.path.basename(os.path.dirname(os.path.abspath(path))) or "."
    name = f"{config.get('loss', '?')} ({folder})"
    return ("single sc. " + name) if config.get("scales") == [4] else name


def load_models(paths):
    """[{name, path, params, config}] for the checkpoints; CheckpointError names a bad one.
    Equal names get the file name added."""
    models = []
    for path in paths:
        path = framepred.resolve_checkpoint(path)     # a run folder stands for its checkpoint.npz
        params, config, state = framepred.load_checkpoint(path)
        models.append(dict(name=model_name(path, config), path=str(path), params=framepred.checkpoint_weights(params, state),
                           config=config, ema=framepred.saved_ema_beta(state)))
    names = [md["name"] for md in models]
    for md in models:
        if names.count(md["name"]) > 1:
            md["name"] += f" [{os.path.basename(md['path'])}]"
    return models


def second_frame_rule(config):
    return "recursive" if config["n"] == 1 else f"direct (output 2 of {config['n']})"


def model_predictions(ops, model, clips, batch=4, memory=framepred.DEFAULT_TILE_MEMORY):
    """The 1st and 2nd predicted frames of one model for clips (N, T, 3, H, W): two float32
    (N, 3, H, W) arrays. The model gets frames [T-2-m, T-2) of each clip (its own last m).
    G runs on batches of clips in tiles (framepred.predict_tiled) within memory bytes."""
    config = model["config"]
    m, n = config["m"], config["n"]
    params = {key: ops.asarray(value) for key, value in model["params"].items() if key.startswith("G/")}
    T = clips.shape[1]

    def run(X):
        return framepred.predict_tiled(ops, params, config, X.astype(np.float32, copy=False), memory)

    first, second = [], []
    for s in range(0, len(clips), batch):
        X = np.ascontiguousarray(stack_frames(clips[s:s + batch, T - 2 - m:T - 2]), dtype=np.float32)
        out = run(X)
        first.append(out[:, :3])
        if n >= 2:
            second.append(out[:, 3:6])
        else:   # recursion: drop the oldest frame, the prediction becomes the newest
            second.append(run(np.concatenate([X[:, 3:], out[:, :3]], axis=1))[:, :3])
    return np.concatenate(first), np.concatenate(second)


def baseline_predictions(clips, name):
    """The 1st and 2nd frames of a baseline from all T-2 input frames of clips (it uses the last
    one or two): "Last input" copies the last frame, "Optical flow" moves it on by its flow twice."""
    T = clips.shape[1]
    history = stack_frames(clips[:, :T - 2])
    if name == "Last input":
        out = last_frame_baseline(history, steps=2)
    else:
        out = np.concatenate([flow_baseline(history[s:s + 16], steps=2) for s in range(0, len(history), 16)])
    return out[:, :3].astype(np.float32), out[:, 3:6].astype(np.float32)


def evaluate_all(ops, models, clips, masks, batch=4, progress=None, scorer=score_frame):
    """Score every model and both baselines on clips (N, T, 3, H, W) with masks [mask_1st, mask_2nd];
    scorer: score_frame (--protocol paper) or score_frame_authors (see PROTOCOLS).

    Returns rows: [{name, checkpoint, m, n, second, preds: (pred_1st, pred_2nd),
    scores: {(region, frame, score): (N,) per clip}}], the models first, then the baselines."""
    T = clips.shape[1]
    targets = (clips[:, T - 2], clips[:, T - 1])
    entries = [(md["name"], md) for md in models] + [(b, None) for b in BASELINES]
    rows = []
    for i, (name, md) in enumerate(entries, 1):
        t0 = time.time()
        if md is not None:
            preds = model_predictions(ops, md, clips, batch)
            row = dict(name=name, checkpoint=md["path"], m=md["config"]["m"], n=md["config"]["n"],
                       second=second_frame_rule(md["config"]))
        else:
            preds = baseline_predictions(clips, name)
            row = dict(name=name, checkpoint="", m=1 if name == "Last input" else 2, n=1,
                       second="copy" if name == "Last input" else "flow applied twice")
        row["preds"], row["scores"] = preds, {}
        for k, frame in enumerate(FRAMES):
            for (region, score), values in scorer(preds[k], targets[k], masks[k]).items():
                row["scores"][region, frame, score] = values
        rows.append(row)
        if progress:
            kind = f"m={row['m']} n={row['n']}" if md is not None else "baseline"
            progress(f"[{i}/{len(entries)}] {name}: {kind}, {len(clips)} clips, "
                     f"1st-frame PSNR {_mean(row['scores']['whole', '1st', 'psnr']):.2f} dB, "
                     f"{time.time() - t0:.1f} s")
    return rows


def _mean(values):
    """Mean over clips, leaving out NaN (a clip without moving pixels); NaN when none is left."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def summarise(rows):
    """Per row, {(region, frame, score): mean over clips} (see _mean)."""
    return [{key: _mean(v) for key, v in row["scores"].items()} for row in rows]


def _fmt(value, score):
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.3f}" if score == "ssim" else f"{value:.2f}"


def table_columns():
    """The value columns of Table 2, in order: (frame, score)."""
    return [(frame, score) for frame in FRAMES for score in SCORES]


def format_text_table(rows, means):
    """The printed table: one block per region, rows = models then baselines, columns = 1st
    frame PSNR SSIM Sharp. diff., 2nd frame PSNR SSIM Sharp. diff., and how the 2nd frame was made."""
    width = max([len(r["name"]) for r in rows] + [12])
    cols = table_columns()
    lines = []
    for region in REGIONS:
        head1 = f"{REGION_TITLES[region]:<{width}}" + "".join(
            f"{'-- ' + f + ' frame --':>{3 * 13 - 8}}{'':8}" for f in FRAMES)
        head2 = f"{'':<{width}}" + "".join(f"{SCORE_TITLES[s]:>13}" for _, s in cols) + "  2nd frame"
        lines += [head1, head2, "-" * len(head2)]
        for row, mean in zip(rows, means):
            lines.append(f"{row['name']:<{width}}" + "".join(
                f"{_fmt(mean[region, f, s], s):>13}" for f, s in cols) + f"  {row['second']}")
        lines.append("")
    return "\n".join(lines)


def format_markdown(rows, means, notes):
    cols = table_columns()
    out = ["# Next-frame prediction scores (layout of the paper's Table 2)", ""]
    out += [f"- {n}" for n in notes] + [""]
    for region in REGIONS:
        out += [f"## {REGION_TITLES[region]}", "",
                "| Model | " + " | ".join(f"{f} {SCORE_TITLES[s]}" for f, s in cols) + " | 2nd frame |",
                "|---|" + "---:|" * len(cols) + "---|"]
        for row, mean in zip(rows, means):
            out.append(f"| {row['name']} | " + " | ".join(_fmt(mean[region, f, s], s) for f, s in cols)
                       + f" | {row['second']} |")
        out.append("")
    return "\n".join(out)


def csv_header():
    return (["model", "checkpoint", "m", "n", "second_frame"]
            + [f"{region}_{f}_{s}" for region in REGIONS for f, s in table_columns()])


def write_csv(path, rows, means):
    import csv
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(csv_header())
        for row, mean in zip(rows, means):
            w.writerow([row["name"], row["checkpoint"], row["m"], row["n"], row["second"]]
                       + [repr(mean[region, f, s]) for region in REGIONS for f, s in table_columns()])


def write_figures(out, rows, clips, masks, count):
    """Per clip i (1-based, the first ``count`` clips): figure4_clip{i}.png, a grid like the paper's
    Figure 4 (rows: input frames, ground truth, the ground truth outside the moving areas blacked
    out as in the paper's Figure 3, then each model's and each baseline's 1st and 2nd predicted
    frame; a title, t-k / t+k captions, the share of moving pixels), and clip{i}.gif, labelled
    side-by-side panels (ground truth, then each row's predictions in table order) through the
    input frames and on to the 1st and 2nd predicted frame, those two framed in red. Returns the
    written paths."""
    T = clips.shape[1]
    written = []
    for i in range(min(count, len(clips))):
        inputs = list(clips[i, :T - 2])
        truth = [clips[i, T - 2], clips[i, T - 1]]
        share = [100 * float(masks[k][i].mean()) for k in range(2)]
        moving = f"Moving areas of the truth\n({share[0]:.0f}% / {share[1]:.0f}% of pixels;\nblack: not moving)"
        if min(share) > 50:     # e.g. the synthetic clips, whose background drifts: the row is nearly the truth
            moving += "\nmost pixels move: close to\nthe ground truth above"
        grid = [inputs, truth, [np.where(masks[k][i], truth[k], -1.0) for k in range(2)]]
        labels = ["Input frames", "Ground truth", moving] + [row["name"] for row in rows]
        captions = [[f"t-{T - 3 - t}" if t < T - 3 else "t" for t in range(T - 2)],
                    ["t+1 (1st predicted)", "t+2 (2nd)"]]
        for row in rows:
            grid.append([row["preds"][0][i], row["preds"][1][i]])
        png = os.path.join(out, f"figure4_clip{i + 1}.png")
        title = f"Clip {i + 1}: {T - 2} input frames, then each row's 1st and 2nd predicted frame (t+1, t+2)"
        save_grid_png(png, grid, labels=labels, captions=captions, title=title)
        names = ["the clip (truth)"] + [row["name"] for row in rows]
        frames = [[f] * len(names) for f in inputs]
        frames += [[clips[i, T - 2 + k]] + [row["preds"][k][i] for row in rows] for k in range(2)]
        captions = [f"input {t + 1} of {T - 2} (the same frame in every panel)" for t in range(T - 2)] + [
            f"t+{k + 1}: each row's {'1st' if k == 0 else '2nd'} predicted frame (red), the truth on the left"
            for k in range(2)]
        gif = os.path.join(out, f"clip{i + 1}.gif")
        save_gif(gif, frames, fps=2, min_size=96, labels=names, captions=captions, first_predicted=T - 2)
        written += [png, gif]
    return written


def load_test_set(data, split_list, every_nth, count, length, size, val=False):
    """(clips (N, length, 3, H, W) float32, a description). DataError on a bad path or set.
    val: the synthetic videos' validation draw instead of their test clips (for choosing settings)."""
    import warnings
    from data import DataError, DataWarning, open_source
    if val and data is not None:
        raise DataError("--val is for the synthetic videos; with --data, hold out videos with --split-list")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        try:
            source = open_source(data, split_list=split_list, every_nth=every_nth, subset="test")
            clips = source.test_clips(count, length, size, **({"split": "val"} if val else {}))
        finally:  # the skipped videos' reasons are shown also when no clip is left
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
    if data is None:
        what = ("synthetic validation clips (data.SyntheticVideos.test_clips(split='val'), seed 0)" if val
                else "synthetic held-out clips (data.SyntheticVideos.test_clips, seed 0)")
    else:
        what = (f"video {data}, its last 20% of frames" if source.split_in_time else
                f"video folder {data}, test subset" + (f" of split list {split_list}" if split_list else "")
                + f", every {every_nth}th video" * (every_nth > 1))
    return clips, f"{what}: {len(clips)} clips of {length} frames at {clips.shape[3]}x{clips.shape[4]} (HxW)"


def repeats_last_input(clips, last):
    """(N,) bool: a frame after frame ``last`` (the last input) equals it exactly, as in a video with
    duplicated frames: copying the last input scores +inf dB PSNR on that frame, and a table's means
    with it. clips: (N, T, 3, H, W). train_min's held-out clips (m+1 frames: last = m-1) and
    evaluate's (the 1st and 2nd frames to predict after frame T-3) are checked by it."""
    return np.any(np.all(clips[:, last + 1:] == clips[:, last:last + 1], axis=(2, 3, 4)), axis=1)


def protocol_notes(protocol, rows, count):
    """Lines that say which protocol scored the table: [title, how it scores, then (authors) the clips
    each row dropped]. The first line heads the printed table and the notes of table.md."""
    if protocol == "authors":
        lines = ["Protocol: authors (scored as the authors' released test script does; "
                 "`metrics.py evaluate --protocol authors`)",
                 "Scores as in the authors' test script: [-1, 1] differences times 128 for 0..255, peak 255, "
                 "errors floored at 1e-4; SSIM on the luminance, 0..255, 'full' (zero-padded) 11x11 "
                 "Gaussian window; Sharp. diff. |d grad_i| + |d grad_j|. Moving areas: still pixels set to -1 "
                 "in prediction and target, then the whole images scored; a clip whose moving-area PSNR "
                 "is >= 50 dB is dropped from that row's moving-area means."]
        lines += [f"Dropped (moving-area PSNR >= {AUTHORS_DROP_DB:g} dB), 1st / 2nd frame, of {count} clips: "
                  + "; ".join(f"{row['name']} {a} / {b}" for row in rows for a, b in [dropped_counts(row)])]
        return lines
    return ["Protocol: paper (the formulas as the paper prints them; `metrics.py evaluate --protocol paper`)",
            "Scores on the [-1, 1] scale, peak 2; means over clips. PSNR and Sharp. diff. in dB, "
            "SSIM 11x11 Gaussian window (sigma 1.5), RGB; moving areas: means over the moving pixels only."]


def evaluate(args):
    """Handler of ``metrics.py evaluate``; returns the exit status (see build_parser)."""
    from data import DataError
    from kernels import BackendError, load_backend

    def progress(msg):
        print(msg, file=sys.stderr, flush=True)
    try:
        if args.size is not None and any(s % 8 or s < 16 for s in args.size):
            raise EvaluationError(f"--size {args.size[0]} {args.size[1]}: each side must be a multiple of 8 "
                                  f"(the generator's four scales) and at least 16 (SSIM's 11x11 window)")
        models = load_models(args.checkpoint)
        framepred.check_output_folder(args.out, EvaluationError, "the tables and figures")
        for md in models:
            progress(f"model {md['name']}: {md['path']} (m={md['config']['m']}, n={md['config']['n']}"
                     + (f"; G's weights averaged, ema {md['ema']:g})" if md.get("ema") else ")"))
        length = max([md["config"]["m"] for md in models] + [2]) + 2
        clips, described = load_test_set(args.data, args.split_list, args.every_nth, args.clips, length,
                                         args.size, val=args.val)
        repeated = repeats_last_input(clips, clips.shape[1] - 3)
        if repeated.any() and not repeated.all():
            clips = clips[~repeated]
            described += (f"; {int(repeated.sum())} of them left out, whose frame to predict repeats the last "
                          f"input exactly (copying would score inf dB)")
        elif repeated.all():
            described += ("; in every clip a frame to predict repeats the last input exactly (a video with "
                          "duplicated frames, or nothing moves): copying scores inf dB PSNR")
        h, w = clips.shape[-2:]
        if h % 8 or w % 8 or min(h, w) < 16:
            raise EvaluationError(f"test frames of {h}x{w}: need sides that are multiples of 8 and at least 16; "
                                  f"pass --size")
        progress(f"test set: {described}")
        ops = load_backend(args.device)
        framepred.make_output_folder(args.out, EvaluationError)
        t0 = time.time()
        progress(f"moving-area masks: our optical flow of {len(clips)} clips, 2 frame pairs each, at "
                 f"{clips.shape[-2]}x{clips.shape[-1]} (HxW; minutes on large frames) ...")
        if args.protocol == "authors":
            masks = moving_masks_authors(clips, args.mask_pair, progress=progress)
            rule = f"flow > {AUTHORS_FLOW_FRACTION} x the frame's largest flow"
        else:
            masks = moving_masks(clips, args.mask_pair, args.motion_threshold, progress=progress)
            rule = f"flow > {args.motion_threshold} px"
        moving = [int(np.sum(mk.reshape(len(mk), -1).any(axis=1))) for mk in masks]
        frac = [float(mk.mean()) for mk in masks]
        progress(f"moving-area masks ({args.mask_pair} pair, {rule}): "
                 f"{100 * frac[0]:.1f}% / {100 * frac[1]:.1f}% of the pixels, {time.time() - t0:.1f} s")
        rows = evaluate_all(ops, models, clips, masks, args.batch, progress, scorer=PROTOCOLS[args.protocol])
    except (CheckpointError, DataError, BackendError, EvaluationError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    means = summarise(rows)
    pair_text = ("the ground-truth pair (t+k-1, t+k) for predicted frame t+k" if args.mask_pair == "truth"
                 else "the last two input frames (t-1, t), for both predicted frames")
    protocol_lines = protocol_notes(args.protocol, rows, len(clips))
    if args.protocol == "authors":
        mask_text = (f"Moving areas: optical-flow magnitude above {AUTHORS_FLOW_FRACTION} x the largest in "
                     f"the frame (the authors' colour-coded flow image below 0.2 in a channel), on the first "
                     f"frame of {pair_text}")
    else:
        mask_text = f"Moving areas: optical-flow magnitude above {args.motion_threshold} px on either frame of {pair_text}"
    notes = protocol_lines[:1] + [
        f"Test set: {described}.",
    ] + protocol_lines[1:] + [
        f"{mask_text}; pyramidal Lucas-Kanade flow (metrics.optical_flow), where the paper used "
        f"EpicFlow. Clips with moving pixels: {moving[0]} (1st frame), {moving[1]} (2nd frame) of "
        f"{len(clips)}; {100 * frac[0]:.1f}% / {100 * frac[1]:.1f}% of all pixels.",
        "2nd frame: 'recursive' = the 1st prediction fed back as the newest input frame (paper); "
        "'direct' = the model's own 2nd output frame (n >= 2).",
        "Optical flow baseline: the last input moved on by the flow between the last two inputs "
        "(once for the 1st frame, twice for the 2nd).",
    ]
    if args.figures:
        notes.append(f"Figures (first {min(args.figures, len(clips))} clips): figure4_clip{{i}}.png rows = input frames, "
                     "ground truth (t+1, t+2), the ground truth outside the moving areas blacked out, then "
                     "each row of the table (1st, 2nd predicted frame); clip{i}.gif panels, left to right: "
                     "ground truth, " + ", ".join(row["name"] for row in rows) + ".")
    text = format_text_table(rows, means)
    print("\n".join(protocol_lines[:1] + [""] + [text] + protocol_lines[2:]))
    try:
        with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as fh:
            fh.write(format_markdown(rows, means, notes))
        write_csv(os.path.join(args.out, "table.csv"), rows, means)
        figures = write_figures(args.out, rows, clips, masks, args.figures)
    except OSError as e:
        print(f"error: cannot write to {args.out}: {e}", file=sys.stderr)
        return 1
    progress(f"wrote {os.path.join(args.out, 'table.md')}, {os.path.join(args.out, 'table.csv')}"
             + (f" and {len(figures)} figures (figure4_clip*.png, clip*.gif)" if figures else ""))
    return 0


# ----------------------------------------------------------------------------- command line

_positive_int, _count = int_at_least(1), int_at_least(0)


def build_parser():
    """Argument parser of ``python metrics.py COMMAND ...``.

    Subcommands register here: p = sub.add_parser(name, ...); p.set_defaults(func=handler),
    where handler(args) returns the exit status.
    """
    from kernels import DEVICES
    parser = argparse.ArgumentParser(prog="metrics.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser(
        "evaluate", help="scores of checkpoints and baselines in the layout of the paper's Table 2",
        description="Score one or more checkpoints and the last-input and optical-flow baselines on a "
                    "test set: PSNR, SSIM and sharpness difference of the 1st and 2nd (recursive) "
                    "predicted frame, on whole frames and on moving areas (paper section 4.2, Table 2). "
                    "Prints the table and writes DIR/table.md, DIR/table.csv, DIR/figure4_clip{i}.png "
                    "and DIR/clip{i}.gif.")
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="C", type=framepred.path_text, help="run folders of train_min.py or "
                   "their checkpoint.npz files; each model reads its own last m frames, so models with "
                   "different m can be compared")
    p.add_argument("--data", metavar="PATH", type=framepred.path_text, help="folder of videos (its test subset), or one video file "
                   "(its last 20%% of frames); default: the synthetic held-out clips")
    p.add_argument("--split-list", metavar="F", type=framepred.path_text, help="UCF101-style test list for --data (e.g. testlist01.txt)")
    p.add_argument("--val", action="store_true", help="score on the synthetic videos' validation draw instead "
                   "of their test clips (for choosing settings without looking at the test set)")
    p.add_argument("--every-nth", type=_positive_int, default=10, metavar="N",
                   help="with --data: every Nth test video, 1st, (N+1)th, ... (paper: 10; default %(default)s)")
    p.add_argument("--clips", type=_positive_int, default=32, help="number of test clips (default %(default)s)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="center crop of the test frames "
                   "(multiples of 8); default: the whole frame (synthetic: 64x64)")
    p.add_argument("--device", choices=list(DEVICES), default="auto",
                   help="auto, cpu, gpu, or reference (the plain NumPy ops) (default %(default)s)")
    p.add_argument("--out", default="evaluation", metavar="DIR", type=framepred.path_text, help="output folder (default %(default)s)")
    p.add_argument("--batch", type=_positive_int, default=4, metavar="B",
                   help="clips per generator pass (default %(default)s)")
    p.add_argument("--figures", type=_count, default=3, metavar="K",
                   help="write figures for the first K clips (default %(default)s; 0: none)")
    p.add_argument("--mask-pair", choices=["truth", "inputs"], default="truth",
                   help="frames whose optical flow makes the moving-area mask: 'truth' = (t+k-1, t+k) for "
                        "predicted frame t+k (our reading of the authors' test script); 'inputs' = the last two "
                        "input frames (default %(default)s)")
    p.add_argument("--motion-threshold", type=framepred.number_in(0), default=MOTION_THRESHOLD, metavar="PX",
                   help="flow magnitude (pixels) above which a pixel is moving (default %(default)s; "
                        "--protocol paper)")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="paper",
                   help="paper: the formulas as the paper prints them (masked means over the moving pixels); "
                        "authors: as the authors' released test script scores (still pixels set to -1 and "
                        "whole images scored, clips >= 50 dB dropped, SSIM on luminance, moving pixels above "
                        "0.8 x the frame's largest flow); see README 'Two ways to score' (default %(default)s)")
    p.set_defaults(func=evaluate)
    return parser


def main(argv=None):
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
