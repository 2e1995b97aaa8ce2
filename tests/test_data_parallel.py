"""data_parallel: worker processes that share each minibatch train as one process would.

The oracle is framepred.train_step in this process on the whole minibatches, in float64: with plain
SGD the change of every parameter is -lr times its gradient, so the changes are compared (a gradient
weighted wrongly would hide under Adam, which divides out the gradient's scale). Each test that
starts workers costs about a second (fresh interpreters)."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, strategies as st

import data_parallel as dp
import framepred as fp
import train_min
from kernels import fast_cpu, numpy_ops
from test_train import ROOT, TINY

CONFIG = fp.make_config(width=1 / 32, loss="adv_gdl", patch=32)


def minibatch(rng, size, dtype=np.float64):
    return (rng.uniform(-1, 1, (size, 12, 32, 32)).astype(dtype), rng.uniform(-1, 1, (size, 3, 32, 32)).astype(dtype))


def param_changes(before, after):
    return {key: after[key] - before[key] for key in before}


@given(batch=st.integers(1, 40), data=st.data())
def test_share_slices_cover_the_minibatch_evenly(batch, data):
    processes = data.draw(st.integers(1, batch))
    slices = dp.share_slices(batch, processes)
    sizes = [s.stop - s.start for s in slices]
    assert len(slices) == processes and slices[0].start == 0 and slices[-1].stop == batch
    assert all(a.stop == b.start for a, b in zip(slices, slices[1:]))
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_auto_processes_one_per_core_for_thin_models_on_the_fast_cpu_backend():
    small, paper = fp.make_config(width=1 / 8), fp.make_config(width=1.0)
    assert dp.auto_processes(fast_cpu, small, [8, 4], cores=2) == 2
    assert dp.auto_processes(fast_cpu, small, [8, 4], cores=16) == 4       # no more than the smallest minibatch
    assert dp.auto_processes(fast_cpu, small, [1], cores=2) == 1
    assert dp.auto_processes(fast_cpu, paper, [8], cores=2) == 1           # wide GEMMs: BLAS threads do as well
    assert dp.auto_processes(fast_cpu, fp.make_config(width=1 / 8, d_width=1.0), [8], cores=2) == 1
    assert dp.auto_processes(numpy_ops, small, [8], cores=2) == 1

    class Gpu:
        name = "gpu"
    assert dp.auto_processes(Gpu(), small, [8], cores=2) == 1


@pytest.mark.parametrize("adversarial", [True, False])
def test_group_step_equals_one_process_on_the_whole_minibatch(adversarial):
    """Batch 3 over 2 workers (shares 2 and 1, weighted 2/3 and 1/3): D's and G's updates, the log,
    and both workers' parameters after two iterations."""
    rng = np.random.default_rng(1)
    params = fp.init_params(CONFIG, 0, dtype=np.float64)
    mine = {key: value.copy() for key, value in params.items()}
    step_args = dict(lr_g=0.5, lr_d=0.25, adversarial=adversarial, train_d=adversarial)
    with dp.ProcessGroup(2, "cpu", params, CONFIG) as group:
        for _ in range(2):
            d_batch, g_batch = (minibatch(rng, 3) if adversarial else None), minibatch(rng, 3)
            before = {key: value.copy() for key, value in mine.items()}
            expected = fp.read_log(fast_cpu, fp.train_step(fast_cpu, mine, CONFIG, d_batch, g_batch, **step_args))
            log = group.train_step(d_batch, g_batch, **step_args)
            assert log.keys() == expected.keys()
            for key in log:
                assert log[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key
            theirs = {key: value.copy() for key, value in before.items()}
            group.pull(theirs)
            want, got = param_changes(before, mine), param_changes(before, theirs)
            for key in want:
                scale = np.abs(want[key]).max()
                assert scale > 0 or not (key.startswith("D/") and adversarial), key
                np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-10 * max(scale, 1e-30), err_msg=key)
            mine = theirs                    # both go on from the workers' weights
        other = {key: value.copy() for key, value in params.items()}
        group.pull(other, rank=1)
        for key in mine:                     # the same update applied to the same numbers: bit for bit
            np.testing.assert_array_equal(other[key], mine[key], err_msg=key)


