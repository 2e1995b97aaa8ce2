"""Train the paper's video predictor: `python train_min.py --loss adv_gdl`.

With no --data it trains on the built-in synthetic videos (data.SyntheticVideos). A run folder
(--out) receives checkpoint.npz (atomically, every --ckpt-every steps but at most once every
--ckpt-minutes, at the end and on Ctrl-C),
eval.jsonl (held-out PSNR and sharpness of the model and of the last-input baseline) and
samples/step_XXXXXX.png (inputs, truth, the prediction at every scale; at step 0, at every
evaluation and on Ctrl-C). A new run refuses a folder that holds another run unless --force.
`--resume RUN` (a run folder or its checkpoint.npz) continues a stopped run to its --steps with
exactly the weights an uninterrupted run would have had, refusing flags that differ from the run's.
"""
import argparse
import json
import os
import signal
import sys
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor

# OpenBLAS's idle threads spin ~0.1 s after each GEMM and take the second core from the im2col
# copies between GEMMs; a short timeout saves ~0.5 s per paper-preset step on 2 cores (bench.py).
# It only takes effect when set before NumPy is imported.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

import data
import data_parallel
import figures
import framepred as fp
import metrics
from kernels import DEVICES, BackendError, load_backend

# paper: Table 1's widths with the paper's optimiser and rates (section 4.1), no warm-up.
# small: 1/8 of the widths for a CPU, a visible result in about 10 minutes on 2 cores. Its
# optimiser (Adam), step counts and warm-up depart from the paper, chosen by 10-minute runs scored
# on the validation draw (README "Training in minutes"): with the paper's SGD, gdl_l1 ends +2.1 dB
# over copying the last frame and 1.7 dB below it in sharpness; with Adam +3.3 dB and +0.2 dB.
EVAL_SIDE = 96       # --eval-size: the side of the held-out frames scored during training (see eval_crop)
PRESETS = {
    "paper": dict(width=1.0, steps=50000, optimizer="sgd", init_last="torch", warmup=0.0, target="frame",
                  min_motion=data.MIN_MOTION, pans=0.0),
    # minutes: the run's length is the steps that fill 10 minutes on the machine at hand (--minutes;
    # fit_steps times a few of each kind first): on 2 idle cores (two worker processes, --processes)
    # 16,500-17,500 G steps at batch 4 (l2, gdl_l1: at batch 8, 9,000 steps scored 0.3 dB lower on the
    # validation draws), or for the adversarial losses about 8,000 (90% G alone, then Algorithm 1's
    # iterations, all at batch 8; an iteration takes about 2x the time of a G-alone step). Until stop 32
    # G's warm-up ran at batch 4 (--warmup-batch 4), 12,500-13,500 steps in the 10 minutes, which the
    # 8,000 at batch 8 beat on the validation draws. Until stop 30 the preset's steps were fixed (10000,
    # adversarial 7500), fitted to 10 minutes of a slower moment of this machine: on the validation
    # draw 10,000 adversarial steps scored +0.12 dB PSNR and +0.20 dB sharpness over 7,500, and 15,000
    # +0.25 / +0.38 dB.
    # warmup: the fraction of an adversarial run in which
    # G trains alone on l_p + GDL before D joins. On the validation draw, a 5000-step warm-up at
    # batch 4 beat the former 2400 at batch 8 (+0.11 dB PSNR, +0.08 dB sharpness), and giving D
    # 1000 iterations instead of 600 (from a 4000-step warm-up) scored lower (-0.07, -0.10 dB).
    # d_in_warmup False: training D during the warm-up too makes each step 1.8x slower and ended
    # lower in the same time (-0.08 dB PSNR, -0.20 dB sharpness on the validation draw).
    # The default on a GPU: Table 1's widths and the paper's 50,000 steps, with Adam at the small preset's
    # rates in place of SGD. On the synthetic validation draw (H200, README "On a GPU"), at 2,500 steps
    # Adam was 1.28 dB PSNR and 1.65 dB sharpness ahead of the paper's SGD, and by 7,000 steps 0.78 dB
    # sharper than copying the last input, where SGD was 1.55 dB less sharp than it. On real video it
    # takes the small preset's two changes (below), chosen at 1/8 of the widths: not measured at these.
    "paper_adam": dict(width=1.0, steps=50000, optimizer="adam", init_last="torch", warmup=0.0, target="frame",
                       min_motion=data.MIN_MOTION, pans=0.0, ema=0.998, on_video=dict(target="change", pans=0.5)),
    "small": dict(width=1 / 8, minutes=10.0, optimizer="adam", init_last="torch", warmup=0.9,
                  d_in_warmup=False, target="frame", min_motion=data.MIN_MOTION, pans=0.0, ema=0.998,
                  # rho_G's end: with G's weights averaged (ema) the last steps' noise stays out of the
                  # model, so rho_G need not fall to 5e-5 (README "Training in minutes": 1.5e-4 +0.10 to
                  # +0.21 dB on four validation runs, 3e-4 another +0.05 to +0.10 dB)
                  lr_g=[5e-4, 3e-4],
                  # on real video (--data): G predicts the change from the last input frame. Chosen on
                  # held-out real videos (README "Real video"): in 10 minutes G cannot redraw a natural
                  # frame's still detail, which copying gets right. With only that, G settles on copying
                  # (+0.01 dB on the validation videos); making half the training samples camera pans over
                  # a training frame (data.pan_clip) gives it motion to learn (+0.99 dB over three seeds;
                  # with the paper's motion filter kept, +1.20 dB over two).
                  on_video=dict(target="change", pans=0.5)),
}
# Learning rates per optimiser: rho_G lowered geometrically from the first to the second value
# over the run, and rho_D. SGD's are the paper's (section 4.1). A preset may set its own lr_g for
# its optimiser.
LEARNING_RATES = {
    "sgd": dict(lr_g=[fp.LR_G_START, fp.LR_G_END], lr_d=fp.LR_D),
    "adam": dict(lr_g=[5e-4, 5e-5], lr_d=1e-3),
}


def _loss_presets_text():
    """'l2 = l2; ...; adv_gdl = l2 + GDL (alpha 1) + 0.05 x adversarial' from framepred.LOSS_PRESETS."""
    def terms(d):
        parts = [f"l{d['p']}"] + [f"GDL (alpha {d['alpha']})"] * bool(d["lam_gdl"])
        return " + ".join(parts + [f"{d['lam_adv']:g} x adversarial"] * bool(d["lam_adv"]))
    return "; ".join(f"{name} = {terms(d)}" for name, d in fp.LOSS_PRESETS.items())


def _rates_text(pair):
    """'0.0005 5e-05': rho_G's (start, end) for the help text, in the :g format the run prints."""
    return " ".join(f"{rate:g}" for rate in pair)


def multiple_of_8(low, rule):
    """An argparse type: an integer >= low that divides by 8 (G's four scales), else a usage error
    "must {rule}, got N"."""
    def parse(text):
        side = fp.int_at_least(low)(text)
        if side % 8:
            raise argparse.ArgumentTypeError(f"must {rule}, got {side}")
        return side
    return parse


def seed_value(text):
    """An argparse type for --seed: an integer in [0, 2**32), one 32-bit word (data.SyntheticVideos keys its clips by it)."""
    seed = fp.int_at_least(0)(text)
    if seed >= 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be below 2**32, got {seed}")
    return seed


