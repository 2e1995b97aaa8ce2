"""Train the paper's video predictor: `python train_min.py --loss adv_gdl`.

With no --data it trains on the built-in synthetic videos (data.SyntheticVideos). A run folder
(--out) receives checkpoint.npz (atomically, every --ckpt-every steps, at the end and on Ctrl-C),
eval.jsonl (held-out PSNR and sharpness of the model and of the last-input baseline) and
samples/step_XXXXXX.png (inputs, truth, the prediction at every scale). `--resume DIR` continues
a stopped run to its --steps with exactly the weights an uninterrupted run would have had.
"""
import argparse
import json
import os
import signal
import sys
import time

# OpenBLAS's idle threads spin ~0.1 s after each GEMM and take the second core from the im2col
# copies between GEMMs; a short timeout saves ~0.5 s per paper-preset step on 2 cores (bench.py).
# It only takes effect when set before NumPy is imported.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

import data
import framepred as fp
import metrics
from kernels import BackendError, load_backend

# paper: Table 1's widths with the paper's optimiser and rates (section 4.1), no warm-up.
# small: 1/8 of the widths for a CPU, a visible result in about 10 minutes on 2 cores. Its
# optimiser (Adam), step counts and warm-up depart from the paper, chosen by 10-minute runs scored
# on the validation draw (README "Training in minutes"): with the paper's SGD, gdl_l1 ends +2.1 dB
# over copying the last frame and 1.7 dB below it in sharpness; with Adam +3.3 dB and +0.2 dB.
PRESETS = {
    "paper": dict(width=1.0, steps=50000, optimizer="sgd", init_last="torch", warmup=0.0),
    # steps: about 10 minutes on 2 cores each (8000 G steps at batch 4; 2400 G-alone steps at
    # batch 8, then 600 adversarial iterations, each 2.6x the time of a G-alone step: 3800 steps
    # took 12m18s). warmup: the fraction of an adversarial run in which G trains alone on
    # l_p + GDL before D joins. d_in_warmup False: training D during the warm-up too makes each
    # step 1.8x slower and ended lower in the same time (-0.08 dB PSNR, -0.20 dB sharpness on the
    # validation draw).
    "small": dict(width=1 / 8, steps=8000, steps_adv=3000, optimizer="adam", init_last="torch", warmup=0.8,
                  d_in_warmup=False),
}
# Learning rates per optimiser: rho_G lowered geometrically from the first to the second value
# over the run, and rho_D. SGD's are the paper's (section 4.1).
LEARNING_RATES = {
    "sgd": dict(lr_g=[fp.LR_G_START, fp.LR_G_END], lr_d=fp.LR_D),
    "adam": dict(lr_g=[5e-4, 5e-5], lr_d=1e-3),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--loss", choices=sorted(fp.LOSS_PRESETS), default="adv_gdl",
                   help="loss preset of SPEC/paper Table 2 (p, alpha and the lambdas)")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                   help="auto takes the GPU when CuPy sees one, else the CPU")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="paper: Table 1 widths; small: 1/8 of them. Default: paper on a GPU, small on a CPU")
    p.add_argument("--data", default=None, help="folder of videos or frame folders (default: synthetic videos)")
    p.add_argument("--split-list", default=None, help="UCF101-style list of test videos, kept out of training")
    p.add_argument("--out", default="runs/latest", help="run folder: checkpoint, logs, sample grids")
    p.add_argument("--steps", type=int, default=None, help="total iterations of the run (default: by preset)")
    p.add_argument("--batch", type=int, default=None, help="minibatch (default: 8 with the adversarial loss, else 4)")
    p.add_argument("--patch", type=int, default=32, help="training patch side (a multiple of 8, >= 32 for D)")
    p.add_argument("--m", type=int, default=4, help="input frames")
    p.add_argument("--n", type=int, default=1, help="predicted frames")
    p.add_argument("--single-scale", action="store_true", help="scale 4 alone, no coarse input")
    p.add_argument("--width", type=float, default=None, help="feature-map multiplier (overrides the preset's)")
    p.add_argument("--d-width", type=float, default=None,
                   help="D's feature-map multiplier when it differs from G's (default: by preset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--p", type=int, choices=[1, 2], default=None, help="override the preset's l_p exponent")
    p.add_argument("--alpha", type=int, choices=[1, 2], default=None, help="override the GDL exponent")
    p.add_argument("--lam-lp", type=float, default=None, help="override lambda_lp")
    p.add_argument("--lam-gdl", type=float, default=None, help="override lambda_gdl")
    p.add_argument("--lam-adv", type=float, default=None, help="override lambda_adv")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default=None,
                   help="sgd: the paper's plain SGD; adam: Adam (default: by preset, paper sgd, small adam)")
    p.add_argument("--lr-g", type=float, nargs=2, default=None, metavar=("START", "END"),
                   help="rho_G, lowered geometrically from START to END over the run "
                        "(default: sgd 0.04 0.005 as in the paper, adam 5e-4 5e-5)")
    p.add_argument("--lr-d", type=float, default=None, help="rho_D (default: sgd 0.02 as in the paper, adam 1e-3)")
    p.add_argument("--init-last", choices=["torch", "zero"], default=None,
                   help="torch: every layer Torch-initialised (the authors'); zero: each G'_k's last convolution "
                        "starts at 0, so each scale starts as the upscaled coarse guess (default: by preset)")
    p.add_argument("--warmup", type=int, default=None, metavar="STEPS",
                   help="adversarial losses: train G alone on its l_p + GDL terms for STEPS steps before D joins "
                        "(default: by preset: paper 0, small 80%% of the steps)")
    p.add_argument("--d-in-warmup", action=argparse.BooleanOptionalAction, default=None,
                   help="D trains during G's warm-up too (its term joins G's loss after the warm-up), so it is "
                        "already a useful critic when it joins (default: by preset)")
    p.add_argument("--val", action="store_true",
                   help="score on the validation draw of the synthetic videos instead of the test clips "
                        "(for choosing settings without looking at the test set)")
    p.add_argument("--log-every", type=int, default=10, help="steps between progress lines")
    p.add_argument("--eval-every", type=int, default=200, help="steps between held-out evaluations and sample grids")
    p.add_argument("--ckpt-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument("--eval-clips", type=int, default=32, help="held-out clips per evaluation")
    p.add_argument("--resume", metavar="DIR", default=None, help="continue the run in DIR to its --steps")
    p.add_argument("--init", metavar="CHECKPOINT", default=None,
                   help="start from this checkpoint's G (and D when the patch size matches), e.g. 64x64 fine-tuning")
    p.add_argument("--bench", type=int, default=0, metavar="N", help="time N iterations after a warm-up and exit")
    return p.parse_args(argv)


class RunError(Exception):
    """A problem the user can fix; printed without a traceback."""


# ----------------------------------------------------------------------------- set-up
def choose_preset(args, ops):
    if args.preset:
        print(f"preset {args.preset} (asked for)")
        return args.preset
    preset = "paper" if ops.name == "gpu" else "small"
    why = "a GPU is in use" if ops.name == "gpu" else "running on the CPU (the paper's widths would take days here)"
    print(f"preset {preset}: {why}; --preset paper|small chooses")
    return preset


def resolve_training_flags(args, preset):
    """Fill the optimiser, learning rates and initialisation left to the preset."""
    spec = PRESETS[preset]
    args.optimizer = args.optimizer or spec["optimizer"]
    rates = LEARNING_RATES[args.optimizer]
    args.lr_g = list(args.lr_g) if args.lr_g is not None else list(rates["lr_g"])
    args.lr_d = args.lr_d if args.lr_d is not None else rates["lr_d"]
    args.init_last = args.init_last or spec["init_last"]
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
                          single_scale=args.single_scale,
                          loss=args.loss, p=args.p, alpha=args.alpha, lam_lp=args.lam_lp,
                          lam_gdl=args.lam_gdl, lam_adv=args.lam_adv)


