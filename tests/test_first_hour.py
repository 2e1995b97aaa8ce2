"""The command lines as a new user meets them (issue 13): a run folder is never overwritten
unasked, flags are checked at parse time, one path rule for run folders and checkpoint files in
every command, --resume refuses changed flags, something to look at from step 0 and on Ctrl-C,
warnings as one line, a --help without doubled defaults."""
import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

import data
import framepred as fp
import metrics
import train_min
from test_train import TINY, interrupt_after, write_video_folder


def train(out, *extra, steps=2):
    return train_min.main(["--out", str(out), "--loss", "gdl_l1", "--steps", str(steps)] + TINY + list(extra))


def step_of(folder):
    return fp.peek_checkpoint(folder)[1]["step"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-step gdl_l1 run folder."""
    out = tmp_path_factory.mktemp("first_hour") / "run"
    assert train(out, "--eval-every", "100") == 0
    return str(out)


# ----------------------------------------------------------------------------- 1. the run folder
def test_second_run_into_the_same_folder_is_refused_unless_forced(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, steps=3) == 0
    before = (out / "checkpoint.npz").read_bytes()
    capsys.readouterr()
    assert train(out, "--loss", "l2") == 1
    err = capsys.readouterr().err
    assert f"{out} holds another run (step 3 of 3, loss gdl_l1" in err
    assert f"--resume {out}" in err and "--force" in err and "Traceback" not in err
    assert (out / "checkpoint.npz").read_bytes() == before          # nothing touched
    assert train(out, "--force", "--eval-every", "100") == 0
    text = capsys.readouterr().out
    assert ("--force: removed the earlier run's checkpoint.npz, eval.jsonl, curves.png, 2 sample grids "
            f"from {out}") in text
    assert step_of(out) == 2
    with open(out / "eval.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [0, 2]      # the old run's records are gone
    assert sorted(os.listdir(out / "samples")) == ["step_000000.png", "step_000002.png"]


def test_a_folder_of_other_files_is_used_and_kept(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert train(out) == 0
    assert (out / "notes.txt").read_text() == "mine" and step_of(out) == 2


@pytest.mark.parametrize("where, message", [("file", "is a file"), ("file/run", "is inside")])
def test_out_naming_a_file(tmp_path, capsys, where, message):
    (tmp_path / "file").write_text("not a folder")
    assert train(tmp_path / where) == 1
    err = capsys.readouterr().err
    assert message in err and "give a folder for the run" in err and "Traceback" not in err


@pytest.mark.parametrize("flag, value", [("--steps", "0"), ("--steps", "-3"), ("--batch", "0"),
                                         ("--eval-every", "0"), ("--warmup", "-1"), ("--patch", "4")])
def test_counts_are_checked_at_parse_time(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        train_min.main(["--out", str(tmp_path / "run"), flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: must be at least" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- 3. something to look at
def test_step_0_grid_and_score_and_a_grid_on_ctrl_c(tmp_path, monkeypatch, capsys):
    interrupt_after(monkeypatch, 3)
    assert train(tmp_path / "run", "--eval-every", "100", steps=50) == 130
    captured = capsys.readouterr()
    assert "eval step 0: PSNR" in captured.out and "untrained G" in captured.out
    assert sorted(os.listdir(tmp_path / "run" / "samples")) == ["step_000000.png", "step_000003.png"]
    assert "samples/step_000003.png" in captured.err
    with Image.open(tmp_path / "run" / "samples" / "step_000000.png") as im:
        a = np.asarray(im.convert("RGB"))
    # a title band and labels above the first row of patches: dark text pixels on white
    assert (a[:20] < 100).any() and (a[:, :40] < 100).any()


def test_steps_per_second_come_from_a_recent_window():
    meter = train_min.RecentRate(0, now=0.0, window=60.0)
    for t in range(1, 101):                        # 100 s at 1 step/s
        meter.update(t, now=float(t))
    rate = 0.0
    for k in range(1, 121):                        # then 120 s at 10 steps/s
        rate = meter.update(100 + 10 * k, now=100.0 + k)
    assert rate == pytest.approx(10.0, rel=0.02)   # the average since the start would be 6.1


# ----------------------------------------------------------------------------- 4. one path rule
def predict(ckpt, tmp_path):
    frames = tmp_path / "frames"
    if not frames.exists():
        frames.mkdir()
        clip = data.open_source(None).test_clips(1, 5)[0]
        for i, f in enumerate(data.to_uint8(clip).transpose(0, 2, 3, 1)):
            Image.fromarray(f).save(frames / f"f{i}.png")
    return fp.main(["predict", "--checkpoint", ckpt, "--input", str(frames), "--out", str(tmp_path / "pred"),
                    "--device", "cpu"])


def evaluate(ckpt, tmp_path):
    return metrics.main(["evaluate", "--checkpoint", ckpt, "--clips", "2", "--figures", "0", "--device", "cpu",
                         "--out", str(tmp_path / "eval")])


def resume(ckpt, tmp_path):
    return train_min.main(["--resume", ckpt, "--steps", "3"])


def init(ckpt, tmp_path):
    return train(tmp_path / "new", "--init", ckpt)


COMMANDS = {"--resume": resume, "--init": init, "predict --checkpoint": predict, "evaluate --checkpoint": evaluate}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("form", ["folder", "file"])
def test_a_run_folder_and_its_checkpoint_file_both_work(trained, tmp_path, capsys, command, form):
    import shutil
    run = shutil.copytree(trained, tmp_path / "run")           # --resume writes into it
    ckpt = str(run) if form == "folder" else os.path.join(run, "checkpoint.npz")
    assert COMMANDS[command](ckpt, tmp_path) == 0, capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_same_mistake_gets_the_same_message_and_status(tmp_path, capsys, command):
    (tmp_path / "README.md").write_text("# not a checkpoint\n")
    (tmp_path / "empty").mkdir()
    for path, message in [(tmp_path / "missing", "checkpoint not found"),
                          (tmp_path / "empty", "holds no checkpoint.npz"),
                          (tmp_path / "README.md", "not a .npz archive")]:
        assert COMMANDS[command](str(path), tmp_path) == 1, (command, path)
        err = capsys.readouterr().err
        assert message in err and "give a run folder of train_min.py or the checkpoint.npz in it" in err, err
        assert "allow_pickle" not in err and "Traceback" not in err


# ----------------------------------------------------------------------------- 6. --resume and its flags
def test_resume_refuses_a_changed_flag_and_says_what_it_applies(trained, tmp_path, capsys):
    import shutil
    run = str(shutil.copytree(trained, tmp_path / "run"))
    before = open(os.path.join(run, "checkpoint.npz"), "rb").read()
    assert train_min.main(["--resume", run, "--steps", "4", "--loss", "adv_gdl", "--lr-g", "1e-3", "5e-5"]) == 2
    err = capsys.readouterr().err
    assert "a resumed run keeps the flags it was started with" in err
    assert "--loss adv_gdl (the run has gdl_l1)" in err and "--lr-g 0.001 5e-05 (the run has 0.0005 0.0003)" in err
    assert f"--init {run} --out NEW_FOLDER" in err
    assert train_min.main(["--resume", run, "--out", str(tmp_path / "other")]) == 2
    assert "--out cannot be combined with --resume" in capsys.readouterr().err
    assert open(os.path.join(run, "checkpoint.npz"), "rb").read() == before
    # the same values as the run's are fine; --steps and --log-every apply and are named
    assert train_min.main(["--resume", run, "--steps", "3", "--loss", "gdl_l1", "--batch", "2",
                           "--log-every", "2"]) == 0
    assert "at step 2 of 3 (applied from this command line: --steps 3, --log-every 2)" in capsys.readouterr().out
    assert step_of(run) == 3


def test_resume_of_a_finished_run_says_steps_must_grow(trained, capsys):
    assert train_min.main(["--resume", trained]) == 1
    err = capsys.readouterr().err
    assert "has finished its 2 steps" in err and "--steps 4" in err
    assert train_min.main(["--resume", trained, "--steps", "2"]) == 1
    assert "--steps must be more than that" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 5. messages
def test_warnings_are_one_line_without_source(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = data.show_warning
        warnings.warn("only 1 test clips", data.DataWarning)
        warnings.warn("careful", RuntimeWarning)
    assert capsys.readouterr().err.splitlines() == ["warning: only 1 test clips", "warning (RuntimeWarning): careful"]


def test_one_video_says_how_it_is_split_and_warns_in_one_line(tmp_path, capsys):
    videos = write_video_folder(tmp_path / "videos", count=1, frames=30)
    assert train(tmp_path / "run", "--data", str(videos)) == 0
    captured = capsys.readouterr()
    assert "split in time, its first 80% of frames for training and the last 20% held out" in captured.out
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("warning: ") for ln in lines), captured.err   # no source lines
    assert "only 1 test clips" in captured.err


def test_device_auto_fallback_reads_as_information(monkeypatch, capsys):
    from kernels import cupy_ops, load_backend

    def no_gpu():
        raise RuntimeError("CuPy is not installed")
    monkeypatch.setattr(cupy_ops, "check_gpu", no_gpu)
    assert load_backend("auto").name == "cpu"
    out = capsys.readouterr().out
    assert out.startswith("device auto: running on the CPU") and "Error" not in out


def test_help_has_no_doubled_defaults_and_explains_seed_and_losses(capsys):
    with pytest.raises(SystemExit):
        train_min.main(["--help"])
    text = capsys.readouterr().out
    flat = " ".join(text.split())
    assert "(default: None)" not in flat and "SPEC" not in flat
    assert flat.count("(default: synthetic videos)") == 1
    assert "seeds the initial weights" in flat
    for name in fp.LOSS_PRESETS:
        assert f"{name} = " in flat
    for module, argv in ((fp, ["predict", "--help"]), (metrics, ["evaluate", "--help"])):
        with pytest.raises(SystemExit):
            module.main(argv)
        flat = " ".join(capsys.readouterr().out.split())
        assert "SPEC" not in flat and "run folder" in flat