def test_group_keeps_adam_state_and_pull_returns_it():
    """The workers keep Adam's state, G's temporal average included; pull copies it. After one step
    the average is that step's weights (avg = (1 - beta_1) W_1 of total weight 1 - beta_1); after more it
    is not."""
    rng = np.random.default_rng(2)
    params = fp.init_params(CONFIG, 0, dtype=np.float32)
    opt = {"G": fp.adam_init(params, "G", ema=0.9), "D": fp.adam_init(params, "D")}
    with dp.ProcessGroup(2, "cpu", params, CONFIG, opt) as group:
        group.train_step(minibatch(rng, 2, np.float32), minibatch(rng, 2, np.float32), lr_g=1e-3)
        group.pull(params, opt)
        averaged = fp.averaged_weights(params, opt)
        for key in opt["G"]["ema"]:
            np.testing.assert_allclose(averaged[key], params[key], rtol=1e-5, atol=1e-7, err_msg=key)
        for _ in range(2):
            group.train_step(minibatch(rng, 2, np.float32), minibatch(rng, 2, np.float32), lr_g=1e-3)
        group.pull(params, opt)
    assert opt["G"]["t"] == opt["D"]["t"] == 3
    assert all(np.abs(v).max() > 0 for v in opt["G"]["v"].values())
    averaged = fp.averaged_weights(params, opt)
    assert any(not np.allclose(averaged[key], params[key], rtol=1e-5, atol=1e-7) for key in opt["G"]["ema"])


@pytest.mark.parametrize("attempt", range(3))
def test_the_failing_worker_is_the_one_reported_and_the_group_stops(attempt):
    """Only worker 1's share is bad (a truth Y one sample short: its share of Y is empty), so worker
    0 is left waiting at the barrier and stops there; whichever answers first, the error names
    worker 1 and its exception, with its traceback in details, and every worker exits."""
    rng = np.random.default_rng(3)
    group = dp.ProcessGroup(2, "cpu", fp.init_params(CONFIG, 0, dtype=np.float32), CONFIG)
    workers = list(group.workers)
    X, Y = minibatch(rng, 3, np.float32)
    with pytest.raises(dp.WorkerError, match=r"^worker process 1 failed: \w+Error: [^\n]+$") as failure:
        group.train_step(None, (X, Y[:2]), lr_g=1e-3, adversarial=False)
    assert failure.value.details.startswith("Traceback") and "train_step" in failure.value.details
    for worker in workers:
        worker.join(timeout=10)
        assert not worker.is_alive()
    with pytest.raises(dp.WorkerError, match="the group is closed"):
        group.train_step(None, (X, Y), lr_g=1e-3, adversarial=False)


def test_a_worker_killed_when_idle_is_reported():
    group = dp.ProcessGroup(2, "cpu", fp.init_params(CONFIG, 0, dtype=np.float32), CONFIG)
    try:
        os.kill(group.workers[1].pid, signal.SIGKILL)
        group.workers[1].join(timeout=10)
        with pytest.raises(dp.WorkerError, match=r"worker process 1 died \(exit code -9: killed"):
            group.train_step(None, minibatch(np.random.default_rng(4), 2, np.float32), lr_g=1e-3, adversarial=False)
    finally:
        group.close()


def test_a_dead_workers_exit_code_is_waited_for():
    """Its pipe can close before the dead process is reaped (seen once in CI under load: 'exit code
    None'): the group waits for it, so the message gives the exit code."""
    group = dp.ProcessGroup(2, "cpu", fp.init_params(CONFIG, 0, dtype=np.float32), CONFIG)
    try:
        os.kill(group.workers[1].pid, signal.SIGKILL)                 # no join: reaping is the group's
        assert "worker process 1 died (exit code -9: killed" in str(group._close_after_death(1))
    finally:
        group.close()


