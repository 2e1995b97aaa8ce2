"""Natural-looking test videos without a download: a virtual camera pans (and sometimes zooms and
rotates) over the photographs bundled in scikit-image's wheel, and in about a third of the clips a
crop of another photo slides across as an independently moving object.

    python docs/make_pans.py --out /tmp/pans
    python train_min.py --data /tmp/pans --split-list /tmp/pans/val_list.txt

Writes DIR/<photo>_<i>/0000.png ... (frame folders, as data.VideoFolder reads them) and
DIR/val_list.txt, the clips of the held-out photos (for --split-list). Deterministic given --seed."""
import argparse, sys
from pathlib import Path

import numpy as np
from PIL import Image
import skimage.data as skd

# Photographs that load offline from the wheel (those behind skd.fetch/pooch are left out);
# the greyscale ones are repeated to RGB.
PHOTOS = {
    "astronaut": skd.astronaut, "chelsea": skd.chelsea, "coffee": skd.coffee, "rocket": skd.rocket,
    "hubble": skd.hubble_deep_field, "ihc": skd.immunohistochemistry,
    "motorcycle": lambda: skd.stereo_motorcycle()[0], "camera": skd.camera, "coins": skd.coins,
    "moon": skd.moon, "grass": skd.grass, "gravel": skd.gravel, "brick": skd.brick,
    "page": skd.page, "text": skd.text}


def load(name, short_side):
    """Photo as float32 (H, W, 3) in [0, 255], resized (Lanczos) so its shorter side is short_side."""
    img = Image.fromarray(np.asarray(PHOTOS[name]())).convert("RGB")
    k = short_side / min(img.size)
    img = img.resize((round(img.width * k), round(img.height * k)), Image.LANCZOS)
    return np.asarray(img, dtype=np.float32)


