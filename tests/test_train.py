"""train_min.py end to end at tiny sizes: every loss preset, synthetic data and a folder of
videos, resume equivalence, interrupts, and the messages for bad input."""
import json
import os
import signal
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

import data
import data_parallel
import framepred as fp
import metrics
import train_min

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--width", "0.03125", "--batch", "2", "--eval-clips", "2", "--log-every", "1", "--device", "cpu",
        "--processes", "1"]   # data_parallel: tests/test_data_parallel.py


def usable_gpu():
    """Whether kernels.load_backend would choose a GPU here (the same probe), as a reason or None."""
    from kernels import cupy_ops
    try:
        cupy_ops.probe()
    except Exception:
        return None
    return "a usable GPU is here, so --device gpu does not fail"


def run_cli(tmp_path, *extra, name="run"):
    out = str(tmp_path / name)
    return train_min.main(["--out", out] + TINY + list(extra)), out


@pytest.mark.parametrize("loss", sorted(fp.LOSS_PRESETS))
def test_train_every_preset_synthetic(tmp_path, capsys, loss):
    code, out = run_cli(tmp_path, "--loss", loss, "--steps", "2", "--eval-every", "2", "--warmup", "0")
    text = capsys.readouterr().out
    assert code == 0, text
    assert "step 2/2 | G " in text and "steps/s, ETA" in text
    assert ("D " in text and "acc real" in text) == bool(fp.LOSS_PRESETS[loss]["lam_adv"])
    assert "eval step 2: PSNR" in text and "(last input" in text
    params, config, state = fp.load_checkpoint(os.path.join(out, "checkpoint.npz"))
    assert state["step"] == 2 and config["loss"] == loss
    assert os.path.isfile(os.path.join(out, "samples", "step_000002.png"))
    assert os.path.isfile(os.path.join(out, "curves.png"))
    with open(os.path.join(out, "eval.jsonl")) as f:
        assert '"psnr_last"' in f.readline()


def write_video_folder(root, count=3, frames=12, size=(40, 48)):
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"Class{i}"
        folder.mkdir(parents=True)
        video = np.zeros((frames,) + size + (3,), np.uint8)
        video[:] = rng.integers(0, 255, (1,) + size + (3,), dtype=np.uint8) // 4
        for t in range(frames):
            video[t, 8:20, 4 + 2 * t:16 + 2 * t] = (200, 100 + 10 * i, 50)
        iio.imwrite(folder / f"v_Class{i}_g01_c01.avi", video, fps=10, codec="mjpeg")
    return root