def test_a_worker_killed_at_the_barrier_does_not_hang_the_group():
    """Worker 1 killed while it waits at the barrier for worker 0 (held back with SIGSTOP): waking
    the barrier (abort) would wait for good for the dead sleeper, and so would worker 0 on arriving,
    so the group must stop worker 0 at once instead."""
    group = dp.ProcessGroup(2, "cpu", fp.init_params(CONFIG, 0, dtype=np.float32), CONFIG)
    workers, outcome = list(group.workers), {}
    batch = minibatch(np.random.default_rng(5), 2, np.float32)    # a share fits in the pipe's buffer

    def step():
        try:
            group.train_step(None, batch, lr_g=1e-3, adversarial=False)
        except dp.WorkerError as e:
            outcome["error"] = e
    os.kill(workers[0].pid, signal.SIGSTOP)
    stepping = threading.Thread(target=step, daemon=True)
    stepping.start()
    time.sleep(1.0)                                   # worker 1 steps on its sample and waits
    os.kill(workers[1].pid, signal.SIGKILL)         # (reaped by the group: a join here would race it)
    time.sleep(0.5)
    try:
        os.kill(workers[0].pid, signal.SIGCONT)     # if the group has not stopped it already
    except ProcessLookupError:
        pass
    stepping.join(timeout=20)
    assert not stepping.is_alive(), "the main process hangs"
    assert "worker process 1 died (exit code -9" in str(outcome.get("error"))
    assert not any(worker.is_alive() for worker in workers)


def test_a_minibatch_smaller_than_the_group_is_refused():
    with dp.ProcessGroup(2, "cpu", fp.init_params(CONFIG, 0, dtype=np.float32), CONFIG) as group:
        with pytest.raises(ValueError, match="a minibatch of 1 cannot be shared by 2 processes"):
            group.train_step(None, minibatch(np.random.default_rng(6), 1, np.float32), lr_g=1e-3, adversarial=False)


# ----------------------------------------------------------------------------- train_min --processes
PARALLEL = TINY + ["--processes", "2"]          # the last --processes counts


def test_train_min_refuses_more_processes_than_samples(tmp_path, capsys):
    assert train_min.main(["--out", str(tmp_path / "run"), "--loss", "l2", "--steps", "2"] + TINY + ["--processes", "3"]) == 2
    assert "--processes 3: each process needs a sample of every minibatch, and the smallest has 2" \
        in capsys.readouterr().err


def test_train_min_counts_only_the_minibatches_the_run_draws(tmp_path, capsys):
    """--warmup-batch 1 limits the processes only when G trains alone for some steps at that batch."""
    args = ["--loss", "adv_gdl", "--steps", "1", "--warmup-batch", "1", "--eval-every", "100"] + PARALLEL
    assert train_min.main(["--out", str(tmp_path / "a"), "--warmup", "0"] + args) == 0
    assert "2 worker processes of one core each" in capsys.readouterr().out
    assert train_min.main(["--out", str(tmp_path / "b"), "--warmup", "1"] + args) == 2
    assert "the smallest has 1" in capsys.readouterr().err


def test_train_min_ctrl_c_with_workers_then_resume_equals_straight(tmp_path, capsys):
    """Ctrl-C reaches the whole process group (the workers too, which leave it to the main process):
    the run saves and exits 130 with no traceback, and its resumption ends with the weights and Adam
    state of a run never stopped, with G alone for 2 steps and then D and G."""
    args = ["--loss", "adv_gdl", "--steps", "60", "--warmup", "2", "--warmup-batch", "2", "--eval-every", "100",
            "--ckpt-every", "100", "--optimizer", "adam"] + PARALLEL
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    assert train_min.main(["--out", straight] + args) == 0
    assert "2 worker processes of one core each" in capsys.readouterr().out
    proc = subprocess.Popen([sys.executable, "train_min.py", "--out", stopped] + args, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    for line in proc.stdout:
        if line.startswith("step 4/"):
            break
    os.killpg(proc.pid, signal.SIGINT)          # as a terminal's Ctrl-C: every process of the group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    step = fp.load_checkpoint(os.path.join(stopped, "checkpoint.npz"))[2]["step"]
    assert 4 <= step < 60
    # the device is the machine's, not the run's: on a GPU machine `auto` would go on on the GPU, in
    # one process
    assert train_min.main(["--resume", stopped, "--device", "cpu"]) == 0
    a, _, state_a = fp.load_checkpoint(os.path.join(straight, "checkpoint.npz"))
    b, _, state_b = fp.load_checkpoint(os.path.join(stopped, "checkpoint.npz"))
    assert state_a["step"] == state_b["step"] == 60 and state_b["args"]["processes"] == 2
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for net in ("G", "D"):
        for name in ("v", "ema"):
            for key, value in state_a["optimizer"][net].get(name, {}).items():
                np.testing.assert_array_equal(value, state_b["optimizer"][net][name][key], err_msg=f"{net} {name} {key}")
    assert state_b["optimizer"]["G"]["ema"]            # the preset keeps G's average