def default_steps(preset, config):
    spec = PRESETS[preset]
    return spec.get("steps_adv", spec["steps"]) if config["lam_adv"] else spec["steps"]


def init_from_checkpoint(path, config, seed):
    """G from the checkpoint (its architecture must match); D too when the patch size matches."""
    try:
        loaded, old, _ = fp.load_checkpoint(path)
    except fp.CheckpointError as e:
        raise RunError(str(e)) from e
    g_keys = ["m", "n", "scales", "g_maps", "g_kernels"]
    diffs = [f"{k}: checkpoint {old.get(k)!r}, this run {config[k]!r}" for k in g_keys if old.get(k) != config[k]]
    if diffs:
        raise RunError(f"--init {path}: its G does not fit this run: " + "; ".join(diffs) +
                       " (use the same --m, --n, --width, --single-scale)")
    params = fp.init_params(config, seed=seed, zero_last=False)
    same_d = all(old.get(k) == config[k] for k in ["patch", "d_maps", "d_kernels", "d_fc", "d_maxpool"])
    for key, value in loaded.items():
        if key.startswith("G/") or same_d:
            params[key] = value
    print(f"--init {path}: loaded G" + (" and D" if same_d else
          f"; D is new (patch {old.get('patch')} -> {config['patch']} changes its fully connected layers)"))
    return params