def bilinear(img, x, y):
    """img (H, W, C) sampled at float coordinates x, y (any shape) -> (*x.shape, C); clamps at the border."""
    H, W = img.shape[:2]
    x, y = np.clip(x, 0, W - 1.001), np.clip(y, 0, H - 1.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bot = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def camera(rng, photo_hw, T, w, h, tries=100):
    """Per-frame (centre x, centre y, scale, angle) of a window that stays inside the photo: constant
    velocity 0.5-3 px/frame in a random direction; half the clips zoom (0.98-1.02 per frame), a
    third rotate (up to 0.4 degrees per frame). None if no start position fits."""
    H, W = photo_hw
    u = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [(w - 1) / 2, (h - 1) / 2]  # window corners
    for _ in range(tries):
        speed, heading = rng.uniform(0.5, 3), rng.uniform(0, 2 * np.pi)
        zoom = rng.uniform(0.98, 1.02) if rng.random() < 0.5 else 1.0
        spin = np.radians(rng.uniform(-0.4, 0.4)) if rng.random() < 1 / 3 else 0.0
        t = np.arange(T)
        dx, dy = speed * np.cos(heading) * t, speed * np.sin(heading) * t
        s, a = rng.uniform(0.8, 1.2) * zoom ** t, rng.uniform(-0.1, 0.1) + spin * t
        cos, sin = np.cos(a)[:, None], np.sin(a)[:, None]
        # the window's corners in every frame, relative to the start centre
        cx = dx[:, None] + s[:, None] * (cos * u[:, 0] - sin * u[:, 1])
        cy = dy[:, None] + s[:, None] * (sin * u[:, 0] + cos * u[:, 1])
        lo, hi = np.array([-cx.min(), -cy.min()]), np.array([W - 1 - cx.max(), H - 1 - cy.max()])
        if np.all(hi > lo):
            x0, y0 = rng.uniform(lo, hi)
            return x0 + dx, y0 + dy, s, a
    return None


def render(photo, track, w, h):
    """uint8-ready float frames (T, h, w, 3) seen through the window track = (cx, cy, scale, angle)."""
    j, i = np.meshgrid(np.arange(w) - (w - 1) / 2, np.arange(h) - (h - 1) / 2)
    frames = []
    for cx, cy, s, a in zip(*track):
        x = cx + s * (np.cos(a) * j - np.sin(a) * i)
        y = cy + s * (np.sin(a) * j + np.cos(a) * i)
        frames.append(bilinear(photo, x, y))
    return np.stack(frames)


def paste_object(rng, frames, donor):
    """Slide a soft-edged elliptical crop of donor across frames (in place) at 1-4 px/frame."""
    T, h, w = frames.shape[:3]
    side = min(h, w)  # object sides: 1/4 to 1/2 of the frame's shorter side
    ph, pw = rng.integers(side // 4, side // 2 + 1, 2)
    y0, x0 = rng.integers(0, np.array(donor.shape[:2]) - side // 2)
    yy, xx = np.mgrid[:ph, :pw]
    r = np.hypot((yy - (ph - 1) / 2) / (ph / 2), (xx - (pw - 1) / 2) / (pw / 2))
    mask = np.clip((1 - r) * min(ph, pw) / 4, 0, 1)[..., None]  # ~2 px soft edge
    rgba = np.concatenate([donor[y0:y0 + ph, x0:x0 + pw], mask * 255], 2)
    patch = np.pad(rgba, ((2, 2), (2, 2), (0, 0)))  # zero border: bilinear's clamping gives alpha 0 outside
    heading = rng.uniform(0, 2 * np.pi)
    v = rng.uniform(1, 4) * np.array([np.cos(heading), np.sin(heading)])
    mid = np.array([w, h]) / 2 - v * (T - 1) / 2 + rng.uniform(-0.2, 0.2, 2) * [w, h]  # crosses the middle
    j, i = np.meshgrid(np.arange(w), np.arange(h))
    for t in range(T):
        px, py = mid + v * t - np.array([pw, ph]) / 2 - 2  # top-left of the padded patch
        p = bilinear(patch, j - px, i - py)
        alpha = p[..., 3:] / 255
        frames[t] = frames[t] * (1 - alpha) + p[..., :3] * alpha


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    ap.add_argument("--clips-per-photo", type=int, default=6)
    ap.add_argument("--frames", type=int, default=12, help="frames per clip")
    ap.add_argument("--size", default="96x96", help="frame size WxH")
    ap.add_argument("--photo-side", type=int, default=256, help="photos are resized to this shorter side")
    ap.add_argument("--object-frac", type=float, default=1 / 3, help="fraction of clips with a moving object")
    ap.add_argument("--val-frac", type=float, default=0.25, help="fraction of photos held out (at least 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    w, h = map(int, args.size.lower().split("x"))
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty; give a new folder")
    rng = np.random.default_rng(args.seed)
    names = sorted(PHOTOS)
    photos = {n: load(n, args.photo_side) for n in names}
    val = sorted(rng.permutation(names)[:max(2, round(len(names) * args.val_frac))].tolist())
    train = sorted(set(names) - set(val))
    val_clips = []
    for name in names:
        split = "val" if name in val else "train"
        donors = [d for d in (val if split == "val" else train) if d != name]  # objects stay in the split
        for k in range(args.clips_per_photo):
            track = camera(rng, photos[name].shape[:2], args.frames, w, h)
            if track is None:
                sys.exit(f"photo {name} {photos[name].shape[1]}x{photos[name].shape[0]} is too small "
                         f"for {w}x{h} frames; raise --photo-side")
            frames = render(photos[name], track, w, h)
            if rng.random() < args.object_frac:
                paste_object(rng, frames, photos[donors[rng.integers(len(donors))]])
            clip = out / f"{name}_{k}"
            clip.mkdir(parents=True)
            for t, f in enumerate(np.clip(np.rint(frames), 0, 255).astype(np.uint8)):
                Image.fromarray(f).save(clip / f"{t:04d}.png")
            val_clips += [clip.name] if split == "val" else []
    (out / "val_list.txt").write_text("".join(c + "\n" for c in val_clips))
    n = len(names) * args.clips_per_photo
    print(f"{len(names)} photos ({', '.join(names)}) -> {n} clips of {args.frames} frames {w}x{h} "
          f"({n * args.frames} frames) in {out}")
    print(f"train: {len(train)} photos, {n - len(val_clips)} clips; "
          f"val: {len(val)} photos ({', '.join(val)}), {len(val_clips)} clips -> {out / 'val_list.txt'}")


if __name__ == "__main__":
    main()
