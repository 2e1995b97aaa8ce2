"""Tests for data.py: tensor helpers, SyntheticVideos, read_frames and VideoFolder.

The folder tests write their own small videos (12 frames of 40x48, a moving square) with imageio
into a UCF101-like layout under tmp_path; nothing is downloaded."""
import io
import shutil
import warnings
from collections import deque

import imageio.v2 as iio
import numpy as np
import pytest
from hypothesis import given, strategies as st
from PIL import Image

import data
from data import DataError, DataWarning, SyntheticVideos, VideoFolder


# ----------------------------------------------------------------------------- helpers
def moving_square(T=12, H=40, W=48, speed=2, seed=0):
    """uint8 (T, H, W, 3): a bright 10x10 square moving right by `speed` px/frame over static noise."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(40, 120, (H, W, 3), dtype=np.uint8)
    frames = np.repeat(bg[None], T, axis=0)
    for t in range(T):
        x = (2 + speed * t) % (W - 10)
        frames[t, 12:22, x:x + 10] = (250, 200, 30)
    return frames


def write_video(path, frames):
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.mimwrite(str(path), list(frames), fps=10, macro_block_size=8)
    return path


def write_frame_folder(folder, frames):
    """Frames as 1.png, 2.png, ..., 12.png (natural order differs from lexicographic order)."""
    folder.mkdir(parents=True, exist_ok=True)
    for t, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{t + 1}.png")
    return folder


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """Video files written once and copied into each test's folder (ffmpeg is the slow part)."""
    d = tmp_path_factory.mktemp("templates")
    return {
        "avi": write_video(d / "a.avi", moving_square(seed=1)),
        "avi2": write_video(d / "b.avi", moving_square(seed=2, speed=3)),
        "mp4": write_video(d / "c.mp4", moving_square(seed=3)),
        "short": write_video(d / "short.avi", moving_square(T=3, seed=4)),
        "tiny": write_video(d / "tiny.avi", moving_square(T=12, H=16, W=24, speed=1, seed=5)),
    }


def put(templates, name, dest):
    dest.parent.mkdir(parents=True, exist_ok=True)
    return shutil.copyfile(templates[name], dest)