# ----------------------------------------------------------------------------- evaluation and pictures
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


def save_sample_grid(path, ops, params, config, X, Y, rows=4):
    """One row per sample: the m inputs, the truth, then G's prediction at every scale (upscaled)."""
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
    heads = [f"input {t + 1}" for t in range(m)] + ["truth"] + [f"G scale {k}" for k in config["scales"]]
    metrics.save_grid_png(path, grid, col_labels=heads)


def draw_curves(out, config):
    """Redraw OUT/curves.png from every line of OUT/eval.jsonl: losses, D's accuracies, held-out scores."""
    with open(os.path.join(out, "eval.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    metrics.save_curves_png(os.path.join(out, "curves.png"), records, title=f"{out} (loss {config['loss']})")


# ----------------------------------------------------------------------------- checkpoints of the run
def save_run(out, ops, params, config, step, rng, args, opt=None):
    state = {"step": step, "rng": rng.bit_generator.state, "args": vars(args)}
    optimizer = None if opt is None else {
        net: {"t": st["t"], "m": {k: ops.to_host(v) for k, v in st["m"].items()},
              "v": {k: ops.to_host(v) for k, v in st["v"].items()}} for net, st in opt.items()}
    fp.save_checkpoint(os.path.join(out, "checkpoint.npz"), {k: ops.to_host(v) for k, v in params.items()},
                       config, state, optimizer)


def make_optimizer(ops, params, args, saved=None):
    """None for SGD; Adam's state per network, new or from a checkpoint's saved moments."""
    if args.optimizer != "adam":
        return None
    if saved is None:
        return {net: fp.adam_init(params, net) for net in ("G", "D")}
    return {net: {"t": st["t"], "m": {k: ops.asarray(v) for k, v in st["m"].items()},
                  "v": {k: ops.asarray(v) for k, v in st["v"].items()}} for net, st in saved.items()}


def resume_run(args):
    """Load DIR/checkpoint.npz of --resume DIR: params, config, step, data rng, and the run's own flags."""
    path = os.path.join(args.resume, "checkpoint.npz")
    try:
        params, config, state = fp.load_checkpoint(path)
    except fp.CheckpointError as e:
        raise RunError(f"--resume {args.resume}: {e}") from e
    if not state:
        raise RunError(f"--resume {args.resume}: {path} holds no training state (a model-only checkpoint; use --init)")
    saved = state["args"]
    for flag in ("steps", "device", "preset"):           # these may change on resume
        if getattr(args, flag) is not None:
            saved[flag] = getattr(args, flag)
    saved.update(resume=args.resume, out=args.resume, bench=0)
    for flag, old_default in (("optimizer", "sgd"), ("init_last", "torch"), ("warmup", 0), ("val", False),
                              ("d_in_warmup", False)):
        saved.setdefault(flag, old_default)          # runs saved before these flags existed
    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng"]
    saved_args = argparse.Namespace(**saved)
    if saved_args.optimizer == "adam" and "optimizer" not in state:
        raise RunError(f"--resume {args.resume}: {path} was trained with Adam but holds no Adam state")
    return saved_args, params, config, state["step"], rng, state.get("optimizer")


# ----------------------------------------------------------------------------- the run
def format_eta(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def progress_line(step, total, log, rate, config, scores=None):
    terms = [f"lp {log['g_lp']:.4f}"]
    terms += [f"gdl {log['g_gdl']:.4f}"] if config["lam_gdl"] else []
    terms += [f"adv {log['g_adv']:.3f}"] if config["lam_adv"] else []
    parts = [f"step {step}/{total}", f"G {log['g_total']:.4f} ({' '.join(terms)})"]
    if "d_loss" in log:
        parts.append(f"D {log['d_loss']:.3f} acc real {log['d_acc_real']:.2f} fake {log['d_acc_fake']:.2f}")
    if scores:
        parts.append(f"held-out PSNR {scores['psnr'] - scores['psnr_last']:+.2f} dB, "
                     f"sharpness {scores['sharp'] - scores['sharp_last']:+.2f} dB vs copying")
    parts.append(f"{rate:.2f} steps/s, ETA {format_eta((total - step) / max(rate, 1e-9))}")
    return " | ".join(parts)


def run(args):
    try:
        ops = load_backend(args.device)
    except BackendError as e:
        raise RunError(str(e)) from e
    saved_opt = None
    if args.resume:
        args, params, config, start, rng, saved_opt = resume_run(args)
        preset = args.preset or ("paper" if ops.name == "gpu" else "small")
        print(f"resuming {args.out} at step {start}")
    else:
        preset = choose_preset(args, ops)
        try:
            config = build_config(args, preset)
        except ValueError as e:
            raise RunError(str(e)) from e
        resolve_training_flags(args, preset)
        params = (init_from_checkpoint(args.init, config, args.seed) if args.init else
                  fp.init_params(config, args.seed, zero_last=args.init_last == "zero"))
        start, rng = 0, np.random.default_rng(args.seed)
        args.preset = preset
    total = args.steps if args.steps is not None else default_steps(preset, config)
    args.steps = total
    resolve_warmup(args, config, total)
    batch = args.batch or (8 if config["lam_adv"] else 4)
    m, n = config["m"], config["n"]
    if args.val and args.data:
        raise RunError("--val is for the synthetic videos; with --data, hold out videos with --split-list")
    try:
        source = data.open_source(args.data, split_list=args.split_list, seed=args.seed)
        test_source = source if args.data else data.open_source(None, seed=args.seed)
        source.sample(1, m, n, config["patch"], np.random.default_rng(0))   # fails now, not mid-run
        split = dict(split="val") if args.val else {}
        clips = None if args.bench else test_source.test_clips(args.eval_clips, m + 1, **split)
    except data.DataError as e:
        raise RunError(str(e)) from e
    if getattr(source, "skipped", None):
        print(f"skipped {len(source.skipped)} unusable video(s); see the warnings above")
    params = {k: ops.asarray(v) for k, v in params.items()}
    opt = make_optimizer(ops, params, args, saved_opt)
    print(f"{ops.name}: G {fp.count_parameters(config, 'G'):,} params, D {fp.count_parameters(config, 'D'):,}"
          f" params (width {config['width']:g}" + (f", D {config['d_width']:g}" if config.get("d_width", config["width"]) != config["width"] else "")
          + f"), loss {config['loss']}, batch {batch}, {total} steps -> {args.out}")
    warm = (f", G alone for the first {args.warmup} steps" + (" (D already training)" if args.d_in_warmup else "")
            if config["lam_adv"] and args.warmup else "")
    print(f"optimizer {args.optimizer}: rho_G {args.lr_g[0]:g} -> {args.lr_g[1]:g}"
          + (f", rho_D {args.lr_d:g}" if config["lam_adv"] else "") + f"; init {args.init_last}{warm}")

    def next_batch():
        X, Y = source.sample(batch, m, n, config["patch"], rng)
        return ops.asarray(X), ops.asarray(Y)

    if args.bench:
        import bench
        return bench.run_bench(ops, params, config, next_batch, args.bench)

    os.makedirs(os.path.join(args.out, "samples"), exist_ok=True)
    if start == 0:
        save_run(args.out, ops, params, config, 0, rng, args, opt)
    step, last_saved, t0 = start, start, time.time()
    sums, count, scores = {}, 0, None      # loss terms summed since the last evaluation
    stop = {"now": False}

    def request_stop(signum, frame):
        # Finish the current step (parameters are updated in place), then save and exit.
        # A second Ctrl-C stops at once; the last checkpoint on disk stays valid.
        print("\nstopping after this step (Ctrl-C again to abort now)", file=sys.stderr, flush=True)
        stop["now"] = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous_handlers = signal.signal(signal.SIGINT, request_stop), signal.signal(signal.SIGTERM, request_stop)
    try:
        while step < total and not stop["now"]:
            adversarial = bool(config["lam_adv"]) and step >= args.warmup
            train_d = bool(config["lam_adv"]) and (adversarial or args.d_in_warmup)
            d_batch = next_batch() if train_d else None         # D's minibatch, only when D trains
            g_batch = next_batch()
            log = fp.train_step(ops, params, config, d_batch, g_batch, lr_g=fp.lr_g_at(step, total, *args.lr_g),
                                lr_d=args.lr_d, opt=opt, adversarial=adversarial, train_d=train_d)
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
            if step % args.log_every == 0 or step == total:
                print(progress_line(step, total, log, (step - start) / (time.time() - t0), config, scores), flush=True)
            if step % args.eval_every == 0 or step == total:
                X, Y = (ops.to_host(a) for a in g_batch)
                save_sample_grid(os.path.join(args.out, "samples", f"step_{step:06d}.png"), ops, params, config, X, Y)
                scores = evaluate(ops, params, config, clips)
                means = {key: value / count for key, value in sums.items()}
                sums, count = {}, 0
                with open(os.path.join(args.out, "eval.jsonl"), "a") as f:
                    f.write(json.dumps({"step": step, **scores, **means}) + "\n")
                draw_curves(args.out, config)
                print(f"eval step {step}: PSNR {scores['psnr']:.2f} dB (last input {scores['psnr_last']:.2f}), "
                      f"sharpness {scores['sharp']:.2f} dB (last input {scores['sharp_last']:.2f})", flush=True)
            if step % args.ckpt_every == 0 or step == total:
                save_run(args.out, ops, params, config, step, rng, args, opt)
                last_saved = step
    except KeyboardInterrupt:
        print(f"\naborted during step {step + 1}; {args.out}/checkpoint.npz holds step {last_saved}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous_handlers[0])
        signal.signal(signal.SIGTERM, previous_handlers[1])
    if stop["now"]:
        save_run(args.out, ops, params, config, step, rng, args, opt)
        print(f"\ninterrupted at step {step}: saved {args.out}/checkpoint.npz; "
              f"`python train_min.py --resume {args.out}` continues", file=sys.stderr)
        return 130
    print(f"done: {args.out}/checkpoint.npz (step {step})")
    return 0


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except (RunError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