def build_parser():
    """The command line; each integer is checked here (e.g. --steps 0 is a usage error, exit status 2)."""
    count, natural = fp.int_at_least(0), fp.int_at_least(1)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Exit status: 0 done, 1 an error the "
                                "message explains, 2 a bad command line, 3 a non-finite loss, 130 interrupted.")
    p.add_argument("--loss", choices=sorted(fp.LOSS_PRESETS), default="adv_gdl",
                   help="loss preset, the rows of the paper's Table 2 (section 3): "
                        + _loss_presets_text().replace("%", "%%")
                        + ". The overrides below change one term (default: %(default)s)")
    p.add_argument("--device", choices=list(DEVICES), default="auto",
                   help="auto takes the GPU when CuPy sees one, else the CPU; cpu: the fast CPU backend; "
                        "reference: the plain NumPy reference, kernels/numpy_ops.py (slower, for reading "
                        "and checking) (default: %(default)s)")
    p.add_argument("--processes", type=fp.int_at_least(0), default=0, metavar="P",
                   help="on the CPU, P worker processes of one core each share every minibatch "
                        "(data_parallel.py); 0: one per core, at most the minibatch's samples, for widths up to "
                        "1/4 of the paper's (the small preset), else 1. "
                        "A resumed run keeps its own unless given (default: %(default)s)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="paper: Table 1's widths and the paper's SGD; paper_adam: the same widths with Adam; "
                        "small: 1/8 of the widths, Adam, the steps that fill 10 minutes (--minutes). Default: paper_adam on a GPU, "
                        "small on a CPU")
    p.add_argument("--data", default=None, type=fp.path_text,
                   help="a folder of videos or frame folders, or one video file (default: synthetic videos)")
    p.add_argument("--split-list", default=None, type=fp.path_text, help="UCF101-style list of test videos, kept out of training")
    p.add_argument("--min-motion", type=fp.number_in(0), default=None, metavar="T",
                   help="keep a training patch only when its frames move: mean squared difference of consecutive "
                        f"frames on [-1, 1] above T (section 4.1; 0 keeps every patch, still ones too) (default: "
                        f"{data.MIN_MOTION:g})")
    p.add_argument("--pans", type=fp.number_in(0, 1), default=None, metavar="F",
                   help="the fraction of training samples that are camera pans, a patch moved at a random speed "
                        "over one frame of a training video or a synthetic frame (data.pan_clip; not the paper's) "
                        "(default: 0; small and paper_adam 0.5 on --data videos)")
    p.add_argument("--out", default="runs/latest", type=fp.path_text,
                   help="run folder: checkpoint, logs, sample grids (default: %(default)s). A folder that holds "
                        "another run is refused unless --force")
    p.add_argument("--force", action="store_true",
                   help="start a new run in an --out folder that holds another run, removing that run's "
                        "checkpoint, eval.jsonl, curves.png and sample grids")
    p.add_argument("--steps", type=natural, default=None,
                   help="total iterations of the run (default: by preset: paper and paper_adam 50000; small: as many "
                        "as --minutes fills)")
    p.add_argument("--minutes", type=fp.positive_float, default=None, metavar="MINUTES",
                   help="train for as many steps as fill about MINUTES minutes on this machine, counted from a few "
                        "steps of each kind timed before the run (on copies of the weights: the run is the one "
                        "--steps gives, and it prints that --steps); not with --steps (default: small preset "
                        f"{PRESETS['small']['minutes']:g})")
    p.add_argument("--batch", type=natural, default=None,
                   help="minibatch (default: 8 with the adversarial loss, else 4)")
    p.add_argument("--patch", type=multiple_of_8(8, "divide by 8 (four scales, s/8 .. s)"), default=32,
                   help="training patch side, a multiple of 8, >= 32 for D (default: %(default)s)")
    p.add_argument("--m", type=natural, default=4, help="input frames (default: %(default)s)")
    p.add_argument("--n", type=natural, default=1, help="predicted frames (default: %(default)s)")
    p.add_argument("--single-scale", action="store_true", help="scale 4 alone, no coarse input")
    p.add_argument("--width", type=fp.number_in(0, 8, above=True), default=None, help="feature-map multiplier (default: by preset)")
    p.add_argument("--d-width", type=fp.number_in(0, 8, above=True), default=None,
                   help="D's feature-map multiplier when it differs from G's (default: by preset)")
    p.add_argument("--seed", type=seed_value, default=0,
                   help="seeds the initial weights and the draw of training samples; with the synthetic videos "
                        "also which videos are made, the held-out clips included (metrics.py evaluate scores "
                        "seed 0's) (default: %(default)s)")
    p.add_argument("--p", type=int, choices=[1, 2], default=None, help="override the preset's l_p exponent")
    p.add_argument("--alpha", type=int, choices=[1, 2], default=None, help="override the preset's GDL exponent")
    p.add_argument("--lam-lp", type=fp.number_in(0), default=None, help="override the preset's lambda_lp")
    p.add_argument("--lam-gdl", type=fp.number_in(0), default=None, help="override the preset's lambda_gdl")
    p.add_argument("--lam-adv", type=fp.number_in(0), default=None, help="override the preset's lambda_adv")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default=None,
                   help="sgd: the paper's plain SGD; adam: Adam (default: by preset, paper sgd, the others adam)")
    p.add_argument("--lr-g", type=fp.positive_float, nargs=2, default=None, metavar=("START", "END"),
                   help="rho_G, lowered geometrically from START to END over the run (default: sgd "
                        f"{_rates_text(LEARNING_RATES['sgd']['lr_g'])} as in the paper; adam "
                        f"{_rates_text(LEARNING_RATES['adam']['lr_g'])}, in the small preset "
                        f"{_rates_text(PRESETS['small']['lr_g'])})")
    p.add_argument("--lr-d", type=fp.positive_float, default=None, help="rho_D (default: sgd 0.02 as in the paper, adam 1e-3)")
    p.add_argument("--ema", type=fp.number_in(0, 1, below=True), default=None, metavar="BETA",
                   help="with Adam, also keep G's weights averaged over its steps, avg <- b avg + (1 - b) W after "
                        "step t with b = min(BETA, (1 + t) / (10 + t)) (Adam's temporal averaging, Kingma & Ba "
                        "section 7.2, with a beta that grows; not the paper's), and evaluate, draw "
                        "and save for predict that average; 0: the last weights (default: by preset: small and "
                        "paper_adam 0.998, paper 0)")
    p.add_argument("--target", choices=fp.TARGETS, default=None,
                   help="what G's output is: frame, the predicted frame (the paper's), or change, the change "
                        "from the last input frame, added to it (G starts from copying that frame; "
                        "default: by preset: frame; small and paper_adam change on --data videos)")
    p.add_argument("--init-last", choices=["torch", "zero"], default=None,
                   help="torch: every layer Torch-initialised (the authors'); zero: each G'_k's last convolution "
                        "starts at 0, so each scale starts as the upscaled coarse guess (default: by preset)")
    p.add_argument("--warmup", type=count, default=None, metavar="STEPS",
                   help="adversarial losses: train G alone on its l_p + GDL terms for STEPS steps before D joins "
                        "(default: by preset: paper and paper_adam 0, small 90%% of the steps)")
    p.add_argument("--warmup-batch", type=natural, default=None, metavar="B",
                   help="minibatch of G's warm-up steps (default: --batch)")
    p.add_argument("--d-in-warmup", action=argparse.BooleanOptionalAction, default=None,
                   help="D trains during G's warm-up too (its term joins G's loss after the warm-up), so it is "
                        "already a useful critic when it joins (default: by preset)")
    p.add_argument("--val", action="store_true",
                   help="score on the validation draw of the synthetic videos instead of the test clips "
                        "(for choosing settings without looking at the test set)")
    p.add_argument("--log-every", type=natural, default=10, help="steps between progress lines (default: %(default)s)")
    p.add_argument("--eval-every", type=natural, default=200,
                   help="steps between held-out evaluations and sample grids (default: %(default)s)")
    p.add_argument("--ckpt-every", type=natural, default=200, help="steps between checkpoints (default: %(default)s)")
    p.add_argument("--ckpt-minutes", type=fp.number_in(0), default=1.0, metavar="M",
                   help="skip a checkpoint while the last one is younger than M minutes: at Table 1's widths a "
                        "checkpoint with Adam's state is 380 MiB, and a GPU makes 200 steps in 13 s (the end, "
                        "Ctrl-C and SIGTERM always write one) (default: %(default)s)")
    p.add_argument("--eval-clips", type=natural, default=32,
                   help="held-out clips per evaluation (default: %(default)s)")
    p.add_argument("--eval-size", type=multiple_of_8(0, "be 0 (whole frames) or a multiple of 8"), default=EVAL_SIDE, metavar="SIDE",
                   help="the evaluations during training score the centre SIDE x SIDE of larger held-out "
                        "frames, so that scoring stays a small part of the run (0: whole frames; "
                        "`python metrics.py evaluate` scores whole frames; default: %(default)s)")
    p.add_argument("--resume", metavar="RUN", default=None, type=fp.path_text,
                   help="continue a run (its folder or its checkpoint.npz) to its --steps, with its own flags; "
                        "only --steps, --device, --processes, --log-every, --eval-every, --ckpt-every and --ckpt-minutes "
                        "may change")
    p.add_argument("--init", metavar="RUN", default=None, type=fp.path_text,
                   help="start from a run's G (its folder or its checkpoint.npz), and its D when the patch size "
                        "matches, e.g. 64x64 fine-tuning")
    p.add_argument("--bench", type=count, default=0, metavar="N", help="time N iterations after a warm-up and exit")
    return p