@pytest.fixture(scope="module")
def ucf(templates, tmp_path_factory):
    """data/UCF-101/<Class>/v_<Class>_gXX_c01.avi plus a frame folder and a stray text file."""
    root = tmp_path_factory.mktemp("data")
    u = root / "UCF-101"
    put(templates, "avi", u / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi")
    put(templates, "avi2", u / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g02_c01.avi")
    put(templates, "mp4", u / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g03_c01.mp4")
    # UCF101's own quirk: folder HandstandPushups, files v_HandStandPushups_...
    put(templates, "avi2", u / "HandstandPushups" / "v_HandStandPushups_g01_c01.avi")
    write_frame_folder(u / "BoxingBag" / "v_BoxingBag_g01_c01", moving_square(H=36, W=44, seed=6))
    (u / "notes.txt").write_text("not a video")
    return root


# ----------------------------------------------------------------------------- tensor helpers
def test_data_to_unit_to_uint8_roundtrip():
    u = np.arange(256, dtype=np.uint8)
    x = data.to_unit(u)
    assert x.dtype == np.float32 and x[0] == -1.0 and x[-1] == 1.0
    assert np.array_equal(data.to_uint8(x), u)
    assert np.array_equal(data.to_uint8(np.array([-3.0, 3.0])), [0, 255])  # clipped


@given(T=st.integers(1, 5), lead=st.integers(0, 2))
def test_data_stack_unstack_layout(T, lead):
    shape = (2,) * lead + (T, 3, 4, 5)
    f = np.arange(np.prod(shape)).reshape(shape)
    s = data.stack_frames(f)
    assert s.shape == (2,) * lead + (3 * T, 4, 5)
    for t in range(T):
        for c in range(3):
            assert np.array_equal(s[..., 3 * t + c, :, :], f[..., t, c, :, :])
    assert np.array_equal(data.unstack_frames(s), f)


def test_data_motion():
    still = np.zeros((4, 3, 8, 8), np.float32)
    assert data.motion(still) == 0.0
    moving = still.copy()
    moving[2:] = 1.0
    assert data.motion(moving) == pytest.approx(1.0 / 3.0)  # one jump of 1 over 3 pairs


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_sample_shapes_dtype_range():
    src = data.open_source(None, seed=0)
    assert isinstance(src, SyntheticVideos)
    for m, n, patch in ((4, 1, 32), (8, 8, 16), (2, 3, 64)):
        X, Y = src.sample(3, m, n, patch, np.random.default_rng(0))
        assert X.shape == (3, 3 * m, patch, patch) and Y.shape == (3, 3 * n, patch, patch)
        assert X.dtype == np.float32 and Y.dtype == np.float32
        assert X.min() >= -1 and X.max() <= 1 and Y.min() >= -1 and Y.max() <= 1
        assert X.std() > 0.1  # not blank


def test_synthetic_deterministic_and_seeded():
    a = SyntheticVideos(seed=3).sample(4, 4, 1, 32, np.random.default_rng(7))
    b = SyntheticVideos(seed=3).sample(4, 4, 1, 32, np.random.default_rng(7))
    c = SyntheticVideos(seed=4).sample(4, 4, 1, 32, np.random.default_rng(7))
    d = SyntheticVideos(seed=3).sample(4, 4, 1, 32, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], d[0])
    # consecutive calls on one rng go on with new data
    rng = np.random.default_rng(7)
    src = SyntheticVideos(seed=3)
    assert not np.array_equal(src.sample(4, 4, 1, 32, rng)[0], src.sample(4, 4, 1, 32, rng)[0])


def test_synthetic_test_clips_fixed_and_disjoint():
    src = SyntheticVideos(seed=0)
    t1 = src.test_clips(6, 5)
    t2 = SyntheticVideos(seed=0).test_clips(6, 5)
    assert t1.shape == (6, 5, 3, 64, 64) and t1.dtype == np.float32
    assert np.array_equal(t1, t2)
    assert np.array_equal(src.test_clips(2, 5), t1[:2])  # clip i does not depend on count
    assert t1.min() >= -1 and t1.max() <= 1
    crop = src.test_clips(2, 3, size=(32, 40))
    assert crop.shape == (2, 3, 3, 32, 40)
    assert np.array_equal(crop, t1[:2, :3, :, 16:48, 12:52])
    # no training patch appears anywhere in a test clip's first frames
    X, _ = src.sample(16, 4, 1, 32, np.random.default_rng(0))
    windows = np.lib.stride_tricks.sliding_window_view(t1[:, 0], (32, 32), axis=(2, 3))  # (6,3,33,33,32,32)
    windows = windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, 3, 32, 32)
    for x in X[:, :3]:
        assert not np.any(np.all(windows == x, axis=(1, 2, 3)))
    # and the rendered training clips differ from the test clips
    train = np.stack([src.render(5, (0, k)) for k in range(6)])
    assert not any(np.array_equal(a, b) for a in train for b in t1)


def test_synthetic_shorter_clip_is_prefix():
    src = SyntheticVideos(seed=5)
    assert np.array_equal(src.render(3, (0, 11)), src.render(8, (0, 11))[:3])
    assert np.array_equal(src.test_clips(2, 2), src.test_clips(2, 6)[:, :2])


@given(key=st.integers(0, 2 ** 62), length=st.integers(1, 8), side=st.integers(1, 64), corner=st.tuples(
    st.integers(0, 63), st.integers(0, 63)))
def test_synthetic_window_render_equals_the_crop(key, length, side, corner):
    """A training patch is rendered alone (render(..., window)): the same pixels as the whole clip
    cropped, sprites cut at the window's edges included."""
    src = SyntheticVideos(seed=3)
    y, x = (min(c, 64 - side) for c in corner)
    whole = src.render(length, (0, key))
    assert np.array_equal(src.render(length, (0, key), window=(y, x, side)), whole[:, :, y:y + side, x:x + side])


def test_synthetic_motion_filter():
    rng = np.random.default_rng(1)
    src = SyntheticVideos(seed=0, max_tries=50)
    assert src.min_motion == data.MIN_MOTION > 0
    X, Y = src.sample(64, 4, 1, 32, rng)
    clips = data.unstack_frames(np.concatenate([X, Y], axis=1))
    assert all(data.motion(c) > src.min_motion for c in clips)
    # without the filter some patches are still (background only): the filter is doing work
    src.min_motion = -1.0
    X, Y = src.sample(64, 4, 1, 32, np.random.default_rng(1))
    clips = data.unstack_frames(np.concatenate([X, Y], axis=1))
    assert sum(data.motion(c) <= data.MIN_MOTION for c in clips) >= 1


def test_synthetic_next_frame_differs_from_last():
    X, Y = SyntheticVideos(seed=0).sample(32, 4, 1, 32, np.random.default_rng(2))
    diff = np.mean((X[:, 9:12] - Y) ** 2, axis=(1, 2, 3))
    assert np.mean(diff > 0) > 0.8
    assert diff.mean() > 1e-3


def test_synthetic_motion_mostly_predictable():
    """Velocities of 1-3 px/frame per axis, kept from one frame to the next most of the time."""
    src, rng = SyntheticVideos(seed=0), np.random.default_rng(0)
    same = total = 0
    for _ in range(200):
        pos = src._trajectory(rng, 10, 6)
        assert np.all((pos >= 6) & (pos <= 64 - 1 - 6))
        v = np.diff(pos, axis=0)
        assert np.abs(v).max() <= 3 and np.all(np.abs(v).max(axis=1) >= 1)
        a, b = v[1:], v[:-1]
        same += np.sum(np.all(a == b, axis=1) | np.any(a == -b, axis=1) & np.any(a != b, axis=1))
        total += len(a)
    assert same / total > 0.8  # unchanged or bounced


def test_synthetic_bad_arguments():
    src = SyntheticVideos()
    with pytest.raises(DataError, match="patch"):
        src.sample(2, 4, 1, 65, np.random.default_rng(0))
    with pytest.raises(DataError, match="batch"):
        src.sample(0, 4, 1, 32, np.random.default_rng(0))
    with pytest.raises(DataError, match="m must"):
        src.sample(2, 2.5, 1, 32, np.random.default_rng(0))
    with pytest.raises(DataError):
        src.test_clips(1, 2, size=(72, 8))
    with pytest.raises(DataError, match="split list"):
        data.open_source(None, split_list="testlist01.txt")


# ----------------------------------------------------------------------------- read_frames
def test_data_read_frames_video_and_frame_folder(ucf, tmp_path):
    v = data.read_frames(ucf / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi")
    assert v.shape == (12, 40, 48, 3) and v.dtype == np.uint8
    for t in (0, 5, 11):  # lossy codec: the square is where it was written
        x = 2 + 2 * t
        assert v[t, 14:20, x + 2:x + 8, 0].mean() > 200 and v[t, 14:20, x + 2:x + 8, 2].mean() < 90
    f = data.read_frames(ucf / "UCF-101" / "BoxingBag" / "v_BoxingBag_g01_c01")
    assert np.array_equal(f, moving_square(H=36, W=44, seed=6))  # PNG is lossless, order natural
    g = write_frame_folder(tmp_path / "gray", [np.full((8, 8), 9 * t, np.uint8) for t in range(3)])
    assert data.read_frames(g).shape == (3, 8, 8, 3)


def test_data_read_frames_animated_gif(tmp_path):
    """An animated GIF, read through Pillow (imageio's ffmpeg plugin refuses .gif): every frame whole,
    last= keeps the last ones, a folder search finds it, and a corrupt one is named in the error."""
    frames = moving_square() // 64 * 64          # 9 colours: a GIF's palette holds them exactly
    images = [Image.fromarray(f) for f in frames]
    gif = tmp_path / "clip.gif"
    images[0].save(gif, save_all=True, append_images=images[1:], duration=100, loop=0)
    assert np.array_equal(data.read_frames(gif), frames)
    assert np.array_equal(data.read_frames(gif, last=3), frames[-3:])
    assert data.find_videos(tmp_path) == [gif]
    bad = tmp_path / "bad.gif"
    bad.write_bytes(b"GIF89a" + bytes(50))
    with pytest.raises(DataError, match="bad.gif"):
        data.read_frames(bad)


def test_data_stack_freeing_holds_a_video_once():
    """read_frames' stacking: np.stack's result, with the decoded frames let go of as they are copied
    (the caller's list or deque is emptied), so a video is not held twice at its peak."""
    frames = [np.random.default_rng(i).integers(0, 256, (4, 6, 3), dtype=np.uint8) for i in range(5)]
    for container in (list(frames), deque(frames, maxlen=5)):
        out = data._stack_freeing(container)
        assert np.array_equal(out, np.stack(frames)) and out.dtype == np.uint8 and len(container) == 0


def test_data_read_frames_last(ucf, tmp_path, monkeypatch):
    """last=k keeps the last k frames: a folder opens only those images; a video is decoded in
    order but only k frames are held."""
    video = ucf / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi"
    assert np.array_equal(data.read_frames(video, last=4), data.read_frames(video)[-4:])
    assert data.read_frames(video, last=50).shape[0] == 12                   # shorter video: all of it
    folder = ucf / "UCF-101" / "BoxingBag" / "v_BoxingBag_g01_c01"
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda f, *a, **k: opened.append(f.name) or real_open(f, *a, **k))
    f = data.read_frames(folder, last=3)
    assert np.array_equal(f, moving_square(H=36, W=44, seed=6)[-3:])
    assert opened == ["10.png", "11.png", "12.png"]


def test_data_read_frames_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist: .*nope.avi"):
        data.read_frames(tmp_path / "nope.avi")
    bad = tmp_path / "x.mp4"
    bad.write_bytes(b"garbage" * 100)
    with pytest.raises(DataError, match="x.mp4"):
        data.read_frames(bad)
    (tmp_path / "f.txt").write_text("hi")
    with pytest.raises(DataError, match="f.txt"):
        data.read_frames(tmp_path / "f.txt")
    d = write_frame_folder(tmp_path / "frames", moving_square(T=3))
    (d / "4.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="4.png"):
        data.read_frames(d)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        data.read_frames(tmp_path / "empty")


# ----------------------------------------------------------------------------- VideoFolder
def test_folder_discovery_recursive(ucf):
    found = [p.relative_to(ucf).as_posix() for p in data.find_videos(ucf)]
    assert found == [
        "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi",
        "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01.mp4",
        "UCF-101/BoxingBag/v_BoxingBag_g01_c01",
        "UCF-101/HandstandPushups/v_HandStandPushups_g01_c01.avi",
    ]
    src = data.open_source(ucf)
    assert isinstance(src, VideoFolder)
    # no split list: the last 10% (at least one) are held out
    assert [p for p, _ in src.test_videos] == [data.find_videos(ucf)[-1]]
    assert len(src.train_videos) == 4 and not set(src.train_videos) & set(src.test_videos)


def test_folder_sample_shapes_and_determinism(ucf):
    src = VideoFolder(ucf)
    X, Y = src.sample(6, 4, 1, 32, np.random.default_rng(0))
    assert X.shape == (6, 12, 32, 32) and Y.shape == (6, 3, 32, 32)
    assert X.dtype == np.float32 and Y.dtype == np.float32
    assert X.min() >= -1 and X.max() <= 1 and Y.min() >= -1 and Y.max() <= 1
    X2, Y2 = VideoFolder(ucf).sample(6, 4, 1, 32, np.random.default_rng(0))
    assert np.array_equal(X, X2) and np.array_equal(Y, Y2)
    clips = data.unstack_frames(np.concatenate([X, Y], axis=1))
    assert all(data.motion(c) > src.min_motion for c in clips)  # the square moves in every video
    X, Y = src.sample(2, 8, 4, 16, np.random.default_rng(1))  # frame sizes differ across videos
    assert X.shape == (2, 24, 16, 16) and Y.shape == (2, 12, 16, 16)


def test_folder_min_motion_zero_keeps_still_patches(tmp_path):
    """The paper keeps only patches that move (section 4.1); min_motion 0 keeps every draw, so
    the still background of a lossless frame folder shows up (motion exactly 0)."""
    write_frame_folder(tmp_path / "v" / "clip", moving_square(T=12, H=40, W=48, seed=7))

    def motions(src):
        X, Y = src.sample(40, 4, 1, 8, np.random.default_rng(3))
        return [data.motion(c) for c in data.unstack_frames(np.concatenate([X, Y], axis=1))]
    assert min(motions(data.open_source(str(tmp_path / "v")))) > data.MIN_MOTION
    assert min(motions(data.open_source(str(tmp_path / "v"), min_motion=0))) == 0.0
    for bad in (-1e-3, float("nan"), float("inf")):
        with pytest.raises(DataError, match="motion threshold"):
            data.open_source(None, min_motion=bad)


def _pan_velocity(clip):
    """The integer (vy, vx), |vy|, |vx| <= PAN_SPEED, with clip[t + 1] = clip[t] moved by -v on the overlap
    for every t ((0, 0) first: a still clip); else None."""
    P = clip.shape[-1]
    top = data.PAN_SPEED
    for vy, vx in sorted(((vy, vx) for vy in range(-top, top + 1) for vx in range(-top, top + 1)),
                         key=lambda v: v != (0, 0)):
        a = clip[1:, :, max(0, -vy):P - max(0, vy), max(0, -vx):P - max(0, vx)]
        b = clip[:-1, :, max(0, vy):P - max(0, -vy), max(0, vx):P - max(0, -vx)]
        if np.array_equal(a, b):
            return vy, vx
    return None


def test_data_pan_clip_moves_one_frame_at_one_velocity():
    frame = np.random.default_rng(0).integers(0, 256, (60, 70, 3), dtype=np.uint8)
    seen = set()
    for seed in range(20):
        clip = data.pan_clip(frame, 5, 16, np.random.default_rng(seed))
        assert clip.shape == (5, 3, 16, 16) and clip.dtype == np.float32
        v = _pan_velocity(clip)
        assert v is not None and v != (0, 0) and max(map(abs, v)) <= data.PAN_SPEED
        seen.add(v)
        assert np.array_equal(clip, data.pan_clip(frame, 5, 16, np.random.default_rng(seed)))
    assert len(seen) > 5  # velocities vary
    tight = np.random.default_rng(1).integers(0, 256, (18, 17, 3), dtype=np.uint8)  # room for 2 and 1 px per frame
    for seed in range(10):
        vy, vx = _pan_velocity(data.pan_clip(tight, 2, 16, np.random.default_rng(seed)))
        assert abs(vy) <= 2 and abs(vx) <= 1


@pytest.mark.parametrize("zoom", [2, 4])
def test_data_pan_clip_zoom_moves_fractions_of_a_pixel(zoom):
    """zoom z averages z x z pixels of a window moving by whole pixels: on a ramp that rises by one
    grey level per pixel across the frame, a frame of the patch differs from the next by the
    velocity in 1/z pixels, the same everywhere, at most PAN_SPEED px."""
    ramp = np.broadcast_to(np.arange(200, dtype=np.uint8)[None, :, None], (120, 200, 3))
    fractions = set()
    for seed in range(24):
        clip = data.pan_clip(ramp, 4, 16, np.random.default_rng(seed), zoom=zoom)
        assert clip.shape == (4, 3, 16, 16)
        step = (clip[1:] - clip[:-1]) * 127.5  # grey levels = full-resolution pixels moved
        assert np.allclose(step, step.flat[0], atol=1e-3) and abs(step.flat[0]) <= data.PAN_SPEED * zoom + 1e-3
        fractions.add(int(round(step.flat[0])) % zoom)
    assert fractions == set(range(zoom))  # every fraction of a pixel of the patch is seen


def test_folder_pans_fraction(tmp_path):
    """sample(): a fraction ``pans`` of the clips are camera pans; where the 40x48 frames hold twice
    the patch (16, not 24) but not four times, half of those move by multiples of 0.5 px per frame on
    each axis, which is not a whole-pixel shift unless both speeds are whole (about 30% of them)."""
    write_frame_folder(tmp_path / "v" / "clip", moving_square(T=12, H=40, W=48, seed=7))

    def pan_count(pans, patch):
        source = data.open_source(str(tmp_path / "v"), min_motion=0, pans=pans)
        X, Y = source.sample(40, 4, 1, patch, np.random.default_rng(3))
        clips = data.unstack_frames(np.concatenate([X, Y], axis=1))
        return sum(_pan_velocity(c) not in (None, (0, 0)) for c in clips)
    assert pan_count(1.0, 24) == 40
    assert pan_count(0.0, 24) < 10  # the square moves over a still background: not a pan
    assert 10 < pan_count(0.5, 24) < 30
    assert 20 < pan_count(1.0, 16) < 36  # the others move by half pixels on an axis
    assert pan_count(1.0, 20) == 40  # 40 px: twice the patch, but no room to move it: whole pixels only
    assert pan_count(1.0, 40) > 30  # no room for a zoom, nor for a vertical move: whole pixels sideways


def test_synthetic_pans():
    """SyntheticVideos(pans=1): every sample is a camera pan over one rendered frame, none still; half
    move by whole pixels (_pan_velocity finds the shift), the other half over a frame rendered at twice
    the size and averaged 2x2 (half-pixel speeds, whole on both axes for about 30% of them).
    pans=0: sprites move over their background; only a patch of drifting background without a
    sprite moves by one shift."""
    def velocities(pans):
        source = data.SyntheticVideos(0, min_motion=0, pans=pans)
        X, Y = source.sample(40, 4, 1, 32, np.random.default_rng(5))
        return [_pan_velocity(c) for c in data.unstack_frames(np.concatenate([X, Y], axis=1))]
    panned = velocities(1.0)
    assert (0, 0) not in panned
    assert 20 < sum(v is not None for v in panned) < 36
    assert velocities(1.0) == panned  # deterministic given the rng
    assert sum(v not in (None, (0, 0)) for v in velocities(0.0)) < 10
    assert data.open_source(None, pans=0.5).pans == 0.5


def test_folder_split_list_every_nth(ucf, tmp_path):
    lst = tmp_path / "testlist01.txt"
    lst.write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n"
                   "HandstandPushups/v_HandStandPushups_g01_c01.avi 37\n"
                   "BoxingBag/v_BoxingBag_g01_c01.avi\n"           # a frame folder named without .avi
                   "ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01.avi\n"  # stored as .mp4
                   "\n")
    names = lambda entries: [p.name for p, _ in entries]
    test = VideoFolder(ucf, split_list=lst, subset="test")
    assert names(test.videos) == ["v_ApplyEyeMakeup_g01_c01.avi", "v_HandStandPushups_g01_c01.avi",
                                  "v_BoxingBag_g01_c01", "v_ApplyEyeMakeup_g03_c01.mp4"]
    every2 = data.open_source(ucf, split_list=lst, every_nth=2, subset="test")
    assert names(every2.videos) == ["v_ApplyEyeMakeup_g01_c01.avi", "v_BoxingBag_g01_c01"]
    train = VideoFolder(ucf, split_list=lst, every_nth=2)
    assert names(train.videos) == ["v_ApplyEyeMakeup_g02_c01.avi"]  # every listed video stays out
    assert names(train.test_videos) == names(every2.videos)
    X, Y = train.sample(2, 4, 1, 32, np.random.default_rng(0))
    assert X.shape == (2, 12, 32, 32)
    # unknown entries warn; a list matching nothing is an error
    lst.write_text(lst.read_text() + "Nope/v_Nope_g01_c01.avi\n")
    with pytest.warns(DataWarning, match="1 entries"):
        VideoFolder(ucf, split_list=lst, subset="test")
    lst.write_text("Nope/v_Nope_g01_c01.avi\n")
    with pytest.raises(DataError, match="testlist01.txt"):
        VideoFolder(ucf, split_list=lst)
    with pytest.raises(DataError, match="does not exist"):
        VideoFolder(ucf, split_list=tmp_path / "missing.txt")


def test_folder_cache_reuse(ucf, monkeypatch):
    calls = []
    real = data.read_frames
    monkeypatch.setattr(data, "read_frames", lambda p, **kw: calls.append(p) or real(p, **kw))
    src = VideoFolder(ucf)
    src.sample(32, 4, 1, 32, np.random.default_rng(0))
    assert src.decodes == len(calls) == len(src.train_videos) == 4  # each video decoded once
    src.sample(32, 4, 1, 32, np.random.default_rng(1))
    assert src.decodes == len(calls) == 4  # all from the cache
    # a cache with room for one video only: it evicts and decodes again...
    one = 12 * 40 * 48 * 3 / 2 ** 20
    uniform = VideoFolder(ucf, cache_mib=one * 1.5, reuse=0.0)
    uniform.sample(32, 4, 1, 16, np.random.default_rng(0))
    assert uniform.decodes > 8 and len(uniform._cache) == 1
    # ...unless it mostly draws from what is cached
    reusing = VideoFolder(ucf, cache_mib=one * 1.5, reuse=0.9)
    reusing.sample(32, 4, 1, 16, np.random.default_rng(0))
    assert reusing.decodes < uniform.decodes / 2 and len(reusing._cache) == 1


def test_folder_cache_default_size_and_a_video_too_big_for_it(ucf, monkeypatch):
    assert VideoFolder(ucf).cache_bytes == data.default_cache_mib() * 2 ** 20 >= 2 ** 30
    meminfo = "MemTotal:       25000000 kB\nMemAvailable:   12582912 kB\n"  # 12 GiB available
    monkeypatch.setattr("builtins.open", lambda *a, **k: io.StringIO(meminfo))
    assert data.default_cache_mib() == 6144
    monkeypatch.undo()
    one = 12 * 40 * 48 * 3 / 2 ** 20                       # a 12-frame 40x48 video, in MiB
    src = VideoFolder(ucf, cache_mib=one / 2)
    entry = src.train_videos[0]
    with pytest.warns(DataWarning, match="only its first 6 frames are used: 6 frames of 48x40 fill") as caught:
        first, again = src._load(entry), src._load(entry)
    ours = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(ours) == 1 and src.decodes == 1 and again is first   # warned once, decoded once, cached
    np.testing.assert_array_equal(first, data.read_frames(entry[0])[:6])
    for folder_or_video in (entry[0], ucf / "UCF-101" / "BoxingBag" / "v_BoxingBag_g01_c01"):
        whole = data.read_frames(folder_or_video)
        with pytest.warns(DataWarning, match=f"only its first 5 frames"):
            cut = data.read_frames(folder_or_video, max_bytes=5.5 * whole[0].nbytes)
        np.testing.assert_array_equal(cut, whole[:5])
        with warnings.catch_warnings():
            warnings.simplefilter("error", DataWarning)                          # exactly fits: no warning
            assert len(data.read_frames(folder_or_video, max_bytes=whole.nbytes)) == len(whole)


def test_folder_lru_evicts_least_recently_used(ucf):
    src = VideoFolder(ucf, cache_mib=2.5 * 12 * 40 * 48 * 3 / 2 ** 20)
    a, b, c = src.train_videos[:3]
    src._load(a), src._load(b), src._load(a), src._load(c)  # b is the least recently used
    assert list(src._cache) == [a[0], c[0]] and src.decodes == 3
    src._load(a)
    assert src.decodes == 3


def test_folder_sample_wraps_unexpected_errors(ucf, monkeypatch):
    def boom(path, **kw):
        raise RuntimeError("decoder exploded")
    monkeypatch.setattr(data, "read_frames", boom)
    with pytest.raises(DataError, match="decoder exploded"):
        VideoFolder(ucf).sample(2, 4, 1, 32, np.random.default_rng(0))


def test_folder_missing_and_empty(tmp_path):
    with pytest.raises(DataError, match="does not exist: .*nowhere"):
        data.open_source(tmp_path / "nowhere")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"no videos in .*\.mp4"):
        VideoFolder(tmp_path)
    with pytest.raises(DataError, match="subset"):
        VideoFolder(tmp_path, subset="val")