def test_train_held_out_clips_ending_on_a_repeated_frame(tmp_path, capsys):
    """A held-out video with duplicated frames (each frame twice): the clips whose frame to predict
    repeats their last input (copying: inf dB) are named at the start and left out of the scores."""
    write_video_folder(tmp_path / "videos")
    held_out = tmp_path / "videos" / "Doubled" / "v_Doubled_g01_c01"
    held_out.mkdir(parents=True)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(6)]
    for t in range(12):  # frames 0 0 1 1 2 2 ...: the window of 5 from frame 0 ends on a new frame, from 5 on a repeat
        iio.imwrite(held_out / f"{t:03d}.png", frames[t // 2])
    (tmp_path / "list.txt").write_text("Doubled/v_Doubled_g01_c01\n")
    clips = data.open_source(str(tmp_path / "videos"), split_list=str(tmp_path / "list.txt")).test_clips(2, 5)
    assert np.isinf(metrics.psnr(clips[1:, 3], clips[1:, 4])).all()
    assert list(metrics.repeats_last_input(clips, 3)) == [False, True]
    code, _ = run_cli(tmp_path, "--loss", "l2", "--steps", "1", "--eval-every", "1", "--eval-clips", "2",
                      "--data", str(tmp_path / "videos"), "--split-list", str(tmp_path / "list.txt"))
    text = capsys.readouterr().out
    assert code == 0 and "held-out: 1 of the 2 clips end on a repeated frame" in text
    evals = [line for line in text.splitlines() if line.startswith("eval step")]
    assert evals and "inf" not in " ".join(evals) and "nan" not in " ".join(evals)


def test_train_on_video_folder(tmp_path, capsys):
    videos = write_video_folder(tmp_path / "videos")
    code, out = run_cli(tmp_path, "--loss", "gdl_l1", "--steps", "2", "--eval-every", "2", "--data", str(videos))
    assert code == 0, capsys.readouterr()
    assert fp.load_checkpoint(os.path.join(out, "checkpoint.npz"))[2]["step"] == 2


def test_train_scores_the_centre_of_large_held_out_frames(tmp_path, capsys):
    """--eval-size: the evaluations during training score the centre crop of larger frames (the
    copying baseline's PSNR in eval.jsonl is that of the crop, not of the whole frame)."""
    import metrics
    videos = write_video_folder(tmp_path / "videos")
    code, out = run_cli(tmp_path, "--loss", "l2", "--steps", "1", "--eval-size", "16", "--data", str(videos))
    assert code == 0
    clips = data.open_source(str(videos), subset="test").test_clips(2, 5)
    h, w = clips.shape[-2:]                     # the writer pads frames to its 16-pixel blocks
    assert f"scored during training on the centre 16x16 of their {w}x{h} frames" in capsys.readouterr().out
    crop = data.center_crop(clips, 16, 16)
    with open(os.path.join(out, "eval.jsonl")) as f:
        logged = json.loads(f.readline())["psnr_last"]
    assert logged == pytest.approx(float(np.mean(metrics.psnr(crop[:, 3], crop[:, 4]))), rel=1e-6)
    assert logged != pytest.approx(float(np.mean(metrics.psnr(clips[:, 3], clips[:, 4]))), rel=1e-3)


def test_eval_crop():
    assert train_min.eval_crop((272, 640), 96) == (96, 96)
    assert train_min.eval_crop((64, 64), 96) == (64, 64)
    assert train_min.eval_crop((40, 200), 100) == (40, 96)       # sides stay multiples of 8
    assert train_min.eval_crop((272, 640), 0) == (272, 640)


def interrupt_after(monkeypatch, calls):
    """Send ourselves SIGINT (a Ctrl-C) during training step number `calls`."""
    real_step, count = fp.train_step, {"n": 0}

    def step(*args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*args, **kwargs)
    monkeypatch.setattr(fp, "train_step", step)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_train_resume_equals_uninterrupted(tmp_path, monkeypatch, capsys, optimizer):
    """Stopped at step 3 (after the 2-step warm-up of G alone, at its own batch size) and resumed: the
    same weights and Adam moments as a run never stopped (the batches are drawn ahead, on a thread)."""
    args = ["--loss", "adv_gdl", "--steps", "6", "--eval-every", "100", "--ckpt-every", "100",
            "--optimizer", optimizer, "--warmup", "2", "--warmup-batch", "1"]
    code, straight = run_cli(tmp_path, *args, name="straight")
    assert code == 0
    interrupt_after(monkeypatch, 3)
    code, stopped = run_cli(tmp_path, *args, name="stopped")
    assert code == 130
    assert "interrupted at step 3" in capsys.readouterr().err
    assert fp.load_checkpoint(os.path.join(stopped, "checkpoint.npz"))[2]["step"] == 3
    monkeypatch.undo()
    # the device is the machine's, not the run's: on a GPU machine `auto` would go on on the GPU,
    # whose sums differ from the CPU's in the last bit
    assert train_min.main(["--resume", stopped, "--device", "cpu"]) == 0
    a, _, state_a = fp.load_checkpoint(os.path.join(straight, "checkpoint.npz"))
    b, _, state_b = fp.load_checkpoint(os.path.join(stopped, "checkpoint.npz"))
    assert state_a["step"] == state_b["step"] == 6
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert ("optimizer" in state_a) == (optimizer == "adam")
    if optimizer == "adam":
        opt_a, opt_b = state_a["optimizer"], state_b["optimizer"]
        assert opt_a["G"]["t"] == opt_b["G"]["t"] == 6 and opt_a["D"]["t"] == opt_b["D"]["t"] == 4
        assert opt_b["G"]["ema_beta"] == 0.998 and opt_b["G"]["ema"]       # the preset's average of G
        for net in ("G", "D"):
            for moment in fp.OPTIMIZER_ARRAYS:
                for key, value in opt_a[net].get(moment, {}).items():
                    np.testing.assert_array_equal(value, opt_b[net][moment][key], err_msg=f"{net} {moment} {key}")


@pytest.mark.parametrize("minutes, saved", [("0", [0, 1, 2, 3, 4]), ("10", [0, 4])])
def test_train_checkpoints_every_steps_but_not_more_often_than_minutes(tmp_path, monkeypatch, capsys, minutes, saved):
    """--ckpt-every 1 writes at every step unless the last checkpoint is younger than --ckpt-minutes;
    the start and the end are always written."""
    steps, real_save = [], train_min.save_run
    monkeypatch.setattr(train_min, "save_run", lambda out, ops, params, config, step, *a, **k:
                        steps.append(step) or real_save(out, ops, params, config, step, *a, **k))
    code, _ = run_cli(tmp_path, "--loss", "l2", "--steps", "4", "--eval-every", "100", "--ckpt-every", "1",
                      "--ckpt-minutes", minutes)
    assert code == 0, capsys.readouterr().out
    assert steps == saved


def test_train_sigint_in_subprocess_leaves_loadable_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train_min.py", "--loss", "l2", "--steps", "100000", "--out", str(out)]
                            + TINY, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step 2/"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    _, _, state = fp.load_checkpoint(str(out / "checkpoint.npz"))
    assert state["step"] >= 2


def test_train_non_finite_loss_stops_and_keeps_checkpoint(tmp_path, monkeypatch, capsys):
    real_step = fp.train_step

    def step(*args, **kwargs):
        log = real_step(*args, **kwargs)
        log["g_lp"] = float("nan")
        return log
    monkeypatch.setattr(fp, "train_step", step)
    code, out = run_cli(tmp_path, "--loss", "l2", "--steps", "5")
    err = capsys.readouterr().err
    assert code == 3 and "g_lp=nan is not finite" in err and "last good checkpoint" in err
    assert fp.load_checkpoint(os.path.join(out, "checkpoint.npz"))[2]["step"] == 0


@pytest.mark.parametrize("extra, message, status", [
    (["--data", "/no/such/folder"], "does not exist", 1),
    (["--patch", "16"], "too small for D", 1),
    (["--resume", "/no/such/run"], "checkpoint not found", 1),
    (["--init", "/no/such.npz"], "checkpoint not found", 1),
    (["--device", "gpu"], "--device gpu", 1),
    (["--val", "--data", "."], "--val is for the synthetic videos", 2),        # flags that do not go together
    (["--ema", "0.5", "--optimizer", "sgd"], "it needs --optimizer adam", 2),
])
def test_train_bad_input_message(tmp_path, capsys, extra, message, status):
    if extra == ["--device", "gpu"] and usable_gpu():
        pytest.skip(usable_gpu())
    code, _ = run_cli(tmp_path, "--loss", "l2", "--steps", "1", *extra)
    err = capsys.readouterr().err
    assert code == status and message in err and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    (["--min-motion", "-1"], "--min-motion: must be at least 0, got -1"),
    (["--min-motion", "nan"], "--min-motion: must be a finite number, got nan"),
    (["--pans", "1.5"], "--pans: must be at most 1, got 1.5"),
    (["--pans", "nan"], "--pans: must be a finite number"),
    (["--ema", "1"], "--ema: must be below 1, got 1"),
    (["--ema", "nan"], "--ema: must be a finite number"),
    (["--lr-g", "0", "0"], "--lr-g: must be above 0, got 0"),          # a ZeroDivisionError in lr_g_at once
    (["--lr-g", "-1", "1e-4"], "--lr-g: must be above 0, got -1"),     # a complex rate once
    (["--lr-d", "inf"], "--lr-d: must be a finite number, got inf"),
    (["--lam-adv", "nan"], "--lam-adv: must be a finite number"),
    (["--lam-lp", "-1"], "--lam-lp: must be at least 0, got -1"),
    (["--width", "inf"], "--width: must be a finite number"),          # an OverflowError once
    (["--width", "0"], "--width: must be above 0, got 0"),
    (["--d-width", "1e6"], "--d-width: must be at most 8, got 1e+06"),
    (["--lr-g", "1e-3", "x"], "--lr-g: not a number: 'x'"),
    (["--data", ""], "--data: an empty path"),                          # would have meant the current folder
    (["--init", " "], "--init: an empty path"),
    (["--out", ""], "--out: an empty path"),                            # the run once went to the current folder
    (["--eval-size", "7"], "--eval-size: must be 0 (whole frames) or a multiple of 8, got 7"),   # once rounded silently
    (["--patch", "20"], "--patch: must divide by 8 (four scales, s/8 .. s), got 20"),
    (["--seed", "10000000000000"], "--seed: must be below 2**32, got 10000000000000"),
])
def test_train_bad_number_or_empty_path_is_a_usage_error(tmp_path, capsys, extra, message):
    """Flags with a range are checked as the command line is read: exit status 2, the flag named."""
    with pytest.raises(SystemExit) as exit_:
        run_cli(tmp_path, "--loss", "l2", "--steps", "1", *extra)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err


