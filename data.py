"""Training and test data for framepred: synthetic moving sprites, or a folder of videos.

Conventions (SPEC.md, "Tensors"): frames are RGB scaled to [-1, 1] (``x / 127.5 - 1``), laid out
(N, C, H, W) as float32. A clip of T frames is stacked on the channel axis oldest first, frame t
channel c at channel ``3 t + c``. ``source.sample(batch, m, n, patch, rng)`` returns
X (batch, 3m, patch, patch) and Y (batch, 3n, patch, patch); ``source.test_clips`` returns a fixed
held-out set (count, length, 3, H, W). Training patches are kept only when they move enough
(paper section 4.1): see ``motion`` and ``MIN_MOTION``.
"""
import contextlib
import functools
import os
import re
import sys
import warnings
from collections import OrderedDict, deque
from pathlib import Path

import numpy as np

# imageio's ffmpeg plugin reads these; animated .gif files are read through Pillow (the plugin refuses them)
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".wmv", ".gif")
UNREAD_VIDEO_EXTS = (".m4v", ".3gp", ".flv", ".ogv", ".mts", ".m2ts")   # it refuses these: a warning says so
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
MIN_MOTION = 1e-3  # default threshold on motion(): mean squared frame difference on [-1, 1]
MAX_TRIES = 20     # default number of draws before the motion filter gives up (keeps the last)


def available_mib():
    """The memory Linux reports available, in MiB; None where /proc/meminfo cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) // 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def default_cache_mib():
    """The decoded-frame cache's default size: half the memory Linux reports available, at least
    1024 MiB (1024 where /proc/meminfo cannot be read)."""
    available = available_mib()
    return 1024 if available is None else max(1024, available // 2)


class DataError(Exception):
    """A problem with the input data (missing, empty, corrupt, unusable); the message names it."""


class DataWarning(UserWarning):
    """A video was skipped (corrupt, too short or too small); training goes on without it."""


def show_warning(message, category, filename, lineno, file=None, line=None):
    """A warnings.showwarning that prints one line, "warning: MESSAGE", to stderr: no file name,
    no line of our source. Warnings other than DataWarning keep their category's name."""
    kind = "" if issubclass(category, DataWarning) else f" ({category.__name__})"
    print(f"warning{kind}: {message}", file=sys.stderr if file is None else file, flush=True)