def given_flags(parser, argv=None):
    """The destinations of the flags written on the command line (as opposed to left at their defaults)."""
    unset = object()
    names = set(vars(parser.parse_args([])))          # every destination, at its default
    ns = parser.parse_args(argv, namespace=argparse.Namespace(**{name: unset for name in names}))
    return {name for name in names if getattr(ns, name) is not unset}


def parse_args(argv=None):
    return build_parser().parse_args(argv)


class RunError(Exception):
    """A problem the user can fix; printed without a traceback (exit status 1)."""


class UsageError(RunError):
    """Flags that do not go together (e.g. --steps and --minutes): a bad command line, exit status 2."""


# ----------------------------------------------------------------------------- set-up
def choose_preset(args, ops):
    if args.preset:
        print(f"preset {args.preset} (asked for)")
        return args.preset
    preset = "paper_adam" if ops.name == "gpu" else "small"
    why = ("a GPU is in use (Table 1's widths, Adam in place of the paper's SGD)" if ops.name == "gpu"
           else "running on the CPU (the paper's widths would take days here)")
    print(f"preset {preset}: {why}; --preset {'|'.join(sorted(PRESETS))} chooses")
    return preset


VIDEO_DEFAULT_TEXT = {"target": "G predicts the change from the last input frame",
                      "pans": "half the training samples are camera pans over one of their frames"}


def apply_video_defaults(args, preset):
    """On a video folder (--data), fill the flags left unset from the preset's on_video values, and
    say so on one line."""
    video = PRESETS[preset].get("on_video", {}) if args.data else {}
    filled = [k for k in video if getattr(args, k) is None]
    for k in filled:
        setattr(args, k, video[k])
    if filled:
        def flags(values):
            return " ".join(f"{flag_name(k)} {_show(values[k])}" for k in filled)
        said = [VIDEO_DEFAULT_TEXT[k] for k in filled]
        said = [", ".join(said[:-1]), said[-1]] if len(said) > 1 else said
        print(f"preset {preset} on real video: " + " and ".join(said)
              + f" ({flags(video)}; on the synthetic videos {flags(PRESETS[preset])}; README \"Real video\")")


def resolve_training_flags(args, preset):
    """Fill the optimiser, learning rates, initialisation and motion threshold left to the preset."""
    spec = PRESETS[preset]
    if args.min_motion is None:
        args.min_motion = spec["min_motion"]
    if args.pans is None:
        args.pans = spec["pans"]
    args.optimizer = args.optimizer or spec["optimizer"]
    rates = dict(LEARNING_RATES[args.optimizer])
    if args.optimizer == spec["optimizer"] and "lr_g" in spec:
        rates["lr_g"] = spec["lr_g"]
    args.lr_g = list(args.lr_g) if args.lr_g is not None else list(rates["lr_g"])
    args.lr_d = args.lr_d if args.lr_d is not None else rates["lr_d"]
    args.init_last = args.init_last or spec["init_last"]
    if args.ema is None:
        args.ema = spec.get("ema", 0.0) if args.optimizer == "adam" else 0.0
    if args.ema and args.optimizer != "adam":
        raise UsageError("--ema averages G's weights in Adam's state (Kingma & Ba section 7.2): it needs --optimizer adam")
    if args.d_in_warmup is None:
        args.d_in_warmup = spec.get("d_in_warmup", False)


def resolve_warmup(args, config, total):
    """--warmup, or the preset's fraction of the run's steps (adversarial losses only)."""
    if args.warmup is None:
        args.warmup = int(round(PRESETS[args.preset]["warmup"] * total)) if config["lam_adv"] else 0
    if config["lam_adv"] and args.warmup >= total:
        print(f"warning: --warmup {args.warmup} >= --steps {total}: D never trains in this run")


def build_config(args, preset):
    width = args.width if args.width is not None else PRESETS[preset]["width"]
    d_width = args.d_width if args.d_width is not None else (PRESETS[preset].get("d_width") if args.width is None else None)
    return fp.make_config(m=args.m, n=args.n, patch=args.patch, width=width, d_width=d_width,
                          single_scale=args.single_scale, target=args.target or PRESETS[preset]["target"],
                          loss=args.loss, p=args.p, alpha=args.alpha, lam_lp=args.lam_lp,
                          lam_gdl=args.lam_gdl, lam_adv=args.lam_adv)


def default_length(preset, steps=None, minutes=None):
    """The run's length as (steps, minutes), one of them None: --steps, else --minutes (the steps
    are then fitted before the run, fit_steps), else the preset's."""
    if steps is not None and minutes is not None:
        raise UsageError("--steps and --minutes both set the run's length: give one of them")
    if steps is None and minutes is None:
        spec = PRESETS[preset]
        steps, minutes = spec.get("steps"), spec.get("minutes")
    return steps, minutes


