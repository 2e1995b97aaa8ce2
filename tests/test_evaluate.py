"""End to end: `python metrics.py evaluate` (paper Table 2 and Figure 4) and
`python framepred.py predict`, on tiny checkpoints, the synthetic test clips and small generated
videos. The CLIs run in-process through main(argv) (fast); one subprocess each checks the exit
status and that errors come without a traceback."""
import csv
import importlib
import json
import math
import os
import subprocess
import sys

import imageio.v2 as iio
import numpy as np
import pytest
from PIL import Image

import figures
import framepred as fp
import metrics
from data import open_source, stack_frames, to_uint8, to_unit
from kernels import numpy_ops as ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = 1 / 64
ROW_NAMES = ["l2 (run_l2)", "adv_gdl (run_adv)", "Last input", "Optical flow"]


def make_checkpoint(folder, loss, m, n=1, seed=0, steps=1):
    config = fp.make_config(m=m, n=n, width=TINY, loss=loss)
    params = fp.init_params(config, seed=seed)
    rng = np.random.default_rng(seed)
    src = open_source(None)
    for _ in range(steps):
        fp.train_step(ops, params, config, src.sample(2, m, n, 32, rng), src.sample(2, m, n, 32, rng), lr_g=0.04)
    path = os.path.join(folder, "model.npz")
    fp.save_checkpoint(path, params, config)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two tiny checkpoints of different m (4 and 2), named by their folders."""
    root = tmp_path_factory.mktemp("ckpts")
    return (make_checkpoint(str(root / "run_l2"), "l2", m=4, seed=1),
            make_checkpoint(str(root / "run_adv"), "adv_gdl", m=2, seed=2))


def write_video(path, frames):
    """frames: uint8 (T, H, W, 3) -> an .mp4 (H.264) or .avi (MJPEG) of exactly that size."""
    kw = dict(codec="mjpeg", quality=9) if str(path).endswith(".avi") else {}
    with iio.get_writer(str(path), fps=10, macro_block_size=1, **kw) as w:
        for f in frames:
            w.append_data(f)


def synthetic_frames(key, length, h, w):
    """uint8 (length, h, w, 3): a top-left crop of a synthetic clip (moving textured sprites)."""
    clip = open_source(None).render(length, (7, key))[:, :, :h, :w]
    return to_uint8(clip).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    """Three small videos (48x64, 14 frames) and a split list naming two of them as the test set."""
    root = tmp_path_factory.mktemp("videos")
    (root / "ClassA").mkdir()
    (root / "ClassB").mkdir()
    write_video(root / "ClassA" / "v_a1.mp4", synthetic_frames(0, 14, 48, 64))
    write_video(root / "ClassA" / "v_a2.avi", synthetic_frames(1, 14, 48, 64))
    write_video(root / "ClassB" / "v_b1.mp4", synthetic_frames(2, 14, 48, 64))
    split = root / "testlist.txt"
    split.write_text("ClassA/v_a2.avi\nClassB/v_b1.avi\n")
    return str(root), str(split)


def read_table_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def marked_frames(gif):
    """Per frame of an open GIF: does it show the red frame that marks predictions?"""
    out = []
    for k in range(gif.n_frames):
        gif.seek(k)
        a = np.asarray(gif.convert("RGB")).astype(int)
        out.append(bool((np.abs(a - figures.PREDICTED_MARK).max(axis=-1) < 24).sum() > 200))
    return out


def check_outputs(out, n_figures, gif_frames, clip_hw):
    header, rows = read_table_csv(os.path.join(out, "table.csv"))
    assert header == metrics.csv_header()
    assert len(header) == 5 + 2 * 2 * 3   # 2 regions x 2 frames x (PSNR, SSIM, Sharp. diff.)
    assert [r[0] for r in rows] == ROW_NAMES
    assert [r[2] for r in rows] == ["4", "2", "1", "2"]           # m of each row
    assert [r[4] for r in rows] == ["recursive", "recursive", "copy", "flow applied twice"]
    values = np.array([[float(v) for v in r[5:]] for r in rows])
    assert np.isfinite(values).all(), values
    ssim_cols = [i for i, h in enumerate(header[5:]) if h.endswith("_ssim")]
    assert (np.abs(values[:, ssim_cols]) <= 1).all()
    # the flow baseline moves the content on: better than a copy on the 1st frame's moving areas
    psnr_moving_1st = header[5:].index("moving_1st_psnr")
    assert values[3, psnr_moving_1st] > values[2, psnr_moving_1st]
    md = open(os.path.join(out, "table.md"), encoding="utf-8").read()
    assert "## Whole frames" in md and "## Moving areas" in md and "EpicFlow" in md
    assert "| Model | 1st PSNR | 1st SSIM | 1st Sharp. diff. | 2nd PSNR | 2nd SSIM | 2nd Sharp. diff. |" in md
    for name in ROW_NAMES:
        assert md.count(f"| {name} |") == 2
    for i in range(1, n_figures + 1):
        with Image.open(os.path.join(out, f"figure4_clip{i}.png")) as im:
            assert im.format == "PNG"
            # rows: inputs, ground truth, masked ground truth, 2 models, 2 baselines; cells >= 96 px
            cell = clip_hw[0] * -(-96 // max(clip_hw))
            assert im.size[1] > 7 * cell + 8 * 4                    # and a title and t-k / t+k captions
        with Image.open(os.path.join(out, f"clip{i}.gif")) as im:
            assert im.format == "GIF"
            assert im.n_frames == gif_frames                        # the frames differ by their captions
            assert im.size[0] > 5 * 96                              # 5 panels side by side
            assert marked_frames(im) == [False] * (gif_frames - 2) + [True, True]
    assert not os.path.exists(os.path.join(out, f"figure4_clip{n_figures + 1}.png"))


def test_evaluate_synthetic_end_to_end(ckpts, tmp_path, capsys):
    out = str(tmp_path / "eval")
    rc = metrics.main(["evaluate", "--checkpoint", *ckpts, "--clips", "4", "--size", "32", "32",
                       "--device", "cpu", "--out", out, "--figures", "2", "--batch", "3"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    # clip length = max m + 2 = 6: the gif shows 4 input frames, then the 1st and 2nd prediction
    check_outputs(out, n_figures=2, gif_frames=6, clip_hw=(32, 32))
    for name in ROW_NAMES:
        assert captured.out.count(name) == 2                   # whole frames and moving areas blocks
    assert "Whole frames" in captured.out and "Moving areas" in captured.out
    assert "Sharp. diff." in captured.out
    for i in range(1, 5):
        assert f"[{i}/4]" in captured.err                       # a progress line per row
    assert "4 clips of 6 frames at 32x32" in captured.err


def test_evaluate_val_scores_the_validation_draw(ckpts, tmp_path, capsys):
    """--val: the synthetic validation clips, not the test clips (other baseline scores), and it
    says so; with --data it is refused with a message."""
    tables = {}
    for flag in ([], ["--val"]):
        out = str(tmp_path / f"eval{len(flag)}")
        rc = metrics.main(["evaluate", "--checkpoint", ckpts[0], "--clips", "3", "--size", "32", "32",
                           "--device", "cpu", "--out", out, "--figures", "0", *flag])
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        assert ("validation clips" in captured.err) == bool(flag)
        tables[bool(flag)] = [ln for ln in captured.out.splitlines() if ln.startswith("Last input")][0]
    assert tables[True] != tables[False]
    rc = metrics.main(["evaluate", "--checkpoint", ckpts[0], "--val", "--data", str(tmp_path), "--device", "cpu",
                       "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "--val is for the synthetic videos" in err and "Traceback" not in err


def test_evaluate_video_folder_end_to_end(ckpts, video_folder, tmp_path, capsys):
    root, split = video_folder
    out = str(tmp_path / "eval")
    rc = metrics.main(["evaluate", "--checkpoint", *ckpts, "--data", root, "--split-list", split,
                       "--every-nth", "1", "--clips", "3", "--device", "cpu", "--out", out,
                       "--figures", "1", "--mask-pair", "inputs"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    check_outputs(out, n_figures=1, gif_frames=6, clip_hw=(48, 64))
    md = open(os.path.join(out, "table.md"), encoding="utf-8").read()
    assert f"video folder {root}" in md and "3 clips of 6 frames at 48x64" in md
    assert "last two input frames" in md


def test_evaluate_second_frame_recursive_or_direct():
    clips = open_source(None).test_clips(2, 6, (32, 32))
    for n in (1, 2):
        config = fp.make_config(m=3, n=n, width=TINY, loss="l1")
        model = dict(name="x", path="x", params=fp.init_params(config, seed=n), config=config)
        first, second = metrics.model_predictions(ops, model, clips, batch=1)
        X = stack_frames(clips[:, 1:4])                         # the model's own last m = 3 inputs
        out = fp.generator_forward(ops, model["params"], config, X)[0][4]
        np.testing.assert_allclose(first, out[:, :3], atol=1e-6)
        if n == 1:                                              # the 1st prediction fed back in
            rec = fp.generator_forward(ops, model["params"], config,
                                       np.concatenate([X[:, 3:], out[:, :3]], axis=1))[0][4]
            np.testing.assert_allclose(second, rec, atol=1e-6)
            assert metrics.second_frame_rule(config) == "recursive"
        else:                                                   # its own 2nd output frame
            np.testing.assert_allclose(second, out[:, 3:6], atol=1e-6)
            assert metrics.second_frame_rule(config).startswith("direct")


def test_evaluate_masks_follow_the_frame_pair():
    clips = open_source(None).test_clips(2, 6, (32, 32))
    clips[1] = clips[1, :1]                                     # clip 1 is still: no moving pixels
    truth = metrics.moving_masks(clips, "truth")
    assert truth[0].shape == (2, 1, 32, 32) and truth[0][0].any() and not truth[0][1].any()
    np.testing.assert_array_equal(truth[1][0], metrics.pair_motion_mask(clips[:1, 4], clips[:1, 5])[0])
    inputs = metrics.moving_masks(clips, "inputs")
    np.testing.assert_array_equal(inputs[0], inputs[1])
    np.testing.assert_array_equal(inputs[0][:1], metrics.pair_motion_mask(clips[:1, 2], clips[:1, 3]))
    # a still clip has no moving area: its moving-area scores are NaN and left out of the mean
    row = metrics.score_frame(clips[:, 3], clips[:, 4], truth[0])
    assert math.isnan(row["moving", "psnr"][1]) and np.isfinite(row["whole", "psnr"][0])
    assert metrics._mean(row["moving", "psnr"]) == row["moving", "psnr"][0]


def test_evaluate_errors(ckpts, tmp_path, capsys):
    bad = tmp_path / "corrupt" / "model.npz"
    bad.parent.mkdir()
    bad.write_bytes(b"not a checkpoint")
    cases = [
        (["--checkpoint", str(tmp_path / "missing.npz")], "checkpoint not found"),
        (["--checkpoint", ckpts[0], str(bad)], "cannot read checkpoint"),
        (["--checkpoint", ckpts[0], "--data", str(tmp_path / "no_such_folder")], "does not exist"),
        (["--checkpoint", ckpts[0], "--size", "30", "32"], "multiple of 8"),
        (["--checkpoint", ckpts[0], "--size", "72", "72"], "does not fit"),
    ]
    for argv, message in cases:
        rc = metrics.main(["evaluate", *argv, "--device", "cpu", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert rc == 1, argv
        assert "error: " in err and message in err, (argv, err)
        assert "Traceback" not in err


def test_evaluate_subprocess_exit_status(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "metrics.py"), "evaluate", "--checkpoint",
                        str(tmp_path / "missing.npz"), "--device", "cpu"],
                       capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert r.returncode == 1
    assert "error: checkpoint not found" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, os.path.join(ROOT, "metrics.py"), "evaluate"],
                       capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert r.returncode == 2 and "--checkpoint" in r.stderr        # argparse: required argument


@pytest.mark.parametrize("backend", ["fast_cpu", "numpy_ops"])
def test_evaluation_memory_is_bounded_on_a_640x360_video(tmp_path, backend):
    """Evaluation on whole 640x360 frames runs G in tiles: the NumPy allocations it makes
    (tracemalloc) stay within its memory budget plus three times the batch's stacked input frames
    (the 1st and the recursive 2nd pass's inputs, the predictions), far below what G on the whole
    frame needs for the columns of one convolution alone (325 MiB for all of G, measured)."""
    import tracemalloc
    from data import read_frames
    t = np.arange(6)[:, None, None]
    y, x = np.mgrid[0:360, 0:640]
    frames = np.stack([(x + 5 * t) % 256, (y + 3 * t) % 256, (x + y) % 256 + 0 * t], axis=-1).astype(np.uint8)
    write_video(tmp_path / "v.mp4", frames)
    clips = to_unit(read_frames(tmp_path / "v.mp4")).transpose(0, 3, 1, 2)[None]    # (1, 6, 3, 360, 640)
    config = fp.make_config(m=4, n=1, width=TINY, loss="l2")
    model = dict(name="x", path="x", params=fp.init_params(config, seed=3), config=config)
    memory = 32 * 2 ** 20
    backend = importlib.import_module("kernels." + backend)     # --device cpu, --device reference
    if hasattr(backend, "_scratch_buffers"):
        backend._scratch_buffers.clear()       # the convolutions' reused buffer is allocated anew, and counted
    tracemalloc.start()
    try:
        first, second = metrics.model_predictions(backend, model, clips, batch=1, memory=memory)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert first.shape == second.shape == (1, 3, 360, 640) and np.isfinite(second).all()
    bound = memory + 3 * clips[0, :4].nbytes
    columns = 4 * 360 * 640 * max(c * k * k for c, k in zip(config["g_maps"][-1], config["g_kernels"][-1][1:]))
    assert peak < bound < columns / 2, (peak, bound, columns)


# ----------------------------------------------------------------------------- predict

@pytest.fixture(scope="module")
def odd_video(tmp_path_factory):
    """10 frames of 36x44 (H x W): neither side divides by 8."""
    path = tmp_path_factory.mktemp("odd") / "clip.mp4"
    write_video(path, synthetic_frames(3, 10, 36, 44))
    return str(path)


def frame_folder(folder, frames):
    os.makedirs(folder, exist_ok=True)
    for i, f in enumerate(frames, 1):
        Image.fromarray(f).save(os.path.join(folder, f"frame_{i}.png"))
    return folder


def test_predict_video_pads_and_writes_full_frames(ckpts, odd_video, tmp_path, capsys):
    out = str(tmp_path / "pred")
    rc = fp.main(["predict", "--checkpoint", ckpts[0], "--input", odd_video, "--frames", "3",
                  "--out", out, "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "padded" in captured.out and "48x40" in captured.out
    assert "top +2, bottom +2, left +2, right +2" in captured.out
    assert captured.err.split("\r")[1:] == ["predicted 1/3 frames", "predicted 2/3 frames", "predicted 3/3 frames\n"]
    assert sorted(os.listdir(out)) == ["pred_1.png", "pred_2.png", "pred_3.png", "predictions.gif"]
    for i in range(1, 4):
        with Image.open(os.path.join(out, f"pred_{i}.png")) as im:
            assert im.size == (44, 36) and im.mode == "RGB"
    with Image.open(os.path.join(out, "predictions.gif")) as im:
        assert im.size[0] >= 44 * 3 and im.size[1] > 36 * 3    # upscaled x3 to >= 96 px, a label, a caption
        assert marked_frames(im) == [False] * 4 + [True] * 3    # 4 inputs, then 3 predictions in red
    assert "checkpoint " + ckpts[0] + ": no training state, loss l2" in captured.out


def test_predict_frame_folder_uses_last_m_frames(ckpts, tmp_path, capsys):
    frames = synthetic_frames(4, 7, 32, 40)
    folder = frame_folder(str(tmp_path / "frames"), frames)
    out = str(tmp_path / "pred")
    rc = fp.main(["predict", "--checkpoint", ckpts[1], "--input", folder, "--frames", "2",
                  "--out", out, "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "padded" not in captured.out
    params, config, _ = fp.load_checkpoint(ckpts[1])            # m = 2: frames 6 and 7
    history = to_unit(frames[-2:]).transpose(0, 3, 1, 2)
    y1 = fp.generator_forward(ops, params, config, stack_frames(history)[None])[0][4][0]
    y2 = fp.generator_forward(ops, params, config, np.concatenate([history[1], y1])[None])[0][4][0]
    for i, y in enumerate([y1, y2], 1):
        with Image.open(os.path.join(out, f"pred_{i}.png")) as im:
            got = np.asarray(im.convert("RGB")).astype(int)
        assert got.shape == (32, 40, 3)
        assert np.abs(got - to_uint8(y).transpose(1, 2, 0).astype(int)).max() <= 1


def test_predict_pad_and_multi_frame_passes():
    x = np.arange(2 * 3 * 5 * 9, dtype=np.float32).reshape(2, 3, 5, 9)
    padded, pads = fp.pad_to_multiple(x)
    assert padded.shape == (2, 3, 8, 16) and pads == (1, 2, 3, 4)
    np.testing.assert_array_equal(padded[..., 1:6, 3:12], x)
    np.testing.assert_array_equal(padded[..., 0, 3:12], x[..., 0, :])          # edge replicated
    same, pads = fp.pad_to_multiple(np.zeros((1, 3, 16, 8)))
    assert pads == (0, 0, 0, 0) and same.shape == (1, 3, 16, 8)
    # n = 2: each pass gives two frames; 3 frames take two passes, the second fed the first two
    config = fp.make_config(m=2, n=2, width=TINY, loss="l2")
    params = fp.init_params(config, seed=5)
    history = open_source(None).test_clips(1, 2, (16, 24))[0]
    got = fp.predict_frames(ops, params, config, history, 3)
    assert got.shape == (3, 3, 16, 24)
    y = fp.generator_forward(ops, params, config, stack_frames(history)[None])[0][4][0]
    np.testing.assert_allclose(got[:2], y.reshape(2, 3, 16, 24), atol=1e-6)
    y = fp.generator_forward(ops, params, config, y[None])[0][4][0]
    np.testing.assert_allclose(got[2], y[:3], atol=1e-6)


def rewritten_checkpoint(src, dest, edit):
    """A copy of checkpoint src at dest with edit(arrays) applied to its arrays (config included)."""
    with np.load(src) as z:
        arrays = {key: z[key] for key in z.files}
    edit(arrays)
    np.savez(dest, **arrays)
    return str(dest)


def test_predict_errors(ckpts, odd_video, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"\x00" * 64)
    short = frame_folder(str(tmp_path / "short"), synthetic_frames(5, 3, 16, 16))   # 3 < m = 4

    def drop_g_maps(arrays):
        arrays["config"] = np.array(json.dumps({k: v for k, v in json.loads(str(arrays["config"])).items()
                                                if k != "g_maps"}))

    def nan_weight(arrays):
        key = next(k for k in arrays if k.startswith("G/"))
        arrays[key] = arrays[key] * np.nan                      # as a run that diverged would leave it
    no_g_maps = rewritten_checkpoint(ckpts[0], tmp_path / "no_g_maps.npz", drop_g_maps)
    diverged = rewritten_checkpoint(ckpts[0], tmp_path / "diverged.npz", nan_weight)
    (tmp_path / "a_file").write_text("")
    cases = [
        ([str(tmp_path / "missing.npz"), odd_video], "checkpoint not found"),
        ([str(bad), odd_video], "cannot read checkpoint"),
        ([no_g_maps, odd_video], "has a broken config (KeyError: 'g_maps'"),
        ([diverged, odd_video], "weights hold NaN or inf"),
        ([ckpts[0], str(tmp_path / "missing.mp4")], "does not exist"),
        ([ckpts[0], short], "needs at least m = 4 input frames"),
        ([ckpts[0], str(bad)], "not a video"),
        ([ckpts[0], odd_video, str(tmp_path / "a_file")], "is a file; give a folder for the predicted frames"),
    ]
    for (ckpt, inp, *out), message in cases:
        rc = fp.main(["predict", "--checkpoint", ckpt, "--input", inp, "--out", (out or [str(tmp_path / "o")])[0],
                      "--device", "cpu"])
        err = capsys.readouterr().err
        assert rc == 1, (ckpt, inp)
        assert "error: " in err and message in err, (message, err)
        assert "Traceback" not in err
    assert not os.path.exists(tmp_path / "o")                   # nothing written on an error


def test_predict_and_evaluate_out_of_memory_and_bad_flags(ckpts, odd_video, tmp_path, capsys, monkeypatch):
    """Out of memory: one line naming the sizes to lower, exit 1; a motion threshold that is not a
    finite number >= 0, or an empty --out: a usage error (2) before anything runs."""
    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 103. GiB")
    monkeypatch.setattr(fp, "predict_frames", no_memory)
    rc = fp.main(["predict", "--checkpoint", ckpts[0], "--input", odd_video, "--out", str(tmp_path / "o"),
                  "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "error: out of memory (Unable to allocate 103. GiB): ask for less" in err
    for flags, message in [(["--motion-threshold", "nan"], "--motion-threshold: must be a finite number"),
                           (["--motion-threshold", "-1"], "--motion-threshold: must be at least 0"),
                           (["--out", ""], "--out: an empty path")]:
        with pytest.raises(SystemExit) as exit_:
            metrics.main(["evaluate", "--checkpoint", ckpts[0], "--clips", "2"] + flags)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    rc = metrics.main(["evaluate", "--checkpoint", ckpts[0], "--clips", "2", "--out", str(tmp_path / "a_file" / "x")])
    err = capsys.readouterr().err
    assert rc == 1 and "is inside " in err and "which is a file; give a folder for the tables and figures" in err
    assert "test set:" not in err                               # refused before the clips were made


def test_predict_subprocess_exit_status(ckpts, tmp_path):
    short = frame_folder(str(tmp_path / "short"), synthetic_frames(6, 2, 16, 16))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "framepred.py"), "predict", "--checkpoint",
                        ckpts[0], "--input", short, "--out", str(tmp_path / "o"), "--device", "cpu"],
                       capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert r.returncode == 1
    assert "has 2 frames" in r.stderr and "Traceback" not in r.stderr


def test_evaluate_leaves_out_clips_whose_frame_to_predict_repeats_the_last_input(ckpts, tmp_path, capsys):
    """A held-out video with duplicated frames: of its three 6-frame windows, the two whose 1st or 2nd
    frame to predict equals the last input (copying: inf dB) are left out and counted, so the table
    has no inf."""
    root = tmp_path / "videos"
    order = {"Train": list(range(18)),
             # windows: 6 new frames; the 1st frame to predict repeats the last input; so does the 2nd
             "Doubled": [0, 1, 2, 3, 4, 5] + [6, 7, 8, 9, 9, 10] + [11, 12, 13, 14, 15, 14]}
    for name, sequence in order.items():
        folder = root / name / f"v_{name}_g01_c01"
        folder.mkdir(parents=True)
        rng = np.random.default_rng(len(name))
        frames = rng.integers(0, 255, (18, 32, 32, 3), dtype=np.uint8)
        for t, k in enumerate(sequence):
            iio.imwrite(folder / f"{t:03d}.png", frames[k])
    (tmp_path / "list.txt").write_text("Doubled/v_Doubled_g01_c01\n")
    clips, _ = metrics.load_test_set(str(root), str(tmp_path / "list.txt"), 1, 3, 6, None)
    assert list(metrics.repeats_last_input(clips, 3)) == [False, True, True]
    out = str(tmp_path / "eval")
    rc = metrics.main(["evaluate", "--checkpoint", ckpts[0], "--data", str(root), "--split-list",
                       str(tmp_path / "list.txt"), "--clips", "3", "--device", "cpu", "--out", out, "--figures", "0"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "2 of them left out, whose frame to predict repeats the last input exactly" in captured.err
    assert "inf" not in captured.out.replace("Sharp. diff.", "")
    rows = list(csv.DictReader(open(os.path.join(out, "table.csv"), encoding="utf-8")))
    assert all(math.isfinite(float(v)) for row in rows for k, v in row.items() if k.startswith("whole_"))


def test_evaluate_and_predict_say_why_they_cannot_go_on(ckpts, odd_video, tmp_path, capsys):
    """evaluate: the reason a held-out video was rejected is shown also when none is left, and a
    test set in which nothing moves is said to be one; predict: a --memory too small for G's
    smallest tiles is refused with the least that works (it ran thousands of tiles before)."""
    root = tmp_path / "videos"
    frames = synthetic_frames(3, 12, 32, 32)
    frame_folder(str(root / "a_train"), frames)
    (root / "z_test").mkdir()
    (root / "z_test" / "1.png").write_bytes(b"not a png")                 # held out: the last in order
    rc = metrics.main(["evaluate", "--checkpoint", ckpts[0], "--data", str(root), "--device", "cpu",
                       "--out", str(tmp_path / "o"), "--figures", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and "warning: skipping video" in err and "cannot read frame" in err
    assert "held out: z_test: cannot read frame" in err and "Traceback" not in err

    still = tmp_path / "still"
    frame_folder(str(still / "a_train"), frames)
    frame_folder(str(still / "z_test"), np.repeat(frames[:1], 12, axis=0))
    rc = metrics.main(["evaluate", "--checkpoint", ckpts[0], "--data", str(still), "--device", "cpu",
                       "--out", str(tmp_path / "o2"), "--figures", "0", "--clips", "2"])
    err = capsys.readouterr().err
    assert rc == 0 and "in every clip a frame to predict repeats the last input exactly" in err

    rc = fp.main(["predict", "--checkpoint", ckpts[0], "--input", odd_video, "--out", str(tmp_path / "p"),
                  "--device", "cpu", "--memory", "0.01"])
    err = capsys.readouterr().err
    assert rc == 1 and "--memory 0.01 MiB is too little for this model" in err and "Traceback" not in err
    need = float(err.split(" need ")[1].split(" MiB")[0])
    rc = fp.main(["predict", "--checkpoint", ckpts[0], "--input", odd_video, "--out", str(tmp_path / "p"),
                  "--device", "cpu", "--memory", str(need + 1)])
    assert rc == 0, capsys.readouterr().err


def test_evaluate_describes_one_video_as_its_last_frames(tmp_path):
    """One video file given to evaluate is scored on its last 20% of frames, and said to be."""
    video = tmp_path / "clip.mp4"
    write_video(video, synthetic_frames(4, 40, 32, 32))
    clips, described = metrics.load_test_set(str(video), None, 10, 2, 6, None)
    assert described.startswith(f"video {video}, its last 20% of frames: 1 clips of 6 frames")
    assert "every 10th" not in described and clips.shape == (1, 6, 3, 32, 32)


def test_evaluate_optical_flow_in_chunks_by_pixels_with_progress(monkeypatch):
    """The moving-area masks are computed a few frames at a time (one at a time for 4K frames, whose
    flow took minutes each): the same masks, and a line on how far it got at most every 10 s."""
    clips = to_unit(np.stack([synthetic_frames(k, 6, 16, 16) for k in range(5)])).transpose(0, 1, 4, 2, 3)
    whole = metrics.moving_masks(clips, "truth")
    clock = iter(range(0, 10 ** 6, 11))                          # 11 s pass between readings of the clock
    monkeypatch.setattr(metrics.time, "time", lambda: next(clock))
    monkeypatch.setattr(metrics, "CHUNK_PIXELS", 2 * 16 * 16)   # two frames a chunk
    lines = []
    chunked = metrics.moving_masks(clips, "truth", progress=lines.append)
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a, b)
    assert [ln.split(",")[0] for ln in lines] == ["  optical flow: 2 of 5 frame pairs", "  optical flow: 4 of 5 frame pairs"] * 2