def test_train_out_of_memory_says_what_to_lower(tmp_path, capsys, monkeypatch):
    """A MemoryError (--patch 4096, --width 8 on a small machine): one line and exit 1, no traceback."""
    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 15.8 GiB")
    monkeypatch.setattr(fp, "init_params", no_memory)
    code, _ = run_cli(tmp_path, "--loss", "l2", "--steps", "1")
    err = capsys.readouterr().err
    assert code == 1 and "error: out of memory (Unable to allocate 15.8 GiB): ask for less (a smaller --patch" in err


def test_train_empty_and_corrupt_data_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _ = run_cli(tmp_path, "--loss", "l2", "--steps", "1", "--data", str(tmp_path / "empty"))
    assert code == 1 and "empty" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.mp4").write_bytes(b"not a video at all")
    code, _ = run_cli(tmp_path, "--loss", "l2", "--steps", "1", "--data", str(bad))
    err = capsys.readouterr().err
    assert code == 1 and "broken.mp4" in err


def test_train_init_new_patch_gets_new_discriminator(tmp_path, capsys):
    code, first = run_cli(tmp_path, "--loss", "adv", "--steps", "1", name="first")
    assert code == 0
    code, out = run_cli(tmp_path, "--loss", "adv", "--steps", "1", "--patch", "40",
                        "--init", os.path.join(first, "checkpoint.npz"), name="finetune")
    text = capsys.readouterr().out
    assert code == 0 and "loaded G; D is new (patch 32 -> 40" in text
    code, _ = run_cli(tmp_path, "--loss", "adv", "--steps", "1", "--m", "2",
                      "--init", os.path.join(first, "checkpoint.npz"), name="wrong")
    assert code == 1 and "does not fit this run" in capsys.readouterr().err