def init_from_checkpoint(path, config, seed):
    """G from the checkpoint (its architecture must match); D too when the patch size matches."""
    try:
        loaded, old, state = fp.load_checkpoint(path)
        loaded = fp.checkpoint_weights(loaded, state)   # the run's averaged G, if it kept one
    except fp.CheckpointError as e:
        raise RunError(str(e)) from e
    g_keys = ["m", "n", "scales", "target", "g_maps", "g_kernels"]
    diffs = [f"{k}: checkpoint {old.get(k)!r}, this run {config[k]!r}" for k in g_keys if old.get(k) != config[k]]
    if diffs:
        raise RunError(f"--init {path}: its G does not fit this run: " + "; ".join(diffs) +
                       " (use the same --m, --n, --width, --single-scale, --target)")
    params = fp.init_params(config, seed=seed, zero_last=False)
    same_d = all(old.get(k) == config[k] for k in ["patch", "d_maps", "d_kernels", "d_fc", "d_maxpool"])
    for key, value in loaded.items():
        if key.startswith("G/") or same_d:
            params[key] = value
    print(f"--init {path}: loaded G" + (" and D" if same_d else
          f"; D is new (patch {old.get('patch')} -> {config['patch']} changes its fully connected layers)"))
    return params


# ----------------------------------------------------------------------------- evaluation and pictures
def eval_crop(hw, side):
    """(H, W) of the held-out frames -> the (h, w) scored during training: each side at most `side`
    (a multiple of 8, for G's pooling; 0: whole frames). At 272x640 the whole frames cost a small
    preset run 30-60 s per evaluation, every 200 steps of ~15 s; 96x96 costs about 2x the synthetic
    videos' 64x64 frames."""
    return data.crop_size(hw, side)


def evaluate(ops, params, config, clips, memory=fp.DEFAULT_TILE_MEMORY):
    """Held-out clips (count, m+1, 3, H, W) -> PSNR and sharpness difference of the model's first
    predicted frame and of the last-input baseline (SPEC "Evaluation"), averaged over the clips.
    G runs on 8 clips at a time, in tiles within memory bytes (fp.predict_tiled): whole frames of
    any size."""
    m = config["m"]
    Y = clips[:, m]
    pred = np.concatenate([fp.predict_tiled(ops, params, config, data.stack_frames(clips[i:i + 8, :m]), memory)[:, :3]
                           for i in range(0, len(clips), 8)])
    last = clips[:, m - 1]
    return dict(psnr=float(np.mean(metrics.psnr(pred, Y))), sharp=float(np.mean(metrics.sharpness_difference(pred, Y))),
                psnr_last=float(np.mean(metrics.psnr(last, Y))),
                sharp_last=float(np.mean(metrics.sharpness_difference(last, Y))))


def save_sample_grid(path, ops, params, config, X, Y, rows=4, title=None):
    """One row per training patch: the m inputs, the truth, then G's prediction at every scale
    (scale 1 the coarsest, each upscaled to the patch side), with a title and column labels."""
    preds, _ = fp.generator_forward(ops, params, config, ops.asarray(X[:rows]))
    preds = {k: ops.to_host(v) for k, v in preds.items()}
    m, side = config["m"], X.shape[2]
    grid = []
    for r in range(min(rows, len(X))):
        cells = [X[r, 3 * t:3 * t + 3] for t in range(m)] + [Y[r, :3]]
        for k in config["scales"]:
            f = side // preds[k].shape[2]
            cells.append(preds[k][r, :3].repeat(f, axis=1).repeat(f, axis=2))
        grid.append(cells)
    scales = config["scales"]
    coarse = {scales[0]: ", coarsest", scales[-1]: ", full size"} if len(scales) > 1 else {}
    heads = ([f"input t-{m - 1 - t}" if t < m - 1 else "input t" for t in range(m)] + ["truth t+1"]
             + [f"G scale {k}\n{preds[k].shape[2]}x{preds[k].shape[3]}{coarse.get(k, '')}" for k in config["scales"]])
    subtitle = (f"rows: {len(grid)} training patches of {side}x{side}; G's prediction of t+1 at each scale, "
                f"shown upscaled to {side}x{side}")
    figures.save_grid_png(path, grid, col_labels=heads, labels=[f"patch {r + 1}" for r in range(len(grid))],
                          title=f"{title}\n{subtitle}" if title else subtitle)