def test_folder_corrupt_short_small_skipped(templates, tmp_path):
    put(templates, "avi", tmp_path / "a_good.avi")
    (tmp_path / "b_bad.mp4").write_bytes(b"garbage" * 100)
    put(templates, "short", tmp_path / "c_short.avi")
    put(templates, "tiny", tmp_path / "d_tiny.avi")
    put(templates, "avi2", tmp_path / "z_held_out.avi")
    src = VideoFolder(tmp_path)
    with pytest.warns(DataWarning) as record:
        X, Y = src.sample(24, 4, 1, 32, np.random.default_rng(0))
    assert X.shape == (24, 12, 32, 32)
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in src.skipped) == ["b_bad.mp4", "c_short.avi", "d_tiny.avi"]
    text = " ".join(str(w.message) for w in record)
    assert "b_bad.mp4" in text and "c_short.avi" in text and "only 3 frames" in text and "d_tiny.avi" in text
    assert [p.name for p, _ in src.videos] == ["a_good.avi"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # skipped once, not warned about again
        src.sample(4, 4, 1, 32, np.random.default_rng(1))


def test_folder_nothing_usable(templates, tmp_path):
    (tmp_path / "a_bad.mp4").write_bytes(b"garbage")
    put(templates, "short", tmp_path / "b_short.avi")
    put(templates, "avi", tmp_path / "z_held_out.avi")
    src = VideoFolder(tmp_path)
    with pytest.warns(DataWarning), pytest.raises(DataError, match="no usable video"):
        src.sample(2, 4, 1, 32, np.random.default_rng(0))
    assert len(src.skipped) == 2


def test_folder_test_clips(ucf, tmp_path):
    src = VideoFolder(ucf, split_list=_write(tmp_path / "t.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n"
                                                                 "BoxingBag/v_BoxingBag_g01_c01.avi\n"))
    clips = src.test_clips(2, 5)
    # frame sizes 40x48 and 36x44: the common 36x44, cropped down to multiples of 8
    assert clips.shape == (2, 5, 3, 32, 40) and clips.dtype == np.float32
    assert clips.min() >= -1 and clips.max() <= 1
    assert np.array_equal(clips, src.test_clips(2, 5))
    boxing = data.to_unit(moving_square(H=36, W=44, seed=6)[:5, 2:34, 2:42]).transpose(0, 3, 1, 2)
    assert np.array_equal(clips[1], boxing)
    assert src.test_clips(2, 5, size=(16, 24)).shape == (2, 5, 3, 16, 24)
    # max_side: the centre of the shared size, cropped before the float32 copy (train_min's evaluations)
    for side, hw in ((16, (16, 16)), (33, (32, 32)), (96, (32, 40)), (0, (32, 40))):
        small = src.test_clips(2, 5, max_side=side)
        assert small.shape[-2:] == hw and src.test_frame_size == (32, 40)
        assert np.array_equal(small, data.center_crop(clips, *hw))
    # more clips than videos: the next windows, round robin; then a warning when they run out
    more = src.test_clips(4, 5)
    assert np.array_equal(more[:2], clips)
    assert np.array_equal(more[3], data.to_unit(moving_square(H=36, W=44, seed=6)[5:10, 2:34, 2:42]).transpose(0, 3, 1, 2))
    with pytest.warns(DataWarning, match="only 4 test clips"):
        assert len(src.test_clips(9, 5)) == 4
    assert not {p for p, _ in src.videos} & {p for p, _ in src.test_videos}


def test_folder_single_video_split_in_time(templates, tmp_path):
    put(templates, "avi", tmp_path / "only.avi")
    src = VideoFolder(tmp_path)
    X, _ = src.sample(3, 4, 1, 32, np.random.default_rng(0))
    assert X.shape == (3, 12, 32, 32)
    assert src.test_clips(1, 2).shape == (1, 2, 3, 40, 48)  # frames 10-11 of 12, never trained on
    assert len(src._load(src.videos[0])) == 10 and len(src._load(src.test_videos[0])) == 2


def test_folder_one_video_file_is_a_folder_of_it_alone(templates, tmp_path):
    """--data VIDEO: the file alone, split in time as a folder holding only it would be; its
    neighbours are not used; a file that is not a video is refused by name."""
    video = put(templates, "avi", tmp_path / "mine.avi")
    put(templates, "mp4", tmp_path / "other.mp4")
    src = VideoFolder(video)
    assert src.train_videos == [(video, "head")] and src.test_videos == [(video, "tail")]
    assert "one video, " in src.split_summary() and "split in time" in src.split_summary()
    folder_of_it = VideoFolder(put(templates, "avi", tmp_path / "alone" / "x.avi").parent)
    np.testing.assert_array_equal(src.test_clips(1, 2), folder_of_it.test_clips(1, 2))
    (tmp_path / "notes.txt").write_text("not a video")
    with pytest.raises(DataError, match=r"not a video file or a folder: .*notes\.txt \(give a \.mp4"):
        VideoFolder(tmp_path / "notes.txt")


def _write(path, text):
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- inputs users give (stop 26)
def ffmpeg(*args):
    """Run the ffmpeg that imageio uses (for inputs imageio's writer cannot make)."""
    import subprocess
    import imageio_ffmpeg
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", *map(str, args)], check=True)


def test_data_read_frames_variable_frame_rate_gives_each_stored_frame_once(tmp_path):
    """A video of variable frame rate (as phones record) is read as stored: without
    data._frames_as_stored ffmpeg resamples it to a constant rate (here 65 frames: a 1 s gap
    filled with copies of frame 19)."""
    if data._frames_as_stored()[0] != "-fps_mode":
        pytest.skip("ffmpeg older than 5.1 cannot write this test's video")
    for t in range(40):
        Image.fromarray(np.full((16, 16, 3), 6 * t, np.uint8)).save(tmp_path / f"{t:03d}.png")
    video = tmp_path / "gap.mkv"                    # frames 20..39 one second late
    ffmpeg("-framerate", "25", "-i", tmp_path / "%03d.png", "-vf", "setpts='if(gt(N,19),(N+25)/25,N/25)/TB'",
           "-fps_mode", "vfr", "-c:v", "ffv1", video)
    frames = data.read_frames(video)
    assert len(frames) == 40
    np.testing.assert_allclose(frames[:, 8, 8].mean(axis=1), 6 * np.arange(40), atol=2)


def test_data_read_frames_16_bit_png_scaled_to_8_bits(tmp_path):
    """16-bit grayscale PNGs (Pillow mode I;16 or I) become 8-bit grey, not clipped to white."""
    levels = np.array([[0, 257 * 10], [257 * 128, 65535]], np.uint16)
    for t in range(2):
        Image.fromarray(levels).save(tmp_path / f"{t}.png")
    frames = data.read_frames(tmp_path)
    assert frames.shape == (2, 2, 2, 3)
    np.testing.assert_array_equal(frames[1, :, :, 0], [[0, 10], [128, 255]])
    np.testing.assert_array_equal(frames[..., 0], frames[..., 2])
    assert data._image_rgb(Image.fromarray(np.zeros((2, 2), np.int32)), "x").shape == (2, 2, 3)   # mode I
    with pytest.raises(DataError, match="mode F"):
        data._image_rgb(Image.fromarray(np.zeros((2, 2), np.float32)), "f.png")


def test_data_split_list_names_with_spaces_indices_and_a_byte_order_mark(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_bytes("\ufeffmy video (1).mp4\r\nClass/v_a.avi 12\nclip 2.mp4\n# note\n".encode("utf-8"))
    assert data._read_split_list(lst) == ["my video (1)", "class/v_a", "clip 2"]
    with pytest.raises(DataError, match="is a folder"):
        data._read_split_list(tmp_path)


def test_data_find_videos_follows_linked_folders_once_and_skips_hidden(templates, tmp_path):
    real = tmp_path / "real"
    put(templates, "avi", real / "Class" / "a.avi")
    put(templates, "avi", real / "Class" / "._a.avi")          # macOS's resource fork beside a copied file
    put(templates, "avi", real / ".cache" / "b.avi")
    root = tmp_path / "root"
    root.mkdir()
    (root / "Linked").symlink_to(real / "Class", target_is_directory=True)
    (root / "Linked" / "loop").symlink_to(root, target_is_directory=True)   # a cycle: each folder once
    assert [p.relative_to(root).as_posix() for p in data.find_videos(root)] == ["Linked/a.avi"]
    assert [p.name for p in data.find_videos(real)] == ["a.avi"]


def test_folder_lone_short_video_and_unusable_held_out_videos_say_why(templates, tmp_path):
    """A video given alone is split 80/20 in time: the message says which part is short, with the
    frames it has and needs; when every held-out video is unusable, the error says why each was."""
    video = put(templates, "avi", tmp_path / "lone" / "v.avi")             # 12 frames: 10 + 2
    src = VideoFolder(video)
    with pytest.warns(DataWarning, match=r"its last 20% of frames, 2 of 12, is too short: 5 needed .*at least 25"):
        with pytest.raises(DataError, match=r"held out: v.avi: its last 20%"):
            src.test_clips(1, 5)
    folder = tmp_path / "folder"
    put(templates, "avi", folder / "a.avi")
    (folder / "z.mp4").write_bytes(b"not a video")                         # sorted last: held out
    with pytest.warns(DataWarning, match="z.mp4"):
        with pytest.raises(DataError, match=r"held out: z.mp4: cannot decode .*--split-list"):
            VideoFolder(folder).test_clips(1, 5)
    short = put(templates, "short", tmp_path / "s" / "only3.avi")
    with pytest.warns(DataWarning, match="2 of 3"):
        with pytest.raises(DataError):
            VideoFolder(short).sample(1, 4, 1, 8, np.random.default_rng(0))


def test_data_read_frames_folder_of_videos_says_to_give_one(templates, tmp_path):
    put(templates, "avi", tmp_path / "a.avi")
    with pytest.raises(DataError, match=r"holds videos \(give one of them"):
        data.read_frames(tmp_path)


def test_data_video_types_imageio_refuses_are_named_with_a_way_out(templates, tmp_path):
    """.m4v .3gp .flv .ogv .mts files: imageio's ffmpeg plugin refuses their extension, so a folder
    warns that it left them out, and one given alone is refused, each saying how to make it readable."""
    put(templates, "avi", tmp_path / "a.avi")
    put(templates, "mp4", tmp_path / "phone" / "clip.m4v")
    with pytest.warns(DataWarning, match=r"1 video file\(s\) left out, e.g. .*clip.m4v: .*rename a .m4v"):
        assert [p.name for p in data.find_videos(tmp_path)] == ["a.avi"]
    for use in (data.read_frames, VideoFolder):
        with pytest.raises(DataError, match=r"imageio does not read .m4v files .*ffmpeg -i 'clip.m4v' 'clip.mp4'"):
            use(tmp_path / "phone" / "clip.m4v")


def test_folder_test_clips_too_big_for_memory_ask_for_a_crop(ucf, monkeypatch):
    """Whole held-out frames that would not fit in the memory available as float32 (32 clips of 4K
    frames take 19 GB) stop with the way out, before the copy is made."""
    src = VideoFolder(ucf)
    monkeypatch.setattr(data, "available_mib", lambda: 0.01)
    with pytest.raises(DataError, match=r"take 0.0 GiB as float32, more than .* --size H W"):
        src.test_clips(1, 5)
    monkeypatch.setattr(data, "available_mib", lambda: None)                # unknown: no check
    assert src.test_clips(1, 5).shape[:2] == (1, 5)


def test_synthetic_test_clips_too_many_for_memory_say_so_before_rendering(monkeypatch):
    """metrics.py evaluate --clips 100000000 once rendered clips until memory ran out."""
    monkeypatch.setattr(data, "available_mib", lambda: 1000.0)
    with pytest.raises(DataError, match=r"100000000 held-out clips of 5 frames of 64x64 take 22888.2 GiB as float32, "
                                        r"more than the 1.0 GiB available: score fewer clips"):
        SyntheticVideos(0).test_clips(100_000_000, 5)
    assert SyntheticVideos(0).test_clips(2, 5).shape == (2, 5, 3, 64, 64)


def test_data_read_frames_a_sound_file_says_it_has_no_picture(tmp_path):
    sound = tmp_path / "song.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", sound)
    with pytest.raises(DataError, match="has no video stream"):
        data.read_frames(sound)


@pytest.mark.parametrize("version, options", [("4.4.2-0ubuntu0.22.04.1", ["-vsync", "0"]),
                                              ("5.0.3", ["-vsync", "0"]),
                                              ("5.1", ["-fps_mode", "passthrough"]),
                                              ("n9.0.2-17-g2a571b6068-20260930", ["-fps_mode", "passthrough"]),
                                              ("N-112233-gabcdef", ["-fps_mode", "passthrough"])])
def test_data_frames_as_stored_names_the_option_of_the_ffmpeg_in_use(monkeypatch, version, options):
    """`-fps_mode` came with ffmpeg 5.1 (a system ffmpeg given by IMAGEIO_FFMPEG_EXE may be older:
    it knows only `-vsync`, which ffmpeg 9 no longer knows); a build that names no version is new."""
    import imageio_ffmpeg
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_version", lambda: version)
    assert data._frames_as_stored.__wrapped__() == options