def test_train_target_change_is_kept_by_the_run(tmp_path, capsys):
    """--target change: saved in the run's config, said at the start, kept by --resume (another
    --target is refused), and a G that predicts frames cannot --init it."""
    code, run = run_cli(tmp_path, "--loss", "l2", "--steps", "1", "--target", "change", name="change")
    assert code == 0 and "G predicts the change from the last input frame" in capsys.readouterr().out
    assert fp.load_checkpoint(os.path.join(run, "checkpoint.npz"))[1]["target"] == "change"
    assert train_min.main(["--resume", run, "--steps", "2", "--target", "frame"]) == 2
    assert "--target frame (the run has change)" in capsys.readouterr().err
    code, frame = run_cli(tmp_path, "--loss", "l2", "--steps", "1", name="frame")
    code, _ = run_cli(tmp_path, "--loss", "l2", "--steps", "1", "--target", "change", "--init", frame, name="init")
    assert code == 1 and "target: checkpoint 'frame', this run 'change'" in capsys.readouterr().err


def test_train_min_motion_is_kept_by_the_run(tmp_path, capsys, monkeypatch):
    """--min-motion: the training patches' threshold reaches the data source, is saved with the
    run and kept by --resume (another value is refused)."""
    seen = []
    real_open = train_min.data.open_source

    def open_source(*args, **kwargs):
        seen.append(kwargs.get("min_motion"))
        return real_open(*args, **kwargs)
    monkeypatch.setattr(train_min.data, "open_source", open_source)
    code, run = run_cli(tmp_path, "--loss", "l2", "--steps", "1", "--min-motion", "0")
    assert code == 0 and seen and seen[0] == 0.0
    assert fp.load_checkpoint(os.path.join(run, "checkpoint.npz"))[2]["args"]["min_motion"] == 0.0
    assert train_min.main(["--resume", run, "--steps", "2", "--min-motion", "0.001"]) == 2
    assert "--min-motion 0.001 (the run has 0)" in capsys.readouterr().err
    assert train_min.main(["--resume", run, "--steps", "2", "--min-motion", "0"]) == 0


def test_train_pans_are_kept_by_the_run(tmp_path, capsys, monkeypatch):
    """--pans: the fraction of camera pans reaches the video folder, is saved with the run and kept
    by --resume (another value is refused)."""
    videos = write_video_folder(tmp_path / "videos")
    seen = []
    real_open = train_min.data.open_source

    def open_source(*args, **kwargs):
        seen.append(real_open(*args, **kwargs))
        return seen[-1]
    monkeypatch.setattr(train_min.data, "open_source", open_source)
    code, run = run_cli(tmp_path, "--loss", "l2", "--steps", "1", "--data", str(videos), "--pans", "0.25")
    assert code == 0 and seen[0].pans == 0.25
    assert fp.load_checkpoint(os.path.join(run, "checkpoint.npz"))[2]["args"]["pans"] == 0.25
    assert train_min.main(["--resume", run, "--steps", "2", "--pans", "0.5"]) == 2
    assert "--pans 0.5 (the run has 0.25)" in capsys.readouterr().err
    assert train_min.main(["--resume", run, "--steps", "2"]) == 0 and seen[-1].pans == 0.25


