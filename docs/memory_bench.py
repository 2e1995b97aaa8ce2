"""Peak memory of full-frame prediction and of training on a video, measured on the real commands.

    python docs/memory_bench.py                        # the three measurements below
    python docs/memory_bench.py --only predict-small   # one of them
    python docs/memory_bench.py --only predict-paper --max-tiles 1

Each measurement runs a command in a child process and prints its peak resident set size
(getrusage's ru_maxrss of that child, from os.wait4) and its wall time:

- predict-paper: `framepred.py predict` at the paper's widths (Table 1) on a 1920x1080 video,
- predict-small: the same at the small preset's width (1/8) on a 1280x720 video,
- train-data:    `train_min.py --data` (small preset) on one 640x360 video for a few steps and one
                 held-out evaluation on whole frames.

The videos (a few seconds of moving synthetic content, .mp4) and the untrained checkpoints are
written under --tmp. --max-tiles K makes predict run G on only the K largest of its tiles: the
memory of a tile is freed before the next starts, so the largest tiles set the peak, and at the
paper's widths the whole of a 1920x1080 frame is some 40 TFLOP, hours on a CPU. The line printed
says how many of the tiles ran. Not a test: figures vary with the machine."""
import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import framepred as fp  # noqa: E402

# A child that runs framepred.py's command line, optionally on the K largest tiles only.
PREDICT_CHILD = """
import sys
sys.path.insert(0, {root!r})
import framepred as fp
plan, keep = fp.tile_plan, {max_tiles}
if keep:
    def largest(*args, **kwargs):
        tiles = plan(*args, **kwargs)
        print(f"memory_bench: G runs on the {{min(keep, len(tiles))}} largest of {{len(tiles)}} tiles", flush=True)
        return sorted(tiles, key=lambda t: -(t[0][1] - t[0][0]) * (t[0][3] - t[0][2]))[:keep]
    fp.tile_plan = largest
sys.exit(fp.main({argv!r}))
"""


def write_video(path, frames, height, width, fps=15):
    """An .mp4 of `frames` frames: a drifting colour pattern with squares moving across it."""
    import imageio.v2 as iio
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(0)
    boxes = [(rng.integers(0, height - 80), rng.integers(0, width - 80), *rng.integers(-6, 7, 2), rng.integers(0, 256, 3))
             for _ in range(6)]
    with iio.get_writer(str(path), fps=fps, macro_block_size=8) as w:
        for t in range(frames):
            img = np.stack([128 + 100 * np.sin((x + 3 * t) / 40), 128 + 100 * np.cos((y - 2 * t) / 30),
                            128 + 100 * np.sin((x + y + 4 * t) / 60)], axis=-1)
            for y0, x0, vy, vx, colour in boxes:
                yy, xx = (y0 + vy * t) % (height - 80), (x0 + vx * t) % (width - 80)
                img[yy:yy + 80, xx:xx + 80] = colour
            w.append_data(img.astype(np.uint8))
    return str(path)


def checkpoint(path, width):
    """An untrained checkpoint (memory and time do not depend on the weights' values)."""
    config = fp.make_config(width=width, loss="adv_gdl")
    fp.save_checkpoint(path, fp.init_params(config, seed=0), config)
    return str(path)


def measure(name, argv, cwd):
    """Run argv; -> (peak RSS in MiB, wall seconds, exit status, last lines of its output)."""
    t0 = time.time()
    child = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()                          # until the child closes it (exits)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - t0
    return usage.ru_maxrss / 1024, wall, child.returncode, output.strip().splitlines()[-6:]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["predict-paper", "predict-small", "train-data"], action="append")
    p.add_argument("--tmp", default="/tmp/framepred_memory_bench", help="folder for the videos, checkpoints and outputs")
    p.add_argument("--max-tiles", type=int, default=0, metavar="K",
                   help="predict: run G on the K largest tiles only (default: all)")
    p.add_argument("--memory", type=float, default=None, metavar="MIB", help="predict's --memory (default: its own)")
    p.add_argument("--steps", type=int, default=20, help="train-data: steps, the last one followed by the evaluation")
    args = p.parse_args(argv)
    todo = args.only or ["predict-small", "train-data", "predict-paper"]
    os.makedirs(args.tmp, exist_ok=True)
    py = sys.executable
    for name in todo:
        tmp = os.path.join(args.tmp, name)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        if name.startswith("predict"):
            paper = name == "predict-paper"
            h, w = (1080, 1920) if paper else (720, 1280)
            video = write_video(os.path.join(tmp, f"video_{w}x{h}.mp4"), 30, h, w)
            ckpt = checkpoint(os.path.join(tmp, "model.npz"), 1.0 if paper else 1 / 8)
            cli = ["predict", "--checkpoint", ckpt, "--input", video, "--frames", "1", "--device", "cpu",
                   "--out", os.path.join(tmp, "pred")] + (["--memory", str(args.memory)] if args.memory else [])
            cmd = [py, "-c", PREDICT_CHILD.format(root=ROOT, max_tiles=args.max_tiles, argv=cli)]
            what = f"predict, {'paper width' if paper else 'small preset (width 1/8)'}, {w}x{h}"
        else:
            folder = os.path.join(tmp, "videos")
            os.makedirs(folder)
            write_video(os.path.join(folder, "video_640x360.mp4"), 250, 360, 640, fps=25)
            cmd = [py, os.path.join(ROOT, "train_min.py"), "--data", folder, "--preset", "small", "--device", "cpu",
                   "--steps", str(args.steps), "--eval-every", str(args.steps), "--log-every", str(args.steps),
                   "--out", os.path.join(tmp, "run")]
            what = f"train_min.py --data (one 640x360 video, 250 frames), small preset, {args.steps} steps + 1 evaluation"
        print(f"{name}: {what}", flush=True)
        peak, wall, rc, tail = measure(name, cmd, ROOT)
        for line in tail:
            print(f"    | {line}")
        print(f"{name}: exit {rc}, peak_rss_mib={peak:.0f}, wall_s={wall:.0f}", flush=True)


if __name__ == "__main__":
    main()