def draw_curves(out, config):
    """Redraw OUT/curves.png from every line of OUT/eval.jsonl: losses, D's accuracies, held-out scores."""
    with open(os.path.join(out, "eval.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    figures.save_curves_png(os.path.join(out, "curves.png"), records, title=f"{out} (loss {config['loss']})")


# ----------------------------------------------------------------------------- checkpoints of the run
def save_run(out, ops, params, config, step, rng, args, opt=None):
    state = {"step": step, "rng": rng.bit_generator.state, "args": vars(args)}
    fp.save_checkpoint(os.path.join(out, "checkpoint.npz"), {k: ops.to_host(v) for k, v in params.items()},
                       config, state, fp.optimizer_arrays(opt, ops.to_host))


def make_optimizer(ops, params, args, saved=None):
    """None for SGD; Adam's state per network (with G's temporal average when --ema), new or from a
    checkpoint's saved state."""
    if args.optimizer != "adam":
        return None
    if saved is None:
        return {net: fp.adam_init(params, net, ema=args.ema if net == "G" else 0.0) for net in ("G", "D")}
    return fp.optimizer_arrays(saved, ops.asarray)


# Flags a resumed run takes from the command line; every other flag it keeps from the run itself,
# and a different value on the command line is refused (RunError) rather than silently dropped.
RESUME_APPLIED = ("steps", "device", "processes", "log_every", "eval_every", "ckpt_every", "ckpt_minutes")
NOT_WITH_RESUME = ("out", "force", "init", "bench")
CONFIG_FLAGS = ("loss", "m", "n", "patch", "width", "d_width", "target", "p", "alpha", "lam_lp", "lam_gdl", "lam_adv")


def flag_name(dest, value=None):
    if value is False and dest == "d_in_warmup":
        return "--no-d-in-warmup"
    return "--" + dest.replace("_", "-")


def _same(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _show(value):
    return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(value, (list, tuple)) \
        else f"{value:g}" if isinstance(value, float) else str(value)


def run_value(dest, saved, config):
    """The value a run was trained with for the flag `dest`: from its config, else its saved flags."""
    if dest in CONFIG_FLAGS:
        return config.get(dest)
    if dest == "single_scale":
        return config["scales"] == [4]
    if dest == "batch" and saved.get("batch") is None:        # runs saved before the batch was stored
        return 8 if config["lam_adv"] else 4
    return saved.get(dest)


def resume_run(args, given=frozenset()):
    """Load the checkpoint of --resume RUN (a run folder or its checkpoint.npz): params, config,
    step, data rng, the run's own flags (with those of RESUME_APPLIED given on this command line)
    and the list of the flags applied. RunError for a flag that differs from the run's, or for
    nothing left to train."""
    try:
        path = fp.resolve_checkpoint(args.resume)
        params, config, state = fp.load_checkpoint(path)
    except fp.CheckpointError as e:
        raise RunError(f"--resume {args.resume}: {e}") from e
    folder = os.path.dirname(path) or "."
    if not state:
        raise RunError(f"--resume {args.resume}: {path} holds no training state (a model-only checkpoint; use --init)")
    if "minutes" in given:
        raise RunError(f"--resume {args.resume}: a resumed run keeps its length in steps ({state['args']['steps']}); "
                       f"to train it further give the new total with --steps, not --minutes")
    clash = [flag_name(d) for d in NOT_WITH_RESUME if d in given]
    if clash:
        raise UsageError(f"{', '.join(clash)} cannot be combined with --resume, which continues the run in its own "
                       f"folder ({folder}); start a new run from its weights with --init {folder} instead")
    saved = state["args"]
    for flag, old_default in (("optimizer", "sgd"), ("init_last", "torch"), ("warmup", 0), ("val", False),
                              ("d_in_warmup", False), ("warmup_batch", None), ("processes", 1), ("eval_size", 0),
                              ("min_motion", data.MIN_MOTION), ("pans", 0.0), ("ckpt_minutes", 1.0), ("ema", 0.0),
                              ("minutes", None)):
        saved.setdefault(flag, old_default)          # runs saved before these flags existed
    differ = []
    for dest in sorted(given - set(RESUME_APPLIED) - {"resume"}):
        mine, theirs = getattr(args, dest), run_value(dest, saved, config)
        if dest in ("data", "split_list") and mine is not None and theirs is not None:
            mine, theirs = os.path.normpath(mine), os.path.normpath(theirs)
        if not _same(mine, theirs):
            differ.append(f"{flag_name(dest, mine)} {_show(mine)} (the run has {_show(theirs)})")
    if differ:
        raise UsageError(f"--resume {args.resume}: a resumed run keeps the flags it was started with, and "
                       f"{'; '.join(differ)} differ{'s' * (len(differ) == 1)}. To train with other flags, start a "
                       f"new run from its weights: --init {folder} --out NEW_FOLDER")
    start, total = state["step"], saved["steps"]
    if "steps" in given and args.steps <= start:
        raise RunError(f"--resume {args.resume}: the run is at step {start} already; --steps must be more than that")
    if "steps" not in given and start >= total:
        raise RunError(f"--resume {args.resume}: the run has finished its {total} steps; to train it further, "
                       f"give the new total, e.g. --steps {2 * total} (rho_G's schedule is then spread over it)")
    applied = [f"{flag_name(d)} {getattr(args, d)}" for d in RESUME_APPLIED
               if d in given and not _same(getattr(args, d), saved.get(d))]
    for dest in RESUME_APPLIED:
        if dest in given or dest == "device":       # the device is the machine's, never the run's
            saved[dest] = getattr(args, dest)
    saved.update(resume=args.resume, out=folder, bench=0, force=False)
    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng"]
    saved_args = argparse.Namespace(**saved)
    if saved_args.optimizer == "adam" and "optimizer" not in state:
        raise RunError(f"--resume {args.resume}: {path} was trained with Adam but holds no Adam state")
    return saved_args, params, config, start, rng, state.get("optimizer"), applied


# ----------------------------------------------------------------------------- the run folder
RUN_FILES = (fp.CHECKPOINT_NAME, "eval.jsonl", "curves.png")


def previous_run_files(out):
    """The files an earlier run left in the folder out: RUN_FILES and samples/step_*.png."""
    found = [os.path.join(out, name) for name in RUN_FILES if os.path.isfile(os.path.join(out, name))]
    samples = os.path.join(out, "samples")
    if os.path.isdir(samples):
        found += sorted(os.path.join(samples, f) for f in os.listdir(samples)
                        if f.startswith("step_") and f.endswith(".png"))
    return found


def check_run_folder(out, force):
    """Refuse (RunError) an --out that is a file, or that holds another run unless force.
    -> the earlier run's files, which the new run removes just before it writes its own."""
    fp.check_output_folder(out, RunError, "the run (it receives checkpoint.npz, eval.jsonl, curves.png and samples/)")
    old = previous_run_files(out)
    if old and not force:
        what = "another run"
        ckpt = os.path.join(out, fp.CHECKPOINT_NAME)
        if os.path.isfile(ckpt):
            try:
                what += " (" + fp.describe_checkpoint(*fp.peek_checkpoint(ckpt)) + ")"
            except fp.CheckpointError:
                pass
        raise RunError(f"{out} holds {what}; continue it with --resume {out}, choose another --out, "
                       f"or add --force to replace it")
    return old


def clear_run_files(out, files):
    """Remove an earlier run's files (check_run_folder) and say so."""
    for path in files:
        os.remove(path)
    grids = sum(os.path.basename(os.path.dirname(f)) == "samples" for f in files)
    names = [os.path.basename(f) for f in files if os.path.basename(os.path.dirname(f)) != "samples"]
    names += [f"{grids} sample grid{'s' * (grids != 1)}"] if grids else []
    print(f"--force: removed the earlier run's {', '.join(names)} from {out}")


# ----------------------------------------------------------------------------- the run
def format_eta(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class RecentRate:
    """Steps per second over about the last ``window`` seconds, not since the start: the first
    steps (kernel compilation, caches filling) and a slower or faster phase long past do not
    skew it. update(step, now) -> the rate from the oldest point still needed to span the window."""

    def __init__(self, step, now, window=60.0):
        self.points, self.window = deque([(now, step)]), window

    def update(self, step, now):
        self.points.append((now, step))
        while len(self.points) > 2 and now - self.points[1][0] >= self.window:
            self.points.popleft()
        t0, s0 = self.points[0]
        return (step - s0) / max(now - t0, 1e-9)


class BatchPrefetcher:
    """Draws the next step's minibatches on a worker thread while the current step runs (most of a
    step is GEMMs and copies, which release the GIL).

    One request at a time, from the run's rng, in the order the loop asks: the batches are exactly
    those the loop would draw itself. A checkpoint saves rng_before_pending(), the rng as it was
    before the draw not yet taken, so a resumed run draws that batch again."""

    def __init__(self, source, rng, m, n, patch):
        self.source, self.rng, self.shape = source, rng, (m, n, patch)
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="batches")
        self.pending, self.state_before = None, rng.bit_generator.state

    def request(self, sizes):
        """Start drawing one minibatch per entry of `sizes` (float32 host arrays X, Y each)."""
        self.state_before = self.rng.bit_generator.state
        self.pending = self.worker.submit(lambda: [self.source.sample(b, *self.shape, self.rng) for b in sizes])

    def take(self):
        """The requested minibatches [(X, Y), ...], waiting for them if need be."""
        batches, self.pending = self.pending.result(), None
        self.state_before = self.rng.bit_generator.state
        return batches

    def rng_before_pending(self):
        rng = np.random.default_rng()
        rng.bit_generator.state = self.state_before
        return rng

    def close(self):
        self.worker.shutdown(wait=False, cancel_futures=True)


def time_left(step, total, rate, warmup=0, step_seconds=None):
    """Seconds until step `total` at `rate` steps/s (the current phase's). Before step `warmup`, with
    step_seconds = (a warm-up step's seconds, an adversarial one's) as fit_steps timed them, the
    adversarial steps still ahead count at their own cost (about 2 warm-up steps each in the small
    preset); without them (--steps) every step left counts at the warm-up's rate."""
    left = total - step
    if step_seconds and step < warmup:
        warm_left = warmup - step
        left = warm_left + (left - warm_left) * step_seconds[1] / step_seconds[0]
    return left / max(rate, 1e-9)


def progress_line(step, total, log, rate, seconds_left, config, scores=None):
    """One progress line: the loss terms of this step, D's, the last evaluation against copying the
    last input (its step in brackets), steps/s over the last minute and the time left (time_left)."""
    terms = [f"lp {log['g_lp']:.4f}"]
    terms += [f"gdl {log['g_gdl']:.4f}"] if config["lam_gdl"] else []
    terms += [f"adv {log['g_adv']:.3f}"] if config["lam_adv"] else []
    parts = [f"step {step}/{total}", f"G {log['g_total']:.4f} ({' '.join(terms)})"]
    if "d_loss" in log:
        parts.append(f"D {log['d_loss']:.3f} acc real {log['d_acc_real']:.2f} fake {log['d_acc_fake']:.2f}")
    if scores:
        parts.append(f"held-out PSNR {scores['psnr'] - scores['psnr_last']:+.2f} dB, "
                     f"sharpness {scores['sharp'] - scores['sharp_last']:+.2f} dB vs copying "
                     f"(eval step {scores['step']})")
    parts.append(f"{rate:.2f} steps/s, ETA {format_eta(seconds_left)}")
    return " | ".join(parts)


def step_kind(config, args, adversarial):
    """What a step does, for a step in the adversarial phase or not (G's warm-up, or a loss without
    D): (adversarial, whether D trains, its minibatch sizes in the order drawn: D's, then G's)."""
    adversarial = bool(config["lam_adv"]) and adversarial
    train_d = bool(config["lam_adv"]) and (adversarial or args.d_in_warmup)
    g_alone = bool(config["lam_adv"]) and not adversarial and not train_d
    return adversarial, train_d, ([args.batch] if train_d else []) + [args.warmup_batch if g_alone else args.batch]


def device_batches(ops, drawn, train_d):
    """The minibatches drawn for a step, [(X, Y), ...] on the host -> (D's minibatch, or None when D
    does not train, and G's), on the device."""
    *d_batch, g_batch = [tuple(ops.asarray(a) for a in xy) for xy in drawn]
    return (d_batch[0] if train_d else None), g_batch


def run_step(ops, params, config, opt, group, d_batch, g_batch, **step_args):
    """One training step (framepred.train_step), in the worker processes of `group` or in this one
    -> its log as floats."""
    if group:
        return group.train_step(d_batch, g_batch, **step_args)
    return fp.read_log(ops, fp.train_step(ops, params, config, d_batch, g_batch, opt=opt, **step_args))


def warmup_share(config, args):
    """The warm-up's share of an adversarial run's steps: --warmup's count, or the preset's fraction."""
    if not config["lam_adv"]:
        return None, 0.0
    return (args.warmup, None) if args.warmup is not None else (None, PRESETS[args.preset]["warmup"])


def steps_in(seconds, t_warm, t_adv, warmup, fraction):
    """The most steps that take `seconds` at t_warm s per warm-up step and t_adv s per adversarial one,
    with a warm-up of `warmup` steps or of `fraction` of the steps."""
    if warmup is None:
        return int(seconds / (fraction * t_warm + (1 - fraction) * t_adv))
    if seconds <= warmup * t_warm:
        return int(seconds / t_warm)
    return warmup + int((seconds - warmup * t_warm) / t_adv)


def round_steps(n):
    """Down to a round number, at least 1: a multiple of 500 from 5,000 up (so that runs of the same
    command on one machine, whose timings differ by a few percent, mostly train the same steps), of
    100 from 1,000, of 10 from 100."""
    unit = 500 if n >= 5000 else 100 if n >= 1000 else 10 if n >= 100 else 1
    return max(1, n // unit * unit)


def fit_steps(minutes, ops, params, config, args, processes, source, t_eval):
    """--minutes M: the number of steps that fill M minutes here. A few steps of each kind the run
    takes (G's warm-up steps, Algorithm 1's D and G steps, or a loss without D's G steps) are timed
    through the run's own path (its worker processes, minibatches drawn while a step runs), 20 after
    two untimed ones (fewer when they take over 30 s), and their median taken; t_eval: the seconds of
    one held-out evaluation (the run's first, already made). The steps that fit in M minutes, less
    this timing and the first and last evaluations, are rounded down (round_steps). The timed steps
    train copies of the weights (with a fresh optimiser state) on minibatches from an rng of their
    own, so the run that follows is exactly the run of `--steps N`. -> (N, {kind: seconds per step})."""
    began = time.perf_counter()
    warmup, fraction = warmup_share(config, args)
    warm_name = "G step" if not config["lam_adv"] else "warm-up" if args.d_in_warmup else "G alone"
    kinds = {}
    if not config["lam_adv"] or warmup or fraction:
        kinds[warm_name] = step_kind(config, args, adversarial=False)
    if config["lam_adv"]:
        kinds["Algorithm 1"] = step_kind(config, args, adversarial=True)
    copies = {k: v.copy() for k, v in params.items()}
    opt = make_optimizer(ops, copies, args)
    group = data_parallel.ProcessGroup(processes, ops.name, copies, config, opt) if processes > 1 else None
    draws = BatchPrefetcher(source, np.random.default_rng([args.seed, 9]), config["m"], config["n"], config["patch"])
    seconds = {}
    try:
        for name, (adversarial, train_d, sizes) in kinds.items():
            step_args = dict(lr_g=args.lr_g[0], lr_d=args.lr_d, adversarial=adversarial, train_d=train_d)
            draws.request(sizes)
            times, kind_began = [], time.perf_counter()
            while len(times) < 22 and (len(times) < 5 or time.perf_counter() - kind_began < 30):
                start = time.perf_counter()
                d_batch, g_batch = device_batches(ops, draws.take(), train_d)
                draws.request(sizes)
                run_step(ops, copies, config, opt, group, d_batch, g_batch, **step_args)
                times.append(time.perf_counter() - start)
            # the median of all but the first two: steps that waited for a video's first decode are
            # outliers here, as they are in the run (where the videos are then in the cache)
            seconds[name] = float(np.median(times[2:]))
            draws.take()
    finally:
        draws.close()
        if group:
            group.close()
    budget = max(0.0, 60 * minutes - (time.perf_counter() - began) - 2 * t_eval)
    per_eval = t_eval / args.eval_every                                  # the evaluations, shared by the steps
    if not config["lam_adv"]:
        steps = int(budget / (seconds[warm_name] + per_eval))
    else:
        t_warm = seconds.get(warm_name, 0.0) + per_eval
        steps = steps_in(budget, t_warm, seconds["Algorithm 1"] + per_eval, warmup, fraction)
    return round_steps(steps), seconds


def choose_processes(args, ops, config, batch_sizes, given=frozenset()):
    """--processes, 0 resolved (data_parallel.auto_processes); RunError where P processes cannot be
    used. A GPU trains in one process, so a resumed CPU run's number, not given on this command
    line, is dropped there."""
    dropped_on_gpu = ops.name == "gpu" and "processes" not in given
    if not args.processes or dropped_on_gpu:
        return data_parallel.auto_processes(ops, config, batch_sizes)
    if args.processes > 1 and ops.name == "gpu":
        raise UsageError(f"--processes {args.processes}: worker processes are for the CPU; a GPU trains in one process")
    if args.processes > min(batch_sizes):
        raise UsageError(f"--processes {args.processes}: each process needs a sample of every minibatch, "
                         f"and the smallest has {min(batch_sizes)}")
    return args.processes


def start_group(processes, ops, params, config, opt):
    """The worker processes for `processes` > 1, saying so; None for one process."""
    if processes <= 1:
        return None
    print(f"{processes} worker processes of one core each share every minibatch (--processes; "
          f"data_parallel.py)", flush=True)
    try:
        return data_parallel.ProcessGroup(processes, ops.name, params, config, opt)
    except (OSError, data_parallel.WorkerError) as e:
        raise RunError(f"--processes {processes}: cannot start the worker processes ({e}); "
                       f"--processes 1 trains in this process alone") from e


def set_up_run(args, given, ops):
    """A new run or a resumed one -> (args, params, config, start step, data rng, Adam state or None)."""
    if args.resume:
        args, params, config, start, rng, saved_opt, applied = resume_run(args, given)
        print(f"resuming {args.out} at step {start} of {args.steps}"
              + (f" (applied from this command line: {', '.join(applied)})" if applied else ""))
        return args, params, config, start, rng, saved_opt
    preset = choose_preset(args, ops)
    apply_video_defaults(args, preset)
    try:
        config = build_config(args, preset)
    except ValueError as e:
        raise RunError(str(e)) from e
    resolve_training_flags(args, preset)
    params = (init_from_checkpoint(args.init, config, args.seed) if args.init else
              fp.init_params(config, args.seed, zero_last=args.init_last == "zero"))
    args.preset = preset
    args.steps, args.minutes = default_length(preset, args.steps, args.minutes)
    return args, params, config, 0, np.random.default_rng(args.seed), None


def run(args, given=frozenset()):
    """Train (or time, --bench) as the flags say; returns the exit status. RunError for a problem
    the user can fix. `given`: the flags written on the command line (given_flags)."""
    if args.val and args.data:
        raise UsageError("--val is for the synthetic videos; with --data, hold out videos with --split-list")
    old_files = [] if args.resume or args.bench else check_run_folder(args.out, args.force)
    try:
        ops = load_backend(args.device)
    except BackendError as e:
        raise RunError(str(e)) from e
    args, params, config, start, rng, saved_opt = set_up_run(args, given, ops)
    batch = args.batch = args.batch or (8 if config["lam_adv"] else 4)
    # G's warm-up at the run's minibatch unless --warmup-batch says otherwise (why: PRESETS' comment);
    # a resumed run keeps its own.
    if args.warmup_batch is None:
        args.warmup_batch = batch
    m, n = config["m"], config["n"]
    try:
        source = data.open_source(args.data, split_list=args.split_list, seed=args.seed, min_motion=args.min_motion,
                                  pans=args.pans)
        test_source = source if args.data else data.open_source(None, seed=args.seed)
        if args.data:
            print(source.split_summary())
        # the patches of the first sample grid, from their own rng (the run's is untouched); fails now, not mid-run
        preview = source.sample(min(batch, 4), m, n, config["patch"], np.random.default_rng([args.seed, 7]))
        # the synthetic videos' validation draw (--val), or a video folder's clips cropped as they are read (memory)
        split = dict(max_side=args.eval_size) if args.data else dict(split="val") if args.val else {}
        clips = None if args.bench else test_source.test_clips(args.eval_clips, m + 1, **split)
        if clips is not None:
            h, w = getattr(test_source, "test_frame_size", clips.shape[-2:])    # the frames before any crop
            crop = eval_crop((h, w), args.eval_size)
            clips = data.center_crop(clips, *crop)                              # as it is, when cropped above
            if crop != (h, w):
                print(f"held-out: {len(clips)} clips, scored during training on the centre {crop[1]}x{crop[0]} "
                      f"of their {w}x{h} frames (--eval-size; `python metrics.py evaluate` scores whole frames)")
    except data.DataError as e:
        raise RunError(str(e)) from e
    # held-out clips whose frame to predict repeats their last input are left out unless every one does
    repeats = np.zeros(0, bool) if clips is None else metrics.repeats_last_input(clips, m - 1)
    if repeats.any():
        what = "they are left out of the scores" if not repeats.all() else "copying scores inf dB on all of them"
        print(f"held-out: {int(repeats.sum())} of the {len(clips)} clips end on a repeated frame (the same as their "
              f"last input: a video with duplicated frames); {what}")
        clips = clips if repeats.all() else clips[~repeats]
    if getattr(source, "skipped", None):
        print(f"skipped {len(source.skipped)} unusable video(s); see the warnings above")
    params = {k: ops.asarray(v) for k, v in params.items()}
    opt = make_optimizer(ops, params, args, saved_opt)
    # the minibatches the run draws: G's warm-up steps take their own (the number resolved is saved
    # with the run: a resumed run keeps it, and so sums in the same order)
    warmup, fraction = warmup_share(config, args)
    g_alone_steps = config["lam_adv"] and (warmup or fraction) and not args.d_in_warmup and not args.bench
    sizes = {batch, args.warmup_batch} if g_alone_steps else {batch}
    processes = args.processes = choose_processes(args, ops, config, sizes, given)
    first_scores = None            # the untrained model's scores, when --minutes timed them (the run's step 0)
    step_seconds = None            # --minutes: (warm-up step, adversarial step) seconds, for the ETA
    if args.steps is None and not args.bench:
        print(f"--minutes {args.minutes:g}: timing a few steps of each kind to fit the run to them", flush=True)
        try:
            began = time.perf_counter()
            first_scores = evaluate(ops, fp.averaged_weights(params, opt), config, clips)
            t_eval = time.perf_counter() - began
            args.steps, seconds = fit_steps(args.minutes, ops, params, config, args, processes, source, t_eval)
        except KeyboardInterrupt:
            print("\ninterrupted while timing the steps for --minutes; nothing was written", file=sys.stderr)
            return 130
        except (OSError, data_parallel.WorkerError) as e:
            raise RunError(f"--minutes {args.minutes:g}: timing the steps failed ({e}); --steps N trains a run "
                           f"of N steps without timing them") from e
        timed = ", ".join(f"{name} {1e3 * t:.0f} ms" for name, t in seconds.items())
        if len(seconds) == 2:
            step_seconds = tuple(seconds.values())                      # warm-up first, then Algorithm 1
        print(f"--minutes {args.minutes:g}: {args.steps:,} steps fill about {args.minutes:g} minutes here ({timed} a "
              f"step, an evaluation {t_eval:.1f} s every {args.eval_every} steps); --steps {args.steps} repeats "
              f"this run exactly", flush=True)
    total = args.steps
    if not args.bench:
        resolve_warmup(args, config, total)
    print(f"{ops.name}: G {fp.count_parameters(config, 'G'):,} params, D {fp.count_parameters(config, 'D'):,}"
          f" params (width {config['width']:g}" + (f", D {config['d_width']:g}" if config.get("d_width", config["width"]) != config["width"] else "")
          + f"), loss {config['loss']}, batch {batch}, " + (f"{total} steps" if total else "benchmark")
          + f" -> {args.out}"
          + ("; G predicts the change from the last input frame" if fp.predicts_change(config) else ""))
    warm = (f", G alone for the first {args.warmup} steps"
            + (" (D already training)" if args.d_in_warmup else f" at batch {args.warmup_batch}")
            if config["lam_adv"] and args.warmup and not args.bench else "")
    print(f"optimizer {args.optimizer}: rho_G {args.lr_g[0]:g} -> {args.lr_g[1]:g}"
          + (f", rho_D {args.lr_d:g}" if config["lam_adv"] else "") + f"; init {args.init_last}{warm}"
          + (f"; G evaluated and saved as its weights' moving average (--ema {args.ema:g})" if args.ema else ""))

    def next_batch():              # --bench's minibatches (training draws them through BatchPrefetcher)
        X, Y = source.sample(batch, m, n, config["patch"], rng)
        return ops.asarray(X), ops.asarray(Y)

    def step_batch_sizes(step):
        """The minibatches step `step` draws, in order: D's (only when D trains), then G's."""
        return step_kind(config, args, adversarial=step >= args.warmup)

    if args.bench:
        import bench
        group = start_group(processes, ops, params, config, opt)
        try:
            return bench.run_bench(ops, params, config, next_batch, args.bench, group=group)
        finally:
            if group:
                group.close()

    try:
        os.makedirs(os.path.join(args.out, "samples"), exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot make the run folder {args.out}: {e.strerror or e}") from e
    if old_files:
        clear_run_files(args.out, old_files)
    sums, count, scores = {}, 0, None      # loss terms summed since the last evaluation

    def grid(step, X, Y):
        path = os.path.join(args.out, "samples", f"step_{step:06d}.png")
        save_sample_grid(path, ops, fp.averaged_weights(params, opt), config, X, Y, title=f"{args.out}, step {step} of {total}")
        return path

    def evaluation(step, scores=None):
        """The held-out scores at `step` (or those given, of the same weights), logged and printed."""
        nonlocal sums, count
        scores = dict(scores if scores is not None else evaluate(ops, fp.averaged_weights(params, opt), config, clips),
                      step=step)
        means = {key: value / count for key, value in sums.items()}
        sums, count = {}, 0
        with open(os.path.join(args.out, "eval.jsonl"), "a") as f:
            f.write(json.dumps({**scores, **means}) + "\n")
        draw_curves(args.out, config)
        print(f"eval step {step}: PSNR {scores['psnr']:.2f} dB (last input {scores['psnr_last']:.2f}), "
              f"sharpness {scores['sharp']:.2f} dB (last input {scores['sharp_last']:.2f})", flush=True)
        return scores

    if start == 0:
        save_run(args.out, ops, params, config, 0, rng, args, opt)
        # Something to look at at once: the first training patches and the untrained G's guesses,
        # and the held-out scores to beat (copying the last input), drawn without touching rng.
        path = grid(0, *preview)
        scores = evaluation(0, first_scores)
        print(f"wrote {path}: training patches, their truth and the untrained G's prediction; "
              f"a new grid every {args.eval_every} steps and on Ctrl-C", flush=True)
    step, last_saved, g_batch, group = start, start, None, None
    saved_at = time.time()                              # the start counts as the last checkpoint
    draws = BatchPrefetcher(source, rng, m, n, config["patch"])
    draws.request(step_batch_sizes(step)[2])
    meter = RecentRate(start, time.time())
    stop = {"now": False}

    def request_stop(signum, frame):
        # Finish the current step (parameters are updated in place), then save and exit.
        # A second Ctrl-C stops at once; the last checkpoint on disk stays valid.
        print("\nstopping after this step (Ctrl-C again to abort now)", file=sys.stderr, flush=True)
        stop["now"] = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous_handlers = signal.signal(signal.SIGINT, request_stop), signal.signal(signal.SIGTERM, request_stop)
    try:
        group = start_group(processes, ops, params, config, opt)       # None in one process
        while step < total and not stop["now"]:
            adversarial, train_d, _ = step_batch_sizes(step)
            d_batch, g_batch = device_batches(ops, draws.take(), train_d)
            if step + 1 < total:
                draws.request(step_batch_sizes(step + 1)[2])    # drawn while this step runs
            log = run_step(ops, params, config, opt, group, d_batch, g_batch, lr_g=fp.lr_g_at(step, total, *args.lr_g),
                           lr_d=args.lr_d, adversarial=adversarial, train_d=train_d)
            bad = [k for k, v in log.items() if not np.isfinite(v)]
            if bad:
                print(f"\nstep {step + 1}: {', '.join(f'{k}={log[k]}' for k in bad)} is not finite; stopping. "
                      f"The last good checkpoint is {args.out}/checkpoint.npz (step {last_saved}). "
                      f"Try a lower --lr-g.", file=sys.stderr)
                return 3
            step += 1
            for key, value in log.items():
                sums[key] = sums.get(key, 0.0) + value
            count += 1
            if config["lam_adv"] and step == args.warmup:
                meter = RecentRate(step, time.time())   # the adversarial steps' rate, not the warm-up's
            if step % args.log_every == 0 or step == total:
                rate = meter.update(step, time.time())
                eta = time_left(step, total, rate, args.warmup or 0, step_seconds)
                print(progress_line(step, total, log, rate, eta, config, scores), flush=True)
            due_eval = step % args.eval_every == 0 or step == total
            due_ckpt = step == total or (step % args.ckpt_every == 0
                                         and time.time() - saved_at >= 60 * args.ckpt_minutes)
            if group and (due_eval or due_ckpt):
                group.pull(params, opt)                 # the workers' weights, for the evaluation and checkpoint
            if due_eval:
                grid(step, *(ops.to_host(a) for a in g_batch))
                scores = evaluation(step)
            if due_ckpt:
                save_run(args.out, ops, params, config, step, draws.rng_before_pending(), args, opt)
                last_saved, saved_at = step, time.time()
        if group and stop["now"]:
            group.pull(params, opt)                     # for the checkpoint and grid below
    except KeyboardInterrupt:
        print(f"\naborted during step {step + 1}; {args.out}/checkpoint.npz holds step {last_saved}", file=sys.stderr)
        return 130
    except data_parallel.WorkerError as e:
        raise RunError(f"{e}\nThe last good checkpoint is {args.out}/checkpoint.npz (step {last_saved}); "
                       f"--processes 1 trains in this process alone") from e
    finally:
        draws.close()
        if group:
            group.close()
        signal.signal(signal.SIGINT, previous_handlers[0])
        signal.signal(signal.SIGTERM, previous_handlers[1])
    if stop["now"]:
        save_run(args.out, ops, params, config, step, draws.rng_before_pending(), args, opt)
        shown = ""
        if g_batch is not None and step % args.eval_every:
            shown = f" and {grid(step, *(ops.to_host(a) for a in g_batch))}"
        print(f"\ninterrupted at step {step}: saved {args.out}/checkpoint.npz{shown}; "
              f"`python train_min.py --resume {args.out}` continues", file=sys.stderr)
        return 130
    print(f"done: {args.out}/checkpoint.npz (step {step})")
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = data.show_warning      # one line per warning, no source line
        try:
            return run(args, given_flags(parser, argv))
        except (RunError, data.DataError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2 if isinstance(e, UsageError) else 1
        except MemoryError as e:
            print(f"error: out of memory ({e}): ask for less (a smaller --patch, --batch, --width or "
                  f"--eval-clips)", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