def test_train_small_preset_on_real_video(tmp_path, capsys):
    """The small preset (and paper_adam, the GPU's default) on --data videos: G predicts the change
    and half the samples are pans, said at the start; the paper's motion filter stays; a flag given
    on the command line wins; the synthetic videos and the paper preset keep the paper's target and
    no pans."""
    videos = write_video_folder(tmp_path / "videos")
    code, run = run_cli(tmp_path, "--loss", "l2", "--steps", "1", "--data", str(videos), name="video")
    text = capsys.readouterr().out
    assert code == 0 and "preset small on real video: G predicts the change from the last input frame and " \
                         "half the training samples are camera pans over one of their frames " \
                         "(--target change --pans 0.5;" in text
    _, config, state = fp.load_checkpoint(os.path.join(run, "checkpoint.npz"))
    assert config["target"] == "change" and state["args"]["pans"] == 0.5
    assert state["args"]["min_motion"] == data.MIN_MOTION
    code, run = run_cli(tmp_path, "--loss", "l2", "--steps", "1", "--data", str(videos), "--target", "frame",
                        name="video_frame")
    text = capsys.readouterr().out
    assert code == 0 and "on real video: half the training samples are camera " \
                         "pans over one of their frames (--pans 0.5;" in text
    _, config, state = fp.load_checkpoint(os.path.join(run, "checkpoint.npz"))
    assert config["target"] == "frame" and state["args"]["pans"] == 0.5
    code, run = run_cli(tmp_path, "--loss", "l2", "--steps", "1", "--data", str(videos), "--preset", "paper_adam",
                        "--width", "0.125", name="video_paper_adam")
    assert code == 0 and "preset paper_adam on real video: G predicts the change" in capsys.readouterr().out
    _, config, state = fp.load_checkpoint(os.path.join(run, "checkpoint.npz"))
    assert config["target"] == "change" and state["args"]["pans"] == 0.5 and state["args"]["optimizer"] == "adam"
    for extra, name in ((["--preset", "paper", "--width", "0.125", "--data", str(videos)], "paper"), ([], "synthetic")):
        code, run = run_cli(tmp_path, "--loss", "l2", "--steps", "1", *extra, name=name)
        assert code == 0 and "on real video" not in capsys.readouterr().out
        _, config, state = fp.load_checkpoint(os.path.join(run, "checkpoint.npz"))
        assert config["target"] == "frame" and state["args"]["min_motion"] == data.MIN_MOTION
        assert state["args"]["pans"] == 0.0