# ----------------------------------------------------------------------------- tensor helpers
def to_unit(frames):
    """uint8 values 0..255 (any shape) -> float32 in [-1, 1]: ``x / 127.5 - 1``."""
    return np.asarray(frames, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def to_uint8(x):
    """Inverse of ``to_unit``: values in [-1, 1] (any shape) -> uint8, rounded and clipped."""
    return np.clip(np.rint((np.asarray(x, dtype=np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def stack_frames(frames):
    """(..., T, 3, H, W) -> (..., 3T, H, W): frame t, colour c goes to channel 3t + c."""
    f = np.asarray(frames)
    return f.reshape(f.shape[:-4] + (f.shape[-4] * f.shape[-3],) + f.shape[-2:])


def unstack_frames(x, channels=3):
    """(..., 3T, H, W) -> (..., T, 3, H, W); inverse of ``stack_frames``."""
    x = np.asarray(x)
    if x.shape[-3] % channels:
        raise ValueError(f"{x.shape[-3]} channels is not a multiple of {channels}")
    return x.reshape(x.shape[:-3] + (x.shape[-3] // channels, channels) + x.shape[-2:])


def motion(clip):
    """How much a clip (T, 3, H, W) on the [-1, 1] scale moves: the mean over its T-1 pairs of
    consecutive frames of the mean squared difference. 0 for a still clip, about 0.01 for a
    32x32 patch with one sprite edge moving 1 px, about 2.5e-4 for +-2 levels of codec noise."""
    clip = np.asarray(clip, dtype=np.float32)
    return float(np.mean(np.square(clip[1:] - clip[:-1]))) if len(clip) > 1 else 0.0


def center_crop(x, h, w):
    """Crop the last two axes of x to (h, w) around the center (rounding the offset down)."""
    H, W = x.shape[-2:]
    y0, x0 = (H - h) // 2, (W - w) // 2
    return x[..., y0:y0 + h, x0:x0 + w]


def crop_size(hw, max_side):
    """(H, W) -> (h, w), each side at most max_side rounded down to a multiple of 8 (at least 8);
    max_side 0 or None: (H, W) as it is."""
    if not max_side:
        return tuple(hw)
    side = max(8, max_side // 8 * 8)
    return tuple(min(d, side) for d in hw)


def _natural_key(name):
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", str(name))]


def _check_sample_args(batch, m, n, patch):
    """The four sizes as ints; DataError unless each is a positive integer."""
    for name, v in (("batch", batch), ("m", m), ("n", n), ("patch", patch)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise DataError(f"{name} must be a positive integer, got {v!r}")
    return int(batch), int(m), int(n), int(patch)


def _filtered(draw, min_motion, max_tries):
    """Call draw() (-> clip (T,3,h,w)) until the clip moves more than min_motion, at most
    max_tries times (at least once); if none does, keep the last draw. min_motion <= 0: the first."""
    for _ in range(max(1, int(max_tries))):
        clip = draw()
        if min_motion <= 0 or motion(clip) > min_motion:
            break
    return clip


def _split_xy(clips, m):
    """(batch, m+n, 3, h, w) -> X (batch, 3m, h, w), Y (batch, 3n, h, w), float32."""
    return (np.ascontiguousarray(stack_frames(clips[:, :m]), dtype=np.float32),
            np.ascontiguousarray(stack_frames(clips[:, m:]), dtype=np.float32))


# ----------------------------------------------------------------------------- reading
def read_frames(path, last=None, max_bytes=None):
    """Decode a video file (VIDEO_EXTS, via imageio's ffmpeg plugin) or a folder of
    .png/.jpg/.jpeg frames (sorted by natural order: 2.png before 10.png) into uint8 (T, H, W, 3).
    last: keep only the last `last` frames (T <= last): a folder's other images are not opened,
    a video's earlier frames are decoded (ffmpeg reads a stream in order) but not kept, so memory
    holds `last` frames whatever the length. max_bytes (with last None): keep only the first frames
    that fit in max_bytes (at least one), the rest not decoded, with a DataWarning. Raises DataError
    naming the file when it is missing, unreadable, corrupt or empty."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"video does not exist: {p}")
    if p.is_dir():
        files = sorted((f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file()),
                       key=lambda f: _natural_key(f.name))
        if not files:
            videos = [f.name for f in p.iterdir() if f.suffix.lower() in VIDEO_EXTS]
            raise DataError(f"no {'/'.join(IMAGE_EXTS)} frames in folder {p}"
                            + (f": it holds videos (give one of them, e.g. {p / videos[0]})" if videos else ""))
        if last is not None:
            files = files[-int(last):]
        from PIL import Image
        frames = []
        for f in files:
            if _full(frames, max_bytes, last):
                break
            try:
                with Image.open(f) as im:
                    frames.append(_image_rgb(im, f))
            except DataError:
                raise
            except Exception as e:
                raise DataError(f"cannot read frame {f}: {e}") from e
            if frames[-1].shape != frames[0].shape:
                raise DataError(f"frame {f} is {frames[-1].shape[1]}x{frames[-1].shape[0]}, "
                                f"the first frame of {p} is {frames[0].shape[1]}x{frames[0].shape[0]}")
        _warn_if_cut(p, frames, len(files), max_bytes)
        return _stack_freeing(frames)
    if p.suffix.lower() in UNREAD_VIDEO_EXTS:
        raise DataError(f"{p}: {_unread_hint(p)}")
    if p.suffix.lower() not in VIDEO_EXTS:
        raise DataError(f"not a video ({'/'.join(VIDEO_EXTS)}) or frame folder: {p}")
    frames, decoded, more = ([] if last is None else deque(maxlen=int(last))), 0, False
    try:
        with contextlib.closing(_decoded(p)) as reader:
            for frame in reader:
                if _full(frames, max_bytes, last):
                    more = True
                    break
                frames.append(_rgb(frame))
                decoded += 1
    except Exception as e:  # ffmpeg's errors come as OSError, RuntimeError, IndexError...
        if not frames and "does not contain any stream" in str(e):
            raise DataError(f"video {p} has no video stream (a sound file?)") from e
        if not frames:
            raise DataError(f"cannot decode video {p}: {_brief(e)}") from e
        warnings.warn(f"video {p} is truncated after {decoded} frames ({_brief(e)})", DataWarning)
    if not frames:
        raise DataError(f"video {p} has no frames")
    _warn_if_cut(p, frames, len(frames) + more, max_bytes)
    return _stack_freeing(frames)


def _decoded(path):
    """A video file's frames in order, each as its decoder gives it: a .gif's through Pillow (each
    frame as shown, earlier frames under its transparent pixels), the others through imageio's ffmpeg plugin."""
    if path.suffix.lower() == ".gif":
        from PIL import Image, ImageSequence
        with Image.open(path) as im:
            for frame in ImageSequence.Iterator(im):
                yield np.asarray(frame.convert("RGB"))
        return
    import imageio.v2 as iio
    with iio.get_reader(str(path), format="FFMPEG", output_params=_frames_as_stored()) as reader:
        yield from reader


@functools.lru_cache(maxsize=1)
def _frames_as_stored():
    """ffmpeg's output options that pass each stored frame through once. Without them ffmpeg
    resamples a video of variable frame rate (phones record such) to a constant rate, repeating
    some frames and dropping others; `-fps_mode` is ffmpeg 5.1's name for the older `-vsync`."""
    import imageio_ffmpeg
    try:
        version = re.match(r"n?(\d+)\.(\d+)", imageio_ffmpeg.get_ffmpeg_version())
    except Exception:  # an ffmpeg that does not say: imageio's own error comes when it is run
        version = None
    old = version is not None and (int(version[1]), int(version[2])) < (5, 1)
    return ["-vsync", "0"] if old else ["-fps_mode", "passthrough"]


def _image_rgb(im, path):
    """A PIL image -> uint8 (H, W, 3). 16-bit grayscale (modes I;16*, and I as Pillow opens 16-bit
    PNGs) is scaled to 8 bits: convert("RGB") would clip it to white."""
    if im.mode.startswith("I;16") or im.mode == "I":
        gray = np.asarray(im, dtype=np.float64) / 257.0        # 65535 -> 255
        return np.repeat(np.clip(np.rint(gray), 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    if im.mode == "F":
        raise DataError(f"frame {path} holds floating-point pixels (mode F): save it as 8- or 16-bit PNG or JPG")
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _full(frames, max_bytes, last):
    """Whether one more frame would take the frames kept so far past max_bytes (read_frames)."""
    return last is None and max_bytes is not None and frames and (len(frames) + 1) * frames[0].nbytes > max_bytes


def _warn_if_cut(path, frames, available, max_bytes):
    if len(frames) < available:
        h, w = frames[0].shape[:2]
        warnings.warn(f"video {path}: only its first {len(frames)} frames are used: {len(frames)} frames of {w}x{h} "
                      f"fill the {max_bytes / 2 ** 20:.0f} MiB of frame memory (shorten or downscale it, or free "
                      f"memory)", DataWarning, stacklevel=3)


def _stack_freeing(frames):
    """np.stack of a list or deque of equal (H, W, 3) frames, each let go once copied: a decoded video
    is held once at the peak, not twice (a minute of 1080p is about 11 GB)."""
    held, frames = frames, list(frames)
    held.clear()                                  # the caller's container lets go of its frames
    out = np.empty((len(frames),) + frames[0].shape, frames[0].dtype)
    for i in range(len(frames)):
        out[i], frames[i] = frames[i], None
    return out


def _brief(e):
    """A one-line account of an exception (ffmpeg's errors carry its whole log)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = lines[0] if lines else ""
    if len(lines) > 1 and lines[-1] != msg:
        msg += " ... " + lines[-1]
    return f"{type(e).__name__}: {msg}"[:300]


def _rgb(frame):
    """A decoded frame (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> uint8 (H, W, 3)."""
    f = np.asarray(frame).reshape(frame.shape[:2] + (-1,))
    return np.ascontiguousarray(np.repeat(f, 3, axis=2) if f.shape[2] == 1 else f[:, :, :3], dtype=np.uint8)


# ----------------------------------------------------------------------------- synthetic data
SPRITE_GRID = np.mgrid[-8:9, -8:9].astype(np.float32)  # sprite-local (y, x) coordinates, half-size up to 8


class SyntheticVideos:
    """Endless, deterministic synthetic videos: 2-4 textured sprites (discs or squares, with stripe,
    checker or noise texture, distinct colours) over a smooth periodic background that is still
    or drifts 1 px/frame. Sprites move at 1-3 px/frame (integer steps, so textures stay sharp),
    (per axis) bounce at the walls and, with probability ``p_change`` per frame, pick a new velocity:
    mostly predictable from the past, sometimes not (the multimodal case of paper section 2).

    Clip k of the training stream is rendered from ``default_rng([seed, 0, k])`` (k drawn from the
    caller's rng); test clip i from ``default_rng([seed, 1, i])``: the two never coincide. Sprite j
    of a clip moves by its own stream ``[seed, *key, 1 + j]``, so shorter clips are prefixes."""

    def __init__(self, seed=0, frame_size=64, min_motion=MIN_MOTION, max_tries=MAX_TRIES, p_change=0.1, pans=0.0):
        if int(seed) != seed or not 0 <= seed < 2 ** 32:  # one 32-bit word: keys stay apart
            raise DataError(f"seed must be an integer in [0, 2**32), got {seed!r}")
        if frame_size < 16:
            raise DataError(f"frame_size must be at least 16, got {frame_size}")
        self.seed, self.frame_size = int(seed), int(frame_size)
        self.min_motion, self.max_tries, self.p_change, self.pans = min_motion, max_tries, p_change, pans
        self.skipped = []  # never anything here; same attribute as VideoFolder

    def render(self, length, key, size=None, window=None):
        """Render the clip named by key (a tuple of non-negative ints): float32 (length, 3, S, S)
        in [-1, 1], S = size or frame_size. The same key and size always give the same clip, and a
        shorter clip is the start of a longer one (trajectories draw from their own streams).
        window: (y, x, side) renders only the pixels [y, y + side) x [x, x + side) of that clip,
        the same values as cropping the whole clip (a training patch costs its own pixels only)."""
        rng = np.random.default_rng([self.seed, *key])
        S, T = int(size or self.frame_size), int(length)
        y0, x0, side = (0, 0, S) if window is None else (int(w) for w in window)
        t = np.arange(T, dtype=np.float32)[:, None, None]
        # background: base colour + 3 periodic sinusoids, each with its own colour, moving with v_bg
        # (cos(a + b) = cos a cos b - sin a sin b keeps the work on (T, S) vectors)
        dirs = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)]
        vy, vx = (0, 0) if rng.random() < 0.5 else dirs[rng.integers(8)]
        out = np.empty((T, 3, side, side), np.float32)
        out[:] = rng.uniform(-0.4, 0.4, 3).astype(np.float32)[None, :, None, None]
        s = np.arange(S, dtype=np.float32)
        sy, sx = s[y0:y0 + side], s[x0:x0 + side]  # the window's pixel coordinates
        for _ in range(3):
            ky, kx = (int(k) for k in rng.integers(-3, 4, 2))
            a = (2 * np.pi / S) * kx * (sx[None, None, :] - vx * t) + float(rng.uniform(0, 2 * np.pi))  # (T,1,side)
            b = (2 * np.pi / S) * ky * (sy[None, :, None] - vy * t)  # (T,side,1)
            wave = np.cos(a) * np.cos(b) - np.sin(a) * np.sin(b)
            out += rng.uniform(-0.2, 0.2, 3).astype(np.float32)[None, :, None, None] * wave[:, None]
        # sprites, drawn in order (later ones occlude earlier ones)
        count = int(rng.integers(2, 5))
        hues = (rng.random() + np.arange(count) / count) % 1.0
        ly, lx = SPRITE_GRID
        for i in range(count):
            r = int(rng.integers(4, 9))
            pos = self._trajectory(np.random.default_rng([self.seed, *key, 1 + i]), T, r, S)
            y, x = ly[8 - r:9 + r, 8 - r:9 + r], lx[8 - r:9 + r, 8 - r:9 + r]
            mask = (y ** 2 + x ** 2 <= r * r + r) if rng.random() < 0.5 else np.ones(y.shape, bool)
            kind = rng.integers(3)
            if kind == 0:  # stripes
                theta, period = float(rng.uniform(0, np.pi)), float(rng.uniform(3, 6))
                tex = np.cos(2 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / period)
            elif kind == 1:  # checker
                c = int(rng.integers(2, 4))
                tex = (((x + r) // c + (y + r) // c) % 2) * 2 - 1
            else:  # noise
                tex = rng.uniform(-1, 1, y.shape)
            # the sprite's look is fixed (texture moves with it), positions are integers: paste it
            sprite = _hue_to_rgb(hues[i])[:, None, None] * (0.65 + 0.35 * tex.astype(np.float32))
            for t, (py, px) in enumerate(pos.tolist()):  # the part of the sprite inside the window
                top, left = py - r - y0, px - r - x0  # the sprite's corner in window coordinates
                cy = slice(max(0, -top), min(2 * r + 1, side - top))  # rows of the sprite to paste
                cx = slice(max(0, -left), min(2 * r + 1, side - left))
                if cy.start < cy.stop and cx.start < cx.stop:
                    np.copyto(out[t, :, top + cy.start:top + cy.stop, left + cx.start:left + cx.stop],
                              sprite[:, cy, cx], where=mask[cy, cx])
        return np.clip(out, -1, 1, out=out)

    def _trajectory(self, rng, T, r, S=None):
        """Integer (y, x) centres (T, 2) of a sprite of half-size r in S x S frames (S: frame_size by
        default): constant velocity, bouncing off the walls, a new random velocity with probability
        p_change at each frame."""
        lo, hi = r, (S or self.frame_size) - 1 - r
        p, v = rng.integers(lo, hi + 1, 2).tolist(), _velocity(rng).tolist()  # Python ints: a short loop
        pos = [tuple(p)]
        for _ in range(1, T):
            if rng.random() < self.p_change:
                v = _velocity(rng).tolist()
            for a in range(2):
                p[a] += v[a]
                if p[a] < lo:  # bounce off the walls
                    p[a], v[a] = 2 * lo - p[a], -v[a]
                elif p[a] > hi:
                    p[a], v[a] = 2 * hi - p[a], -v[a]
            pos.append(tuple(p))
        return np.array(pos[:T], np.int64).reshape(T, 2)

    def sample(self, batch, m, n, patch, rng):
        """Random training patches: X float32 (batch, 3m, patch, patch), Y float32
        (batch, 3n, patch, patch) in [-1, 1], frames stacked oldest first (channel 3t + c). Each
        sample is a fresh clip of m+n frames and a random patch location, redrawn (up to max_tries
        draws) until motion() > min_motion; or, with probability ``pans``, a camera pan (pan_clip) over
        one frame rendered at zoom * patch + 8(m+n) px or more (half of them at zoom 2: half-pixel
        speeds). Deterministic given rng's state and self.seed."""
        batch, m, n, patch = _check_sample_args(batch, m, n, patch)
        if patch > self.frame_size:
            raise DataError(f"patch {patch} is larger than the synthetic frame size {self.frame_size}")
        S = self.frame_size

        def draw():  # a clip's key, then the patch's place in it; only the patch is rendered
            key = (0, int(rng.integers(2 ** 62)))
            y, x = rng.integers(0, S - patch + 1, 2)
            return self.render(m + n, key, window=(y, x, patch))

        def pan():  # one frame, rendered large enough to move the window; half at zoom 2 (half-pixel speeds)
            zoom = 2 if rng.random() < 0.5 else 1
            frame = self.render(1, (0, int(rng.integers(2 ** 62))), size=max(S, zoom * patch + 8 * (m + n)))
            return pan_clip(to_uint8(frame[0].transpose(1, 2, 0)), m + n, patch, rng, zoom)
        clips = np.stack([pan() if self.pans and rng.random() < self.pans
                          else _filtered(draw, self.min_motion, self.max_tries) for _ in range(batch)])
        return _split_xy(clips, m)

    def test_clips(self, count, length, size=None, split="test"):
        """The fixed held-out set: float32 (count, length, 3, H, W) in [-1, 1], clip i rendered from
        key (1, i). split="val": a second fixed set, from keys (2, i), for choosing training
        settings without looking at the test clips. size: optional (H, W) center crop; default
        the whole frame with its sides cropped down to multiples of 8."""
        if split not in ("test", "val"):
            raise DataError(f"split must be 'test' or 'val', got {split!r}")
        S = self.frame_size
        h, w = (S // 8 * 8, S // 8 * 8) if size is None else (int(size[0]), int(size[1]))
        if not (0 < h <= S and 0 < w <= S):
            raise DataError(f"test clip size {size} does not fit in the {S}x{S} synthetic frames")
        stream = 1 if split == "test" else 2
        _check_clips_fit(int(count), int(length), (h, w), "fewer clips (metrics.py evaluate --clips, train_min.py --eval-clips)")
        clips = [center_crop(self.render(length, (stream, i)), h, w) for i in range(int(count))]
        return np.stack(clips) if clips else np.zeros((0, int(length), 3, h, w), np.float32)


def _velocity(rng, top=3):
    """A random integer velocity (vy, vx), each in -top..top, not both zero."""
    while True:
        v = rng.integers(-top, top + 1, 2)
        if v.any():
            return v


def _hue_to_rgb(h):
    """A saturated colour of hue h in [0, 1) as float32 (3,) in [-0.9, 0.9]."""
    rgb = np.clip(np.abs((h * 6 + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1)
    return (rgb * 1.8 - 0.9).astype(np.float32)


# ----------------------------------------------------------------------------- video folders
def find_videos(root):
    """All videos under root, recursively, in sorted (natural) order: video files by extension
    (case-insensitive) and frame folders (directories directly holding .png/.jpg/.jpeg files).
    Linked folders are followed (each real folder once); hidden files and folders (".name", such
    as macOS's "._clip.mp4") are left out."""
    found, unread, seen = [], [], set()
    for d, dirs, files in os.walk(root, followlinks=True):
        seen.add(os.path.realpath(d))
        dirs[:] = sorted((x for x in dirs if not x.startswith(".") and os.path.realpath(os.path.join(d, x)) not in seen),
                         key=_natural_key)
        names = sorted((f for f in files if not f.startswith(".")), key=_natural_key)
        if any(Path(f).suffix.lower() in IMAGE_EXTS for f in names):
            found.append(Path(d))
        found += [Path(d) / f for f in names if Path(f).suffix.lower() in VIDEO_EXTS]
        unread += [Path(d) / f for f in names if Path(f).suffix.lower() in UNREAD_VIDEO_EXTS]
    if unread:
        warnings.warn(f"{len(unread)} video file(s) left out, e.g. {unread[0]}: {_unread_hint(unread[0])}",
                      DataWarning, stacklevel=2)
    return found


def _unread_hint(path):
    return (f"imageio does not read {path.suffix} files (rename a .m4v or .3gp to .mp4, or convert it: "
            f"ffmpeg -i '{path.name}' '{path.stem}.mp4')")


def _read_split_list(path):
    """Entries of a UCF101-style list ('Class/v_Class_g01_c01.avi[ index]'), in order, as
    lower-case relative paths without a video extension. A name may hold spaces; a trailing
    class index (UCF101's trainlist) is dropped; a byte-order mark is ignored."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"split list {'is a folder, not a file' if p.is_dir() else 'does not exist'}: {p}")
    try:
        lines = p.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    except OSError as e:
        raise DataError(f"cannot read split list {p}: {e}") from e
    entries = [_without_index(ln.strip()) for ln in lines]
    return [_list_key(e) for e in entries if e and not e.startswith("#")]


def _without_index(entry):
    """'Class/v_Class_g01_c01.avi 1' -> 'Class/v_Class_g01_c01.avi'; 'my clip 2.mp4' as it is."""
    named = re.fullmatch(r"(.+?)\s+\d+", entry)
    return named[1] if named and Path(named[1]).suffix.lower() in VIDEO_EXTS else entry


def _list_key(rel):
    rel = rel.replace("\\", "/").strip("/").lower()
    return rel[: -len(Path(rel).suffix)] if Path(rel).suffix in VIDEO_EXTS else rel


class VideoFolder:
    """Videos found recursively under ``path`` (see find_videos), e.g. UCF101 as downloaded, or the
    one video file ``path`` names.

    Train/test split: with ``split_list`` (UCF101 testlist01.txt format), the listed videos are
    the test set, in list order, thinned to every ``every_nth`` one (1st, 11th, ... for 10), and all
    the others are the training set. Entries match by relative path (a suffix of it, ignoring
    case and the video extension), else by file name. Without a split list the last 10% of the
    videos (at least one) are held out as the test set (thinned by every_nth); a lone video is
    split in time: its first 80% of frames for training, the rest for testing.
    ``subset`` ("train" or "test") picks which set ``sample`` draws from; ``test_clips`` always
    uses the test set.

    Videos are decoded lazily, once, into uint8 frames kept in an LRU cache of at most
    ``cache_mib`` MiB (default: ``default_cache_mib()``; of a video bigger than that only the first
    frames that fit are decoded and used, with a DataWarning). Once the cache has had
    to evict, ``sample`` draws a video from among the cached ones with probability ``reuse``
    (else uniformly from all), so that each decode serves about 1 / (1 - reuse) samples and
    decoding does not dominate training; reuse=0 draws uniformly always. Corrupt videos, videos
    with too few frames and videos smaller than the patch are skipped with a DataWarning and
    recorded in ``self.skipped`` as (path, reason); ``self.decodes`` and ``self.evictions`` count."""

    def __init__(self, path, split_list=None, every_nth=1, subset="train", cache_mib=None,
                 min_motion=MIN_MOTION, max_tries=MAX_TRIES, reuse=0.9, pans=0.0):
        root, videos = Path(path), None
        if not root.exists():
            raise DataError(f"video folder does not exist: {root}")
        if root.is_file() and root.suffix.lower() in VIDEO_EXTS:
            videos = [root]                          # one video file: as a folder of that video alone
        elif root.is_file() and root.suffix.lower() in UNREAD_VIDEO_EXTS:
            raise DataError(f"{root}: {_unread_hint(root)}")
        elif not root.is_dir():
            raise DataError(f"not a video file or a folder: {root} (give a {' '.join(VIDEO_EXTS)} file, or the "
                            f"folder that holds the videos)")
        if subset not in ("train", "test"):
            raise DataError(f"subset must be 'train' or 'test', got {subset!r}")
        if int(every_nth) != every_nth or every_nth < 1:
            raise DataError(f"every_nth must be a positive integer, got {every_nth!r}")
        self.root, self.subset, self.min_motion, self.max_tries = root, subset, min_motion, max_tries
        self.split_list = split_list
        self.reuse, self.pans = reuse, pans
        cache_mib = default_cache_mib() if cache_mib is None else cache_mib
        self.cache_bytes, self.decodes, self.evictions, self.skipped = int(cache_mib * 2 ** 20), 0, 0, []
        self._cache, self._bad = OrderedDict(), {}
        videos = videos or find_videos(root)
        if not videos:
            raise DataError(f"no videos in {root}: searched recursively for {' '.join(VIDEO_EXTS)} "
                            f"files and folders of {' '.join(IMAGE_EXTS)} frames")
        # an entry is (path, part): part None = all frames, "head"/"tail" = first 80% / the rest
        if split_list is not None:
            train, test = self._split_by_list(videos, split_list)
        elif len(videos) >= 2:
            k = max(1, len(videos) // 10)
            train, test = [(v, None) for v in videos[:-k]], [(v, None) for v in videos[-k:]]
        else:
            train, test = [(videos[0], "head")], [(videos[0], "tail")]
        self.train_videos, self.test_videos = train, test[::int(every_nth)]
        self.videos = list(self.train_videos if subset == "train" else self.test_videos)
        if not self.videos:
            raise DataError(f"the {subset} subset of {root} is empty"
                            + (f" (split list {split_list})" if split_list is not None else ""))

    @property
    def split_in_time(self):
        """Whether the source is one video split in time (its first 80% of frames train)."""
        return len(self.train_videos) == 1 and self.train_videos[0][1] == "head"

    def split_summary(self):
        """One line saying which videos (or which frames of a lone video) train and which are held out."""
        train, test = self.train_videos, self.test_videos
        if self.split_in_time:
            return (f"data: one video, {train[0][0]}: split in time, its first 80% of frames for training and "
                    f"the last 20% held out for the scores (give more videos, or --split-list, to hold out "
                    f"whole videos)")
        how = (f"the {len(test)} listed in {self.split_list}" if self.split_list is not None
               else f"the last {len(test)} in sorted order (10%; --split-list chooses)")
        return (f"data: {len(train) + len(test)} videos under {self.root}: {len(train)} for training, {how} "
                f"held out for the scores")

    def _split_by_list(self, videos, split_list):
        index = {}  # every path suffix (lower case, no video extension) -> videos
        folder = self.root if self.root.is_dir() else self.root.parent
        for v in videos:
            parts = _list_key(v.relative_to(folder).as_posix()).split("/")
            for i in range(len(parts)):
                index.setdefault("/".join(parts[i:]), []).append(v)
        listed, missing = [], []
        for key in _read_split_list(split_list):
            hits = index.get(key) or index.get(key.rsplit("/", 1)[-1])
            (listed.extend(hits) if hits else missing.append(key))
        listed = list(dict.fromkeys(listed))
        if not listed:
            raise DataError(f"no entry of split list {split_list} matches a video under {self.root}")
        if missing:
            warnings.warn(f"{len(missing)} entries of split list {split_list} are not under {self.root} "
                          f"(e.g. {missing[0]})", DataWarning, stacklevel=3)
        chosen = set(listed)
        return [(v, None) for v in videos if v not in chosen], [(v, None) for v in listed]

    def _load(self, entry):
        """uint8 (T, H, W, 3) frames of an entry, through the LRU cache; DataError if unreadable."""
        path, part = entry
        frames = self._cache.get(path)
        if frames is None:
            frames = read_frames(path, max_bytes=self.cache_bytes)   # at most its first frames that fit
            self.decodes += 1
            self._cache[path] = frames
            while sum(f.nbytes for f in self._cache.values()) > self.cache_bytes:
                self._cache.popitem(last=False)
                self.evictions += 1
        else:
            self._cache.move_to_end(path)
        cut = int(round(len(frames) * 0.8))
        return frames if part is None else frames[:cut] if part == "head" else frames[cut:]

    def _get(self, entry, min_len, min_hw):
        """Frames of entry if it is readable, has min_len frames and is at least min_hw (h, w);
        else None, after a DataWarning and an entry in self.skipped (once per entry)."""
        if entry in self._bad:
            return None
        try:
            frames = self._load(entry)
        except DataError as e:
            reason = str(e)
        else:
            T, H, W = frames.shape[:3]
            if T < min_len and entry[1] is not None:      # one part of a lone video (see __init__)
                whole = len(self._cache.get(entry[0], ())) or "?"
                part = "first 80%" if entry[1] == "head" else "last 20%"
                reason = (f"its {part} of frames, {T} of {whole}, is too short: {min_len} needed (a video "
                          f"given alone needs at least {5 * min_len} frames; give more videos)")
            elif T < min_len:
                reason = f"only {T} frame{'s' * (T != 1)}, {min_len} needed"
            elif H < min_hw[0] or W < min_hw[1]:
                reason = f"frames of {W}x{H} are smaller than {min_hw[1]}x{min_hw[0]}"
            else:
                return frames
        self._bad[entry] = reason
        self.skipped.append((str(entry[0]), reason))
        warnings.warn(f"skipping video {entry[0]}: {reason}", DataWarning, stacklevel=3)
        return None

    def sample(self, batch, m, n, patch, rng):
        """Random training patches from random videos of the subset: X float32 (batch, 3m, patch,
        patch), Y float32 (batch, 3n, patch, patch) in [-1, 1], channel 3t + c. Each sample: a video
        drawn at random (see ``reuse``), then m+n consecutive frames at a random start and a random patch location,
        redrawn in that video (up to max_tries draws) until motion() > min_motion; or, with
        probability ``pans``, a camera pan over one of its frames (pan_clip at zoom 1, 2 or 4 alike:
        whole-, half- or quarter-pixel speeds, where the frame holds zoom x the patch). Unusable videos
        are dropped for good; DataError when none is left. Deterministic given rng's state."""
        batch, m, n, patch = _check_sample_args(batch, m, n, patch)
        clips = []
        try:
            while len(clips) < batch:
                if not self.videos:
                    raise DataError(f"no usable video left in {self.root} ({len(self.skipped)} skipped"
                                    + (f", e.g. {self.skipped[0][0]}: {self.skipped[0][1]})" if self.skipped else ")"))
                cached = [e for e in self.videos if e[0] in self._cache] if self.evictions else []
                if cached and rng.random() < self.reuse:  # the subset does not fit in the cache
                    entry = cached[int(rng.integers(len(cached)))]
                else:
                    entry = self.videos[int(rng.integers(len(self.videos)))]
                frames = self._get(entry, m + n, (patch, patch))
                if frames is None:
                    self.videos.remove(entry)
                    continue
                T, H, W = frames.shape[:3]

                def draw():
                    t, y, x = rng.integers(T - m - n + 1), rng.integers(H - patch + 1), rng.integers(W - patch + 1)
                    return to_unit(frames[t:t + m + n, y:y + patch, x:x + patch]).transpose(0, 3, 1, 2)
                if self.pans and rng.random() < self.pans:
                    # zoom 1, 2 or 4 (whole-, half- or quarter-pixel speeds), of those the frame holds with room to move
                    zoom = int(rng.choice([1] + [z for z in (2, 4) if min(H, W) >= z * patch + m + n - 1]))
                    clips.append(pan_clip(frames[int(rng.integers(T))], m + n, patch, rng, zoom))
                else:
                    clips.append(_filtered(draw, self.min_motion, self.max_tries))
        except DataError:
            raise
        except Exception as e:  # never a raw numpy/imageio traceback
            raise DataError(f"sampling from {self.root} failed: {type(e).__name__}: {e}") from e
        return _split_xy(np.stack(clips), m)

    def test_clips(self, count, length, size=None, max_side=None):
        """The fixed held-out set: float32 (at most count, length, 3, H, W) in [-1, 1]. Clip i is
        frames [0, length) of the i-th usable test video; if more clips are wanted than there are
        videos, later non-overlapping windows follow, round robin. size: (H, W) center crop;
        default the largest size all clips share, cropped down to multiples of 8 (kept in
        self.test_frame_size). max_side: then crop that centre to at most max_side (a multiple of 8)
        on each side, before the clips become float32 (train_min's evaluations score such a crop;
        32 whole clips of HD frames would take gigabytes). Warns when fewer than count clips can be
        made; DataError when none can."""
        count, length = int(count), int(length)
        min_hw = (8, 8) if size is None else (int(size[0]), int(size[1]))
        clips, lengths = [], []  # clips: uint8 (length, H, W, 3) copies, not views of whole videos
        for entry in self.test_videos:
            if len(clips) >= count:
                break
            frames = self._get(entry, length, min_hw)
            if frames is not None:
                clips.append(frames[:length].copy())
                lengths.append((entry, len(frames)))
        windows = max((T for _, T in lengths), default=0) // length
        extra = [(e, w) for w in range(1, windows) for e, T in lengths if T >= (w + 1) * length]
        extra, got = extra[:count - len(clips)], {}
        for entry in dict.fromkeys(e for e, _ in extra):  # decode each video once more
            frames = self._load(entry)
            got.update({(e, w): frames[w * length:(w + 1) * length].copy() for e, w in extra if e == entry})
        clips += [got[k] for k in extra]
        if not clips:
            why = [f"{Path(path).name}: {self._bad[(path, part)]}" for path, part in self.test_videos
                   if (path, part) in self._bad]
            held_out = (f" (held out: {'; '.join(why[:3])}{'; ...' if len(why) > 3 else ''}; replace them, or "
                        f"choose the held-out videos with --split-list)") if why else ""
            raise DataError(f"no usable test video with {length} frames of at least {min_hw[1]}x{min_hw[0]} in "
                            f"{self.root}{held_out}")
        if len(clips) < count:
            warnings.warn(f"only {len(clips)} test clips of {length} frames in {self.root}, "
                          f"{count} asked for", DataWarning, stacklevel=2)
        if size is None:
            min_hw = (min(c.shape[1] for c in clips) // 8 * 8, min(c.shape[2] for c in clips) // 8 * 8)
        self.test_frame_size = min_hw
        training = {path for path, _ in self.train_videos}
        for path, _ in self.test_videos:     # read for these clips only: their memory goes back to training's
            if path not in training:
                self._cache.pop(path, None)
        crop = crop_size(min_hw, max_side)
        _check_clips_fit(len(clips), length, crop, "a centre crop (metrics.py evaluate --size H W) or fewer clips (--clips)")
        clips = [center_crop(center_crop(c.transpose(0, 3, 1, 2), *min_hw), *crop) for c in clips]
        return to_unit(np.stack(clips))  # one float32 copy


def _check_clips_fit(count, length, hw, remedy):
    """DataError, before they are made, when count held-out clips of length frames of hw = (H, W)
    would take more than the memory available as float32; remedy: what to score instead."""
    need_mib, available = count * length * 3 * hw[0] * hw[1] * 4 / 2 ** 20, available_mib()
    if available is not None and need_mib > available:
        raise DataError(f"{count} held-out clips of {length} frames of {hw[1]}x{hw[0]} take {need_mib / 1024:.1f} GiB "
                        f"as float32, more than the {available / 1024:.1f} GiB available: score {remedy}")


# the fastest camera pan, in pixels of the patch per frame on each axis: 5 scored 0.22 dB above 3
# on the validation videos (stop 33, both seeds; README "Real video")
PAN_SPEED = 5


def pan_clip(frame, length, patch, rng, zoom=1):
    """A camera pan over one still frame: float32 (length, 3, patch, patch) in [-1, 1]. A window of
    side zoom * patch moves by a random integer velocity (-PAN_SPEED zoom..PAN_SPEED zoom px per frame on each axis,
    not both 0; less when the frame is too small to hold it) and is averaged down zoom x zoom, so
    the patch moves by multiples of 1 / zoom px per frame (zoom 2: half pixels, 4: quarter pixels).
    frame: uint8 (H, W, 3), H and W >= zoom * patch."""
    H, W = frame.shape[:2]
    side = zoom * patch
    v = _velocity(rng, PAN_SPEED * zoom)
    room = np.array([H - side, W - side]) // max(1, length - 1)  # the largest speed that fits, per axis
    v = np.clip(v, -room, room)
    span = np.abs(v) * (length - 1)
    start = np.array([rng.integers(H - side - span[0] + 1), rng.integers(W - side - span[1] + 1)])
    start += np.where(v < 0, span, 0)  # a negative velocity starts at the far side
    y, x = start[0] + v[0] * np.arange(length), start[1] + v[1] * np.arange(length)
    windows = np.stack([frame[y[t]:y[t] + side, x[t]:x[t] + side] for t in range(length)])  # (length, side, side, 3)
    pooled = to_unit(windows).reshape(length, patch, zoom, patch, zoom, 3).mean(axis=(2, 4))
    return np.ascontiguousarray(pooled.transpose(0, 3, 1, 2))


def open_source(path=None, *, split_list=None, every_nth=1, subset="train", seed=0, cache_mib=None,
                min_motion=MIN_MOTION, pans=0.0):
    """The data source for training and evaluation: SyntheticVideos(seed) when path is None,
    else VideoFolder(path, split_list, every_nth, subset, cache_mib). Training patches move more
    than min_motion (motion(); 0 keeps still ones); a fraction ``pans`` of the training samples are
    camera pans over one of the frames (pan_clip)."""
    if not np.isfinite(min_motion) or min_motion < 0:
        raise DataError(f"the motion threshold must be a number >= 0, got {min_motion!r}")
    if not 0 <= pans <= 1:  # False for NaN too
        raise DataError(f"the fraction of camera pans must be a number in [0, 1], got {pans!r}")
    if path is None:
        if split_list is not None:
            raise DataError("a split list (--split-list) names videos of a folder: give the folder with --data")
        return SyntheticVideos(seed, min_motion=min_motion, pans=pans)
    return VideoFolder(path, split_list=split_list, every_nth=every_nth, subset=subset, cache_mib=cache_mib,
                       min_motion=min_motion, pans=pans)