def test_train_progress_compares_with_copying_and_logs_means(tmp_path, capsys, monkeypatch):
    """After the first evaluation the progress line says how the held-out scores compare with
    copying the last input; eval.jsonl holds the loss terms averaged since the last evaluation."""
    real_step, lp = fp.train_step, iter([1.0, 2.0, 3.0, 5.0])

    def step(*args, **kwargs):
        log = real_step(*args, **kwargs)
        log["g_lp"] = next(lp)
        return log
    monkeypatch.setattr(fp, "train_step", step)
    code, out = run_cli(tmp_path, "--loss", "gdl_l1", "--steps", "4", "--eval-every", "2", "--val")
    text = capsys.readouterr().out
    assert code == 0, text
    assert "optimizer adam: rho_G 0.0005 -> 0.0003" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("step 3/4")]
    assert lines and "vs copying" in lines[0] and "held-out PSNR" in lines[0]
    import json
    with open(os.path.join(out, "eval.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [0, 2, 4]          # step 0: the untrained model, no losses yet
    assert "g_lp" not in records[0] and [r["g_lp"] for r in records[1:]] == [1.5, 4.0]
    assert all(np.isfinite(r["psnr"]) and np.isfinite(r["psnr_last"]) for r in records)


@pytest.mark.parametrize("device, preset, width, optimizer, lr_g, length",
                         [("gpu", "paper_adam", 1.0, "adam", [5e-4, 5e-5], (50000, None)),
                          ("cpu", "small", 1 / 8, "adam", [5e-4, 3e-4], (None, 10.0))])
def test_default_preset_by_device(capsys, device, preset, width, optimizer, lr_g, length):
    """With no --preset, a GPU trains Table 1's widths with Adam for the paper's 50,000 steps, a CPU
    the small preset (rho_G lowered to 3e-4, where paper_adam ends at 5e-5) for the steps that fill
    10 minutes; --preset paper keeps the paper's SGD at its rates."""
    args = train_min.parse_args(["--loss", "adv_gdl"])
    args.preset = train_min.choose_preset(args, type("Ops", (), {"name": device}))
    assert args.preset == preset and f"preset {preset}: " in capsys.readouterr().out
    train_min.resolve_training_flags(args, args.preset)
    config = train_min.build_config(args, args.preset)
    assert (args.optimizer, args.lr_g, args.init_last, args.ema) == (optimizer, lr_g, "torch", 0.998)
    assert config["g_maps"] == fp.make_config(width=width)["g_maps"]
    assert train_min.default_length(args.preset) == length
    assert train_min.default_length(args.preset, steps=20) == (20, None)
    assert train_min.default_length(args.preset, minutes=2.5) == (None, 2.5)
    paper = train_min.parse_args(["--loss", "adv_gdl", "--preset", "paper"])
    train_min.resolve_training_flags(paper, train_min.choose_preset(paper, type("Ops", (), {"name": device})))
    assert (paper.optimizer, paper.lr_g, paper.lr_d, paper.ema) == ("sgd", [fp.LR_G_START, fp.LR_G_END], fp.LR_D, 0.0)
    # the small preset's own rho_G end is Adam's: with --optimizer sgd it takes the paper's rates
    small_sgd = train_min.parse_args(["--loss", "adv_gdl", "--preset", "small", "--optimizer", "sgd"])
    train_min.resolve_training_flags(small_sgd, "small")
    assert (small_sgd.lr_g, small_sgd.lr_d) == ([fp.LR_G_START, fp.LR_G_END], fp.LR_D)


def test_train_adversarial_warmup_default_is_a_fraction_of_the_run(tmp_path, capsys):
    """The small preset trains G alone for the first 90% of an adversarial run, then D joins."""
    code, out = run_cli(tmp_path, "--loss", "adv_gdl", "--steps", "20", "--eval-every", "100")
    text = capsys.readouterr().out
    assert code == 0, text
    assert "G alone for the first 18 steps" in text
    lines = {int(ln.split()[1].split("/")[0]): ln for ln in text.splitlines() if ln.startswith("step ")}
    assert "acc real" not in lines[18] and "acc real" in lines[19] and "acc real" in lines[20]
    _, _, state = fp.load_checkpoint(os.path.join(out, "checkpoint.npz"))
    assert state["optimizer"]["D"]["t"] == 2 and state["optimizer"]["G"]["t"] == 20
    code, _ = run_cli(tmp_path, "--loss", "adv_gdl", "--steps", "2", "--warmup", "5", name="never")
    assert code == 0 and "D never trains" in capsys.readouterr().out


def test_train_d_in_warmup_trains_d_from_the_first_step(tmp_path, capsys):
    """--d-in-warmup: D steps (and is logged) from step 1; G's adversarial term waits for the warm-up."""
    code, out = run_cli(tmp_path, "--loss", "adv_gdl", "--steps", "10", "--warmup", "8", "--d-in-warmup",
                        "--eval-every", "100")
    text = capsys.readouterr().out
    assert code == 0, text
    assert "G alone for the first 8 steps (D already training)" in text
    lines = {int(ln.split()[1].split("/")[0]): ln for ln in text.splitlines() if ln.startswith("step ")}
    assert "acc real" in lines[1] and "adv 0.000" in lines[8] and "adv 0.000" not in lines[10]
    _, _, state = fp.load_checkpoint(os.path.join(out, "checkpoint.npz"))
    assert state["optimizer"]["D"]["t"] == 10 and state["optimizer"]["G"]["t"] == 10


@pytest.mark.parametrize("extra, sizes", [
    ([], [(None, 8), (None, 8), (8, 8), (8, 8)]),                 # G alone, then Algorithm 1, at the adversarial batch
    (["--batch", "2"], [(None, 2), (None, 2), (2, 2), (2, 2)]),   # a given --batch holds for the warm-up too
    (["--warmup-batch", "4"], [(None, 4), (None, 4), (8, 8), (8, 8)]),   # the preset until stop 32
    (["--batch", "2", "--warmup-batch", "3"], [(None, 3), (None, 3), (2, 2), (2, 2)]),
])
def test_train_warmup_batch(tmp_path, monkeypatch, capsys, extra, sizes):
    """The minibatch sizes (D's, G's) each step trains on."""
    seen, real_step = [], fp.train_step

    def recording_step(ops, params, config, d_batch, g_batch, **kw):
        seen.append((None if d_batch is None else len(d_batch[0]), len(g_batch[0])))
        return real_step(ops, params, config, d_batch, g_batch, **kw)
    monkeypatch.setattr(fp, "train_step", recording_step)
    at = TINY.index("--batch")
    tiny = TINY[:at] + TINY[at + 2:]
    code = train_min.main(["--out", str(tmp_path / "run"), *tiny, "--loss", "adv_gdl", "--steps", "4",
                           "--warmup", "2", "--eval-every", "100", *extra])
    assert code == 0, capsys.readouterr()
    assert seen == sizes


def test_batch_prefetcher_draws_what_the_loop_would():
    """Drawn ahead on a thread, the batches are those drawn in the loop, and rng_before_pending()
    replays the batch requested but not taken."""
    source = data.open_source(None, seed=3)
    plain, ahead = np.random.default_rng(5), np.random.default_rng(5)
    draws = train_min.BatchPrefetcher(source, ahead, 2, 1, 16)
    for sizes in ([3], [2, 1], [4]):
        draws.request(sizes)
        for (X, Y), size in zip(draws.take(), sizes):
            X0, Y0 = source.sample(size, 2, 1, 16, plain)
            np.testing.assert_array_equal(X, X0)
            np.testing.assert_array_equal(Y, Y0)
    draws.request([2])
    replay = draws.rng_before_pending()
    X, Y = draws.take()[0]
    np.testing.assert_array_equal(source.sample(2, 2, 1, 16, replay)[0], X)
    np.testing.assert_array_equal(source.sample(2, 2, 1, 16, plain)[1], Y)
    draws.close()


def test_the_run_evaluates_saves_and_predicts_with_gs_averaged_weights(tmp_path, capsys):
    """--ema (the presets with Adam): the evaluation during training scores G's temporal average, not
    its last weights, and metrics.load_models and `framepred.py predict` take that average too."""
    from PIL import Image
    code, out = run_cli(tmp_path, "--loss", "gdl_l1", "--steps", "3", "--eval-every", "3", "--lr-g", "1e-2", "1e-2",
                        "--ema", "0.5")
    assert code == 0
    assert "G evaluated and saved as its weights' moving average (--ema 0.5)" in capsys.readouterr().out
    params, config, state = fp.load_checkpoint(os.path.join(out, "checkpoint.npz"))
    averaged = fp.averaged_weights(params, state["optimizer"])
    assert state["optimizer"]["G"]["t"] == 3
    clips = data.open_source(None, seed=0).test_clips(2, config["m"] + 1)
    with open(os.path.join(out, "eval.jsonl")) as f:
        logged = [json.loads(line) for line in f][-1]
    assert logged["step"] == 3
    assert logged["psnr"] == pytest.approx(train_min.evaluate(ops_cpu(), averaged, config, clips)["psnr"], rel=1e-6)
    assert logged["psnr"] != pytest.approx(train_min.evaluate(ops_cpu(), params, config, clips)["psnr"], rel=1e-4)
    model, = metrics.load_models([out])
    assert model["ema"] == 0.5
    for key in model["params"]:
        np.testing.assert_array_equal(model["params"][key], averaged[key], err_msg=key)
    frames = data.to_uint8(clips[0, :config["m"]]).transpose(0, 2, 3, 1)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"f{i}.png")
    assert fp.main(["predict", "--checkpoint", out, "--input", str(folder), "--frames", "1",
                    "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "G's weights averaged (ema 0.5)" in printed
    assert "note: this model was trained on the synthetic videos alone" in printed      # no --data
    assert not fp.trained_on_synthetic_videos({"args": {"data": "videos"}}) and not fp.trained_on_synthetic_videos(None)
    want = fp.generator_forward(ops_cpu(), averaged, config, data.stack_frames(data.to_unit(frames).transpose(0, 3, 1, 2))[None])[0][4][0]
    with Image.open(tmp_path / "pred" / "pred_1.png") as im:
        got = np.asarray(im.convert("RGB")).astype(int)
    assert np.abs(got - data.to_uint8(want).transpose(1, 2, 0).astype(int)).max() <= 1


def ops_cpu():
    from kernels import load_backend
    return load_backend("cpu", verbose=False)


@pytest.mark.parametrize("loss, processes", [("adv_gdl", "2"), ("gdl_l1", "1")])
def test_minutes_fits_the_steps_and_the_run_is_that_of_its_steps(tmp_path, capsys, loss, processes):
    """--minutes M times a few steps of each kind (in the worker processes when there are several),
    fits the run's length to M minutes and says which --steps repeats it: the timing trains copies
    on minibatches of its own, so the run ends with the weights of the run of that --steps, bit for bit."""
    code, out = run_cli(tmp_path, "--loss", loss, "--minutes", "0.1", "--eval-every", "25", "--processes", processes,
                        name="minutes")
    text = capsys.readouterr().out
    assert code == 0, text
    line = next(ln for ln in text.splitlines() if ln.startswith("--minutes 0.1: ") and "steps fill" in ln)
    steps = int(line.split("repeats")[0].split("--steps ")[1])
    kinds = ["G alone", "Algorithm 1"] if loss == "adv_gdl" else ["G step"]
    assert all(f"{kind} " in line for kind in kinds) and "an evaluation" in line, line
    assert steps >= 1 and steps == train_min.round_steps(steps)
    assert f"done: {out}/checkpoint.npz (step {steps})" in text
    code, again = run_cli(tmp_path, "--loss", loss, "--steps", str(steps), "--eval-every", "25", "--processes",
                          processes, name="steps")
    assert code == 0
    (a, _, state_a), (b, _, state_b) = (fp.load_checkpoint(os.path.join(d, "checkpoint.npz")) for d in (out, again))
    assert state_a["step"] == state_b["step"] == steps
    assert state_a["args"]["warmup"] == state_b["args"]["warmup"]
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_steps_that_fit_a_budget():
    """steps_in: with the warm-up a fraction f of N steps, N (f t_warm + (1 - f) t_adv) <= seconds;
    with a warm-up of W steps, W warm-up steps and then adversarial ones (or fewer warm-up steps
    when they alone fill the time). round_steps rounds down to 500s from 5,000, 100s from 1,000."""
    assert train_min.steps_in(600.0, 0.04, 0.16, None, 0.9) == 11538       # 600 / (0.036 + 0.016)
    assert train_min.steps_in(600.0, 0.04, 0.16, 1000, None) == 1000 + 3500  # 40 s, then 560 / 0.16
    assert train_min.steps_in(30.0, 0.04, 0.16, 1000, None) == 750
    assert train_min.steps_in(10.0, 0.04, 0.16, 0, None) == 62
    assert [train_min.round_steps(n) for n in (0, 7, 99, 123, 999, 1049, 4999, 11099, 11538)] == \
        [1, 7, 99, 120, 990, 1000, 4900, 11000, 11500]


def test_time_left_counts_the_adversarial_steps_at_their_cost():
    """The ETA during G's warm-up: with fit_steps' timings the adversarial steps ahead count at their
    own cost (here 4 warm-up steps each), without them at the warm-up's rate; once they run, the
    rate is theirs."""
    assert train_min.time_left(0, 100, 10.0, 90, (0.03, 0.12)) == pytest.approx((90 + 10 * 4) / 10.0)
    assert train_min.time_left(80, 100, 10.0, 90, (0.03, 0.12)) == pytest.approx((10 + 10 * 4) / 10.0)
    assert train_min.time_left(0, 100, 10.0, 90, None) == pytest.approx(10.0)
    assert train_min.time_left(95, 100, 2.0, 90, (0.03, 0.12)) == pytest.approx(2.5)
    assert train_min.time_left(50, 100, 5.0) == pytest.approx(10.0)


def test_minutes_and_steps_are_one_or_the_other(tmp_path, capsys):
    code, out = run_cli(tmp_path, "--steps", "2", "--minutes", "1")
    assert code == 2 and "--steps and --minutes both set the run's length" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "checkpoint.npz"))


def test_resume_takes_steps_not_minutes(tmp_path, capsys):
    """A run started with --minutes saved the steps it fitted; --resume goes on by --steps only."""
    code, out = run_cli(tmp_path, "--loss", "gdl_l1", "--minutes", "0.02", "--eval-every", "1000")
    assert code == 0
    _, _, state = fp.load_checkpoint(os.path.join(out, "checkpoint.npz"))
    assert state["args"]["minutes"] == 0.02 and state["args"]["steps"] == state["step"] >= 1
    capsys.readouterr()
    assert train_min.main(["--resume", out, "--minutes", "1"]) == 1
    err = capsys.readouterr().err
    assert f"keeps its length in steps ({state['step']})" in err and "--steps" in err


@pytest.mark.parametrize("failure, code, message", [
    (KeyboardInterrupt, 130, "interrupted while timing the steps for --minutes; nothing was written"),
    (data_parallel.WorkerError("worker 1 died"), 1, "timing the steps failed (worker 1 died); --steps N")])
def test_minutes_timing_interrupted_or_failed(tmp_path, capsys, monkeypatch, failure, code, message):
    """Ctrl-C or a dead worker while --minutes times the steps: a message and exit status, no traceback,
    and nothing written in the run folder."""
    def fail(*args, **kwargs):
        raise failure
    monkeypatch.setattr(train_min, "fit_steps", fail)
    got, out = run_cli(tmp_path, "--minutes", "1")
    assert got == code and message in capsys.readouterr().err
    assert not os.path.exists(out)


def test_minutes_timing_is_not_thrown_by_slow_first_draws(capsys):
    """A video folder decodes each video the first time it is drawn, so the first steps of a run wait
    for their minibatches; the steps then run at their own speed. fit_steps takes the median step,
    so six draws that take 0.8 s (four of them among the 20 timed steps: their mean would be at
    least 0.16 s a step) leave it at the speed of the others."""
    args = train_min.parse_args(TINY + ["--loss", "gdl_l1", "--minutes", "1"])
    ops = ops_cpu()
    args, params, config, _, _, _ = train_min.set_up_run(args, frozenset(), ops)
    args.batch = args.warmup_batch = 2
    synthetic, calls = data.SyntheticVideos(seed=0), []

    class SlowStart:
        def sample(self, *a):
            calls.append(1)
            if len(calls) <= 6:
                import time
                time.sleep(0.8)
            return synthetic.sample(*a)

    steps, seconds = train_min.fit_steps(1.0, ops, params, config, args, 1, SlowStart(), 0.0)
    assert len(calls) >= 22 and seconds["G step"] < 4 * 0.8 / 20, seconds     # the mean's floor: 0.16 s
    assert 1 <= steps <= 60 / seconds["G step"]
