"""framepred: the model of Mathieu, Couprie & LeCun, "Deep multi-scale video prediction beyond
mean square error" (ICLR 2016), with every backward pass written by hand.

Read beside the paper (and ../shared/SPEC.md):
  section 2.1, eq. 1  -> generator_forward / generator_backward
  section 2.2         -> discriminator_forward / discriminator_backward, d_loss, the adversarial term
  section 3 (GDL)     -> kernels.numpy_ops.gdl_loss, used in g_loss
  Algorithm 1         -> train_step: a D step on one minibatch, then a G step on another
  Table 1             -> G_TABLE, D_TABLE
then what the paper leaves to the reader: checkpoints, whole frames in tiles (predict_tiled: G on
frames of any size in bounded memory), and the `predict` command.

Parameters live in a flat dict whose keys are the checkpoint's: "G/scale{k}/conv{i}/weight", ...
`ops` is a backend from kernels.load_backend (the NumPy reference, the fast CPU backend or CUDA);
nothing here branches on which, but for one speed choice a backend may ask for (d_loss_batched).
Backward passes skip the gradients nobody needs by one rule, `Skip`.
"""
import json
import os
import sys
import zipfile
from typing import NamedTuple

import numpy as np

# ----------------------------------------------------------------------------- Table 1
# Generator, per scale k = 1..4: feature maps between the convolutions, kernel sizes.
# Each stack ends with a convolution to 3n channels (the predicted frames).
G_TABLE = [
    ([128, 256, 128], [3, 3, 3, 3]),
    ([128, 256, 128], [5, 3, 3, 5]),
    ([128, 256, 512, 256, 128], [5, 3, 3, 3, 3, 5]),
    ([128, 256, 512, 256, 128], [7, 5, 5, 5, 5, 7]),
]
# Discriminator, per scale: conv feature maps, kernel sizes, fully connected sizes before the
# single output unit; scale 4 ends its convolutions with 2x2 max pooling.
D_TABLE = [
    ([64], [3], [512, 256]),
    ([64, 128, 128], [3, 3, 3], [1024, 512]),
    ([128, 256, 256], [5, 5, 5], [1024, 512]),
    ([128, 256, 512, 128], [7, 7, 5, 5], [1024, 512]),
]
D_MAXPOOL = [False, False, False, True]

# SPEC's loss presets (section 4 and Table 2 of the paper): p, alpha, lambda_lp, lambda_gdl, lambda_adv.
LOSS_PRESETS = {
    "l2": dict(p=2, alpha=1, lam_lp=1.0, lam_gdl=0.0, lam_adv=0.0),
    "l1": dict(p=1, alpha=1, lam_lp=1.0, lam_gdl=0.0, lam_adv=0.0),
    "gdl_l1": dict(p=1, alpha=1, lam_lp=1.0, lam_gdl=1.0, lam_adv=0.0),
    "gdl_l2": dict(p=2, alpha=2, lam_lp=1.0, lam_gdl=1.0, lam_adv=0.0),
    "adv": dict(p=2, alpha=1, lam_lp=1.0, lam_gdl=0.0, lam_adv=0.05),
    "adv_gdl": dict(p=2, alpha=1, lam_lp=1.0, lam_gdl=1.0, lam_adv=0.05),
}

LR_G_START, LR_G_END, LR_D = 0.04, 0.005, 0.02   # section 4.1
TARGETS = ("frame", "change")                     # what G's output is (make_config's target)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model asked for."""


# ----------------------------------------------------------------------------- configuration
def make_config(m=4, n=1, patch=32, width=1.0, single_scale=False, loss="adv_gdl", d_width=None, target="frame",
                **loss_overrides):
    """Everything that fixes the shapes and the objective, as plain JSON-able data.

    width multiplies every feature-map count (1.0 = the paper's); kernels never change.
    d_width: D's multiplier when it differs from G's (default: width).
    target: what G's output is, "frame" (the paper's: the predicted frame) or "change" (not the
    paper's: the change from the last input frame, added to it; see generator_forward).
    loss_overrides: any of p, alpha, lam_lp, lam_gdl, lam_adv, replacing the preset's value.
    """
    if loss not in LOSS_PRESETS:
        raise ValueError(f"unknown loss preset {loss!r}; choose one of {', '.join(LOSS_PRESETS)}")
    if patch % 8:
        raise ValueError(f"the patch side must divide by 8 (four scales, s/8 .. s), got {patch}")
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    losses = dict(LOSS_PRESETS[loss], **{k: v for k, v in loss_overrides.items() if v is not None})
    unknown = set(losses) - set(LOSS_PRESETS["l2"])
    if unknown:
        raise ValueError(f"unknown loss settings: {sorted(unknown)}")

    d_width = width if d_width is None else d_width

    def scaled(maps, w=width):
        return [max(1, int(round(c * w))) for c in maps]

    scales = [4] if single_scale else [1, 2, 3, 4]
    config = dict(
        m=m, n=n, patch=patch, width=width, d_width=d_width, scales=scales, target=target, loss=loss, **losses,
        g_maps=[scaled(G_TABLE[k - 1][0]) for k in scales], g_kernels=[G_TABLE[k - 1][1] for k in scales],
        d_maps=[scaled(D_TABLE[k - 1][0], d_width) for k in scales], d_kernels=[D_TABLE[k - 1][1] for k in scales],
        d_fc=[scaled(D_TABLE[k - 1][2], d_width) for k in scales], d_maxpool=[D_MAXPOOL[k - 1] for k in scales],
    )
    d_flat_sizes(config)  # refuse a patch too small for D's unpadded convolutions now
    return config


def scale_factor(k):
    """d_k averages, u_k undoes, blocks of 2^(4-k) pixels: scale 4 is full size."""
    return 2 ** (4 - k)


def d_flat_sizes(config):
    """Size of D_k's flattened conv output per scale (256, 512, 4096, 4608 at s=32, Table 1)."""
    sizes = []
    for j, k in enumerate(config["scales"]):
        side = config["patch"] // scale_factor(k)
        for ks in config["d_kernels"][j]:
            side -= ks - 1
        if config["d_maxpool"][j]:
            side //= 2
        if side < 1:
            raise ValueError(f"patch {config['patch']} is too small for D at scale {k}: its unpadded "
                             f"convolutions {config['d_kernels'][j]} leave nothing; use a patch of 32 or more (every "
                             f"model holds a D, whatever its loss, so that --init can carry it on)")
        sizes.append(config["d_maps"][j][-1] * side * side)
    return sizes


def parameter_shapes(config):
    """Checkpoint key -> shape, in SPEC's order: G's scales, then D's."""
    m3, n3 = 3 * config["m"], 3 * config["n"]
    shapes = {}
    for j, k in enumerate(config["scales"]):
        c_in = m3 if j == 0 else m3 + n3        # scale 1 (or a lone scale 4) has no coarse guess
        for i, (c_out, ks) in enumerate(zip(config["g_maps"][j] + [n3], config["g_kernels"][j]), 1):
            shapes[f"G/scale{k}/conv{i}/weight"] = (c_out, c_in, ks, ks)
            shapes[f"G/scale{k}/conv{i}/bias"] = (c_out,)
            c_in = c_out
    for j, (k, flat) in enumerate(zip(config["scales"], d_flat_sizes(config))):
        c_in = m3 + n3
        for i, (c_out, ks) in enumerate(zip(config["d_maps"][j], config["d_kernels"][j]), 1):
            shapes[f"D/scale{k}/conv{i}/weight"] = (c_out, c_in, ks, ks)
            shapes[f"D/scale{k}/conv{i}/bias"] = (c_out,)
            c_in = c_out
        d_in = flat
        for i, d_out in enumerate(config["d_fc"][j] + [1], 1):
            shapes[f"D/scale{k}/fc{i}/weight"] = (d_out, d_in)
            shapes[f"D/scale{k}/fc{i}/bias"] = (d_out,)
            d_in = d_out
    return shapes


def count_parameters(config, net):
    """Number of parameters of net 'G' or 'D'."""
    return sum(int(np.prod(s)) for key, s in parameter_shapes(config).items() if key.startswith(net + "/"))


def init_params(config, seed=0, dtype=np.float32, zero_last=False):
    """Torch 7's default initialisation, as in the authors' Torch code: every weight and bias
    uniform in +-1/sqrt(fan_in), fan_in = C_in k k (conv) or D_in (fc). With plain SGD at
    rho_G = 0.04 and no normalisation layers it keeps the pre-activations of the deep stacks
    small; He-style initialisation made the first steps diverge at that learning rate.

    zero_last: start the last convolution of every G'_k at zero (`--init-last zero`; not the
    authors'): each scale k > 1 then starts as eq. 1's identity on the upscaled coarse guess,
    tanh(u_k(Y_hat_(k-1))), and learns only a correction to it. Measured, it did not help with
    Adam (README "Training in minutes": gdl_l1 ends 0.19 dB less sharp), so no preset uses it."""
    rng = np.random.default_rng(seed)
    params, shapes = {}, parameter_shapes(config)
    for key, shape in shapes.items():
        w_shape = shape if key.endswith("weight") else shapes[key[:-4] + "weight"]
        bound = 1.0 / np.sqrt(np.prod(w_shape[1:]))
        params[key] = rng.uniform(-bound, bound, size=shape).astype(dtype)
    if zero_last:
        for j, k in enumerate(config["scales"]):
            last = len(config["g_kernels"][j])
            for part in ("weight", "bias"):
                params[f"G/scale{k}/conv{last}/{part}"][...] = 0
    return params


# ----------------------------------------------------------------------------- gradients nobody needs
class Skip(NamedTuple):
    """The gradients a backward pass leaves out, because nothing uses them (the one rule by which
    the backward passes here do less than the full chain rule):

    data:   how many of the input's leading channels are data. Every input of G and D begins with
            the history X_k (sections 2.1, 2.2), which is data; the whole input is data for G'_1
            (X_1 alone) and for D in its own step (G is fixed: Y_hat_k is data too).
    params: True when the parameters are held fixed: D's in G's step (Algorithm 1).

    The input gradient then covers the channels after the data only (None when all are data)."""
    data: int = 0
    params: bool = False


def _conv2d_backward(ops, dout, conv_cache, c_in, skip):
    """ops.conv2d_backward without what `skip` leaves out, for an input of c_in channels.
    -> d of the input channels skip.data: (None if all are data), dw, db (None if params fixed)."""
    wanted = skip.data < c_in
    return ops.conv2d_backward(dout, conv_cache, need_dx=wanted, need_dw=not skip.params,
                               dx_from=skip.data if wanted else 0)


# ----------------------------------------------------------------------------- shared layers
def _conv_stack_forward(ops, params, prefix, x, n_layers, mode, relu_last):
    """conv -> relu -> ... -> conv [-> relu]. Returns out and the per-layer caches.
    Each ReLU is applied by the call of the convolution before it (relu=True): one pass on the GPU."""
    caches = []
    for i in range(1, n_layers + 1):
        c_in = x.shape[1]
        x, conv_cache = ops.conv2d_forward(x, params[f"{prefix}/conv{i}/weight"], params[f"{prefix}/conv{i}/bias"],
                                           mode, relu=i < n_layers or relu_last)
        caches.append((conv_cache, c_in))
    return x, caches


def _conv_stack_backward(ops, prefix, dout, caches, grads, skip=Skip()):
    """Backward of _conv_stack_forward, last layer first. Adds the parameter gradients to grads
    (unless skip.params); returns the gradient of the stack's input channels after its skip.data
    data channels (None when all are data)."""
    for i in range(len(caches), 0, -1):
        conv_cache, c_in = caches[i - 1]                                 # the backward of conv [-> relu]
        layer_skip = skip if i == 1 else skip._replace(data=0)       # only the stack's input holds data
        dout, dw, db = _conv2d_backward(ops, dout, conv_cache, c_in, layer_skip)
        if not skip.params:
            grads[f"{prefix}/conv{i}/weight"], grads[f"{prefix}/conv{i}/bias"] = dw, db
    return dout


def downscale(ops, frames, k):
    """d_k: average pooling by 2^(4-k). frames: (N, C, s, s) -> (N, C, s/2^(4-k), s/2^(4-k))."""
    f = scale_factor(k)
    return frames if f == 1 else ops.avgpool_forward(frames, f)[0]


# ----------------------------------------------------------------------------- generator (2.1)
def predicts_change(config):
    """Whether G's output is the change from the last input frame (make_config's target)."""
    return config["target"] == "change"


def last_input_frame(ops, X_k, config):
    """The last of the m input frames in X_k (N, 3m, h, w), once per predicted frame: (N, 3n, h, w)."""
    last = X_k[:, 3 * (config["m"] - 1):]
    return last if config["n"] == 1 else ops.concat_forward([last] * config["n"])[0]


def generator_forward(ops, params, config, X):
    """X: (N, 3m, H, W), H and W divisible by 8 -> ({k: Y_hat_k (N, 3n, H/2^(4-k), W/2^(4-k))}, cache).

    Eq. 1: Y_hat_1 = tanh(G'_1(X_1)); Y_hat_k = tanh(u_k(Y_hat_(k-1)) + G'_k(concat(X_k, u_k(Y_hat_(k-1))))).
    The residual is added before the tanh, as in the authors' code.

    With config target "change" (not the paper's), eq. 1 gives the change from the last input
    frame instead, C_k, and the prediction is that frame plus it: Y_hat_k = last_k + C_k, last_k
    being the last of the m frames of X_k. G then starts from copying the last frame (C ~ 0) and
    learns the motion, where the paper's G must first learn to pass every pixel through its layers.
    train_min's small preset uses it on real video (--data; README "Real video"), where the 10-minute
    G does not learn to redraw the still detail that copying gets right.
    """
    if X.ndim != 4 or X.shape[1] != 3 * config["m"]:
        raise ValueError(f"G expects input (N, {3 * config['m']}, H, W) (m={config['m']} RGB frames), got {tuple(X.shape)}")
    if X.shape[2] % 8 or X.shape[3] % 8:
        raise ValueError(f"G's input sides must divide by 8 (four scales), got {X.shape[2]}x{X.shape[3]}")
    preds, caches, prev = {}, {}, None
    for j, k in enumerate(config["scales"]):
        X_k = downscale(ops, X, k)
        if prev is None:
            inp, up, concat_cache = X_k, None, [X_k.shape[1]]               # scale 1: X_1 alone
        else:
            up, _ = ops.upsample_forward(prev, 2)                        # u_k(Y_hat_(k-1))
            inp, concat_cache = ops.concat_forward([X_k, up])
        h, stack = _conv_stack_forward(ops, params, f"G/scale{k}", inp, len(config["g_kernels"][j]),
                                       "same", relu_last=False)
        if up is not None:
            h = h + up                                                   # eq. 1's residual
        prev, tanh_cache = ops.tanh_forward(h)
        preds[k] = prev + last_input_frame(ops, X_k, config) if predicts_change(config) else prev
        caches[k] = (stack, tanh_cache, concat_cache)
    return preds, caches


def generator_backward(ops, params, config, dpreds, caches):
    """dpreds: {k: dL/dY_hat_k} -> gradients of every G parameter (dict). Eq. 1 in reverse, finest
    scale first: each Y_hat_(k-1) gets the gradient of its own loss terms and, through u_k, of scale k.
    (With target "change", Y_hat_k = last_k + C_k and last_k is data: dL/dC_k = dL/dY_hat_k.)"""
    grads, d_coarse = {}, None
    scales = config["scales"]
    for j in range(len(scales) - 1, -1, -1):
        k = scales[j]
        stack, tanh_cache, concat_cache = caches[k]
        dpred = dpreds[k] if d_coarse is None else dpreds[k] + d_coarse
        dh = ops.tanh_backward(dpred, tanh_cache)                            # Y_hat_k = tanh(h)
        # h = G'_k(concat(X_k, up)) + up, up = u_k(Y_hat_(k-1)) (at scale 1: h = G'_1(X_1)). X_k is
        # data (Skip): the stack returns the gradient of the concatenation's parts after it, up's
        d_after_data = _conv_stack_backward(ops, f"G/scale{k}", dh, stack, grads, Skip(data=concat_cache[0]))
        if j > 0:
            (d_up_through_g,) = ops.concat_backward(d_after_data, concat_cache[1:])
            d_up = d_up_through_g + dh                                       # up reaches h twice
            d_coarse = ops.upsample_backward(d_up, 2)
    return grads


# ----------------------------------------------------------------------------- discriminator (2.2)
def discriminator_forward(ops, params, config, X_k, Y_k, k):
    """D_k on concat(X_k, Y_k) (history first, section 2.2). X_k: (N, 3m, s_k, s_k), Y_k: (N, 3n, s_k, s_k)
    -> logits (N, 1) (pre-sigmoid: the BCE is computed from them), cache."""
    j = config["scales"].index(k)
    x, concat_cache = ops.concat_forward([X_k, Y_k])
    h, stack = _conv_stack_forward(ops, params, f"D/scale{k}", x, len(config["d_kernels"][j]), "valid", relu_last=True)
    pool_cache = None
    if config["d_maxpool"][j]:
        h, pool_cache = ops.maxpool2_forward(h)
    h, flat_cache = ops.flatten_forward(h)
    fc_caches, n_fc = [], len(config["d_fc"][j]) + 1
    for i in range(1, n_fc + 1):       # fc -> relu, ..., fc (the ReLU applied by the fc's call)
        h, fc_cache = ops.fc_forward(h, params[f"D/scale{k}/fc{i}/weight"], params[f"D/scale{k}/fc{i}/bias"],
                                     relu=i < n_fc)
        fc_caches.append(fc_cache)
    return h, (stack, pool_cache, flat_cache, fc_caches, concat_cache)


def discriminator_backward(ops, config, dlogits, cache, k, need_candidate_grad, need_param_grads=True):
    """dlogits: (N, 1) -> (gradients of D_k's parameters ({} when need_param_grads is False),
    dL/dY_k (N, 3n, s_k, s_k) or None).

    The candidate's gradient is the path of the adversarial loss into G (G step only, where D is
    held fixed and its parameter gradients are not needed)."""
    stack, pool_cache, flat_cache, fc_caches, concat_cache = cache
    # D's input is concat(X_k, Y_k): X_k is data, and so is the candidate Y_k unless G wants its gradient
    skip = Skip(data=concat_cache[0] if need_candidate_grad else sum(concat_cache), params=not need_param_grads)
    grads, d = {}, dlogits
    for i in range(len(fc_caches), 0, -1):
        d, dw, db = ops.fc_backward(d, fc_caches[i - 1], need_dw=not skip.params)
        if not skip.params:
            grads[f"D/scale{k}/fc{i}/weight"], grads[f"D/scale{k}/fc{i}/bias"] = dw, db
    d = ops.flatten_backward(d, flat_cache)
    if pool_cache is not None:
        d = ops.maxpool2_backward(d, pool_cache)
    d = _conv_stack_backward(ops, f"D/scale{k}", d, stack, grads, skip)   # concat's parts after the data
    if d is None:                                                             # all of D's input was data
        return grads, None
    (d_candidate,) = ops.concat_backward(d, concat_cache[1:])
    return grads, d_candidate


# ----------------------------------------------------------------------------- losses
def d_loss(ops, params, config, X, Y, preds):
    """D's loss, section 2.2, G fixed: sum_k L_bce(D_k(X_k, Y_k), 1) + L_bce(D_k(X_k, Y_hat_k), 0).
    -> (loss, grads of D's parameters, accuracy on real samples, accuracy on generated ones), the
    accuracies being the fractions of D's decisions that are right (logit > 0 for real, < 0 for
    generated), averaged over the scales. The loss and accuracies stay backend scalars (on the
    GPU, device arrays: reading one is a transfer), as do g_loss's terms; read_log reads all of an
    iteration's values at once."""
    total, grads, acc_real, acc_fake = 0.0, {}, 0.0, 0.0
    for k in config["scales"]:
        X_k, Y_k = downscale(ops, X, k), downscale(ops, Y, k)
        real, real_cache = discriminator_forward(ops, params, config, X_k, Y_k, k)
        fake, fake_cache = discriminator_forward(ops, params, config, X_k, preds[k], k)
        loss_real, d_real = ops.bce_logits_loss(real, 1.0)               # L_bce(D_k(X_k, Y_k), 1)
        loss_fake, d_fake = ops.bce_logits_loss(fake, 0.0)               # L_bce(D_k(X_k, Y_hat_k), 0)
        total = total + loss_real + loss_fake
        g_real, _ = discriminator_backward(ops, config, d_real, real_cache, k, need_candidate_grad=False)
        g_fake, _ = discriminator_backward(ops, config, d_fake, fake_cache, k, need_candidate_grad=False)
        grads.update({key: g_real[key] + g_fake[key] for key in g_real})
        acc_real = acc_real + (real > 0).mean()
        acc_fake = acc_fake + (fake < 0).mean()
    scales = len(config["scales"])
    return total, grads, acc_real / scales, acc_fake / scales


# Speed, not the paper: the two terms of d_loss in one pass of D_k over a batch of 2N (real
# samples first, then generated ones), which saves a backend's per-call costs (Python, kernel
# launches, small GEMMs). A backend asks for it with `batch_d_terms = True` (fast_cpu, cupy_ops);
# the reference runs d_loss as written. tests/test_wiring.py checks the two agree.
def d_loss_batched(ops, params, config, X, Y, preds):
    """d_loss computed on one batch of 2N per scale; the BCE mean over 2N is doubled so that it
    equals the sum of the two terms' means (and so is the gradient). Same return values as d_loss."""
    total, grads, logits_k = 0.0, {}, []
    n = X.shape[0]
    target = ops.asarray(np.repeat([1.0, 0.0], n)[:, None], dtype=preds[config["scales"][-1]].dtype)
    for k in config["scales"]:
        X_k, Y_k = downscale(ops, X, k), downscale(ops, Y, k)
        history = ops.xp.concatenate([X_k, X_k], axis=0)
        candidates = ops.xp.concatenate([Y_k, preds[k]], axis=0)
        logits, cache = discriminator_forward(ops, params, config, history, candidates, k)
        loss, dlogits = ops.bce_logits_loss(logits, target)
        g, _ = discriminator_backward(ops, config, 2 * dlogits, cache, k, need_candidate_grad=False)
        grads.update(g)
        total = total + loss
        logits_k.append(logits)
    # the accuracies of all the scales at once (the mean over scales of each scale's mean over N)
    logits = ops.xp.concatenate(logits_k, axis=1)                        # (2N, scales)
    return 2 * total, grads, (logits[:n] > 0).mean(), (logits[n:] < 0).mean()


def g_loss(ops, params, config, X, Y, preds, use_adv=True):
    """G's loss: lam_adv sum_k L_bce(D_k(X_k, Y_hat_k), 1) + lam_lp sum_k L_p + lam_gdl sum_k L_gdl
    (sections 2.2 and 3, Algorithm 1), D held fixed. use_adv=False drops the adversarial term
    (G's warm-up). -> (terms dict, {k: dL/dY_hat_k})."""
    lam_adv = config["lam_adv"] if use_adv else 0.0
    terms = {"lp": 0.0, "gdl": 0.0, "adv": 0.0}
    dpreds = {}
    for k in config["scales"]:
        Y_k = downscale(ops, Y, k)
        loss, dpred = ops.lp_loss(preds[k], Y_k, config["p"])
        terms["lp"] = terms["lp"] + loss
        dpred = config["lam_lp"] * dpred
        if config["lam_gdl"]:
            loss, d = ops.gdl_loss(preds[k], Y_k, config["alpha"])
            terms["gdl"] = terms["gdl"] + loss
            dpred = dpred + config["lam_gdl"] * d
        if lam_adv:
            X_k = downscale(ops, X, k)
            logits, cache = discriminator_forward(ops, params, config, X_k, preds[k], k)
            loss, dlogits = ops.bce_logits_loss(logits, 1.0)
            terms["adv"] = terms["adv"] + loss
            _, d = discriminator_backward(ops, config, dlogits, cache, k, need_candidate_grad=True,
                                          need_param_grads=False)
            dpred = dpred + lam_adv * d
        dpreds[k] = dpred
    terms["total"] = config["lam_lp"] * terms["lp"] + config["lam_gdl"] * terms["gdl"] + lam_adv * terms["adv"]
    return terms, dpreds


# ----------------------------------------------------------------------------- Algorithm 1
def lr_g_at(step, total_steps, start=LR_G_START, end=LR_G_END):
    """rho_G lowered from 0.04 to 0.005 over the run (section 4.1), geometrically: the same
    factor every step, so each halving of rho_G takes the same number of steps."""
    if total_steps <= 1:
        return start
    return start * (end / start) ** (min(step, total_steps - 1) / (total_steps - 1))


def sgd_update(params, grads, lr, ops):
    """Plain SGD (Algorithm 1), in place on every parameter in grads: W <- W - lr dL/dW
    (ops.sgd_update_many does ops.sgd_update on each tensor; on the GPU, all in one kernel launch)."""
    keys = list(grads)
    ops.sgd_update_many([params[key] for key in keys], [grads[key] for key in keys], lr)


# Adam (Kingma & Ba 2015) is not the paper's optimiser; the common reimplementations use it and
# our experiments (README "Training in minutes") show it learns the fine scales in minutes where
# SGD at the paper's rates needs hours. Its moments are kept per network, G and D.
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


def adam_init(params, net, ema=0.0):
    """Adam's state for the parameters of net ('G' or 'D'): step count and both moments at 0.
    ema: the largest beta of the temporal average of the weights (below; 0: none), kept as "ema" from 0
    as well, with its total weight "ema_weight" from 0."""
    keys = [key for key in params if key.startswith(net + "/")]
    state = {"t": 0, "m": {key: params[key] * 0 for key in keys}, "v": {key: params[key] * 0 for key in keys}}
    if ema:
        state.update(ema_beta=float(ema), ema_weight=0.0, ema={key: params[key] * 0 for key in keys})
    return state


def adam_update(params, grads, lr, state, ops=None):
    """One Adam step, in place, on every parameter in grads (ops.adam_update does each tensor:
    m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2; W <- W - lr m_hat / (sqrt(v_hat) + eps),
    m_hat, v_hat the bias-corrected moments of step t; ops.adam_update_many, on the GPU in one launch)."""
    state["t"] += 1
    keys = list(grads)
    ops.adam_update_many([params[key] for key in keys], [grads[key] for key in keys],
                         [state["m"][key] for key in keys], [state["v"][key] for key in keys],
                         lr, *ADAM_BETAS, ADAM_EPS, state["t"])
    if "ema" in state:
        beta = ema_beta_at(state["ema_beta"], state["t"])
        ops.ema_update_many([state["ema"][key] for key in keys], [params[key] for key in keys], beta)
        state["ema_weight"] = beta * state["ema_weight"] + (1 - beta)


# Temporal averaging (Kingma & Ba 2015, section 7.2; not the paper's): the state of Adam can also keep
# an exponential moving average of the weights, avg <- beta_t avg + (1 - beta_t) W after step t, from
# avg = 0, read divided by its total weight (the bias correction: 1 - beta^t for a constant beta).
# beta_t = min(beta, (1 + t) / (10 + t)) averages about the last tenth of the steps taken until that
# reaches 1 / (1 - beta) steps (t = 4,490 for 0.998), so that early in a run the average does not lag
# far behind a fast-improving G. The last weights of a short run carry the noise of its last steps (on
# real video the adversarial steps' especially); their average does not. Training goes on from the
# weights; the averaged G is the one evaluated, drawn and used by predict and metrics.py evaluate.
# README "Training in minutes" has the experiments that chose it.
def ema_beta_at(beta, t):
    """The average's beta after step t = 1, 2, ... of a run whose largest beta is `beta`."""
    return min(beta, (1 + t) / (10 + t))


def averaged_weights(params, opt):
    """params with each network's weights replaced by their temporal average where opt (Adam's state,
    {net: state}, or None) keeps one and has taken a step; otherwise params itself."""
    averaged = dict(params)
    for state in (opt or {}).values():
        if "ema" in state and state["t"] > 0:
            correction = 1.0 / state["ema_weight"]
            averaged.update({key: avg * correction for key, avg in state["ema"].items()})
    return averaged


def checkpoint_weights(params, state):
    """The model a checkpoint holds (params and state of load_checkpoint): its weights, with G's
    average in place of G's last weights when its run kept one (what the run evaluated). A
    CheckpointError when they hold NaN or inf (a run that diverged predicts nothing but NaN)."""
    weights = averaged_weights(params, (state or {}).get("optimizer"))
    bad = [key for key, w in weights.items() if not np.isfinite(w).all()]
    if bad:
        raise CheckpointError(f"the checkpoint's weights hold NaN or inf ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}): its run diverged; train again, e.g. with a lower --lr-g")
    return weights


def saved_ema_beta(state):
    """The beta of G's average in a checkpoint's state (load_checkpoint), or None when its run kept none."""
    return ((state or {}).get("optimizer") or {}).get("G", {}).get("ema_beta")


def train_step(ops, params, config, d_batch, g_batch, lr_g, lr_d=LR_D, opt=None, adversarial=True, train_d=None,
               average=None):
    """One iteration of Algorithm 1. d_batch, g_batch: (X, Y), two different minibatches (d_batch
    is not used, and may be None, when D does not train).

    Update the discriminator (only when the adversarial loss is used): G fixed, one step on
    D's loss. Then update the generator: D fixed, one step on G's combined loss.
    opt: None for plain SGD (the paper's), or {"G": adam state, "D": adam state} for Adam.
    adversarial=False drops the adversarial term from G's loss: the warm-up of G on its
    l_p + GDL terms. train_d: whether D takes its step (default: adversarial); D may learn
    during G's warm-up so that it can already tell G's predictions from the truth when its term
    joins G's loss. Returns the loss terms and D's accuracies, for logging (backend scalars: read_log
    reads them). D's loss is d_loss, or d_loss_batched (the same value in one pass of D over 2N samples) when the backend asks for it.
    average: None, or in a worker of data_parallel.ProcessGroup, a function that turns the gradients
    of this process's share of the minibatch into those of the whole minibatch before each update.
    """
    log = {}
    use_adv = bool(config["lam_adv"]) and adversarial
    train_d = adversarial if train_d is None else train_d
    if config["lam_adv"] and train_d:
        X, Y = d_batch
        preds, _ = generator_forward(ops, params, config, X)
        loss_fn = d_loss_batched if getattr(ops, "batch_d_terms", False) else d_loss
        log["d_loss"], grads, log["d_acc_real"], log["d_acc_fake"] = loss_fn(ops, params, config, X, Y, preds)
        _update(ops, params, average(grads) if average else grads, lr_d, opt, "D")
    X, Y = g_batch
    preds, caches = generator_forward(ops, params, config, X)
    terms, dpreds = g_loss(ops, params, config, X, Y, preds, use_adv=use_adv)
    grads = generator_backward(ops, params, config, dpreds, caches)
    _update(ops, params, average(grads) if average else grads, lr_g, opt, "G")
    log.update({"g_" + name: value for name, value in terms.items()})
    return log


def read_log(ops, log):
    """train_step's log as Python floats. Its values are backend scalars (device arrays on the GPU),
    read here in one device-to-host transfer for the whole iteration instead of one per value."""
    on_device = [key for key, value in log.items() if not isinstance(value, (int, float))]
    host = dict(log)
    if on_device:
        values = ops.to_host(ops.xp.stack([log[key] for key in on_device]))
        host.update(zip(on_device, values.tolist()))
    return {key: float(value) for key, value in host.items()}


def _update(ops, params, grads, lr, opt, net):
    if opt is None:
        sgd_update(params, grads, lr, ops)
    else:
        adam_update(params, grads, lr, opt[net], ops)


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, params, config, state=None, optimizer=None):
    """One .npz: every parameter as float32 under its key, "config" as JSON text, the training
    state for resuming under "state" (JSON text) and, for Adam, its moments under
    "optimizer/{G,D}/{m,v}/<parameter key>" with the step count "optimizer/{G,D}/t" (and a temporal
    average of the weights under "optimizer/G/ema/<parameter key>", its beta "optimizer/G/ema_beta" and
    total weight "optimizer/G/ema_weight"). Written to a
    temporary file in the same folder, then renamed over `path`: a crash never leaves a
    half-written checkpoint."""
    arrays = {key: np.asarray(value, dtype=np.float32) for key, value in params.items()}
    arrays["config"] = np.array(json.dumps(config, sort_keys=True))
    if state is not None:
        arrays["state"] = np.array(json.dumps(state, sort_keys=True))
    for net, st in (optimizer or {}).items():
        arrays[f"optimizer/{net}/t"] = np.array(st["t"], dtype=np.int64)
        if "ema" in st:
            arrays[f"optimizer/{net}/ema_beta"] = np.array(st["ema_beta"], dtype=np.float64)
            arrays[f"optimizer/{net}/ema_weight"] = np.array(st["ema_weight"], dtype=np.float64)
        for moment in OPTIMIZER_ARRAYS:
            for key, value in st.get(moment, {}).items():
                arrays[f"optimizer/{net}/{moment}/{key}"] = np.asarray(value, dtype=np.float32)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


OPTIMIZER_ARRAYS = ("m", "v", "ema")   # Adam's moments and, when kept, the temporal average of the weights


def optimizer_arrays(opt, convert):
    """Adam's state {net: {"t", "m", "v"[, "ema_beta", "ema_weight", "ema"]}} with every array passed
    through convert (ops.to_host, ops.asarray, np.copy); None stays None."""
    if opt is None:
        return None
    return {net: {name: ({key: convert(a) for key, a in value.items()} if name in OPTIMIZER_ARRAYS else value)
                  for name, value in st.items()} for net, st in opt.items()}


def _optimizer_from_arrays(arrays):
    """Pop the "optimizer/..." arrays of save_checkpoint -> {net: {"t", "m", "v"[, "ema_beta", "ema_weight",
    "ema"]}} (or None)."""
    optimizer = {}
    for name in [key for key in arrays if key.startswith("optimizer/")]:
        _, net, rest = name.split("/", 2)
        st = optimizer.setdefault(net, {"t": 0, "m": {}, "v": {}})
        value = arrays.pop(name)
        if rest == "t":
            st["t"] = int(value)
        elif rest in ("ema_beta", "ema_weight"):
            st[rest] = float(value)
        else:
            moment, key = rest.split("/", 1)
            st.setdefault(moment, {})[key] = value.astype(np.float32)
    for st in optimizer.values():
        if "ema_beta" in st and "ema_weight" not in st:     # saved before stop 28: a constant beta
            st["ema_weight"] = 1.0 - st["ema_beta"] ** st["t"]
    return optimizer or None


CHECKPOINT_NAME = "checkpoint.npz"   # the checkpoint file of a run folder (train_min.py --out)
NOT_A_CHECKPOINT = "give a run folder of train_min.py or the checkpoint.npz in it"


def resolve_checkpoint(path):
    """The one path rule of every command: a run folder or its checkpoint file -> the file's path.

    A folder stands for its checkpoint.npz. CheckpointError ("checkpoint not found: ...") when
    neither exists."""
    path = os.fspath(path)
    if os.path.isdir(path):
        file = os.path.join(path, CHECKPOINT_NAME)
        if not os.path.isfile(file):
            raise CheckpointError(f"checkpoint not found: the folder {path} holds no {CHECKPOINT_NAME} "
                                  f"({NOT_A_CHECKPOINT})")
        return file
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path} ({NOT_A_CHECKPOINT})")
    return path


def run_folder(path):
    """The run folder of a checkpoint path (a run folder or its checkpoint file); see resolve_checkpoint."""
    return os.path.dirname(resolve_checkpoint(path)) or "."


def peek_checkpoint(path):
    """(config, state or None) of a checkpoint without loading its arrays; CheckpointError if unreadable."""
    path = resolve_checkpoint(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            config = _saved_config(z["config"])
            state = json.loads(str(z["state"])) if "state" in z.files else None
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path} ({NOT_A_CHECKPOINT})") from e
    return config, state


def _saved_config(text):
    """A checkpoint's JSON config, with the keys added since filled as older runs trained: target
    "frame" (saved before G could predict the change)."""
    config = json.loads(str(text))
    config.setdefault("target", "frame")
    return config


def describe_checkpoint(config, state):
    """One line on what a checkpoint holds: its step, loss, data, patch, m and n (and the target if not the frame)."""
    args = (state or {}).get("args", {})
    step = "no training state"
    if state:
        step = f"step {state['step']}" + (f" of {args['steps']}" if args.get("steps") else "")
    data = f", trained on {args.get('data') or 'the synthetic videos'}" if state else ""
    ema = saved_ema_beta(state)
    return (f"{step}, loss {config.get('loss', '?')}{data}, patches of {config.get('patch')}x{config.get('patch')}, "
            f"m {config.get('m')} -> n {config.get('n')}" + (", G predicts the change" if predicts_change(config) else "")
            + (f", G's weights averaged (ema {ema:g})" if ema else ""))


def trained_on_synthetic_videos(state):
    """Whether a checkpoint's run trained on data.SyntheticVideos (no --data); False without training state."""
    return bool(state) and not state.get("args", {}).get("data")


def load_checkpoint(path, expect_config=None):
    """-> (params as float32 NumPy arrays, config, state or None). When the checkpoint holds
    Adam's moments, state["optimizer"] is {net: {"t", "m", "v"}} (see save_checkpoint), with G's
    temporal average when the run kept one: averaged_weights(params, state["optimizer"]) is its model.

    path: a checkpoint file or a run folder (its checkpoint.npz, see resolve_checkpoint).
    Refuses, with a CheckpointError saying what differs, a file that is missing or unreadable,
    whose parameters do not have the shapes its config implies, or whose config differs from
    expect_config in any architecture field (m, n, widths, kernels, patch size, scales)."""
    path = resolve_checkpoint(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"cannot read checkpoint {path}: not a .npz archive ({NOT_A_CHECKPOINT})")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "config" not in z.files:
                raise CheckpointError(f"cannot read checkpoint {path}: a .npz without a framepred config "
                                      f"({NOT_A_CHECKPOINT})")
            arrays = {key: z[key] for key in z.files}
        config = _saved_config(arrays.pop("config"))
        state = json.loads(str(arrays.pop("state"))) if "state" in arrays else None
        optimizer = _optimizer_from_arrays(arrays)
    except CheckpointError:
        raise
    except Exception as e:
        why = "it holds Python objects, not arrays" if "allow_pickle" in str(e) else f"{type(e).__name__}: {e}"
        raise CheckpointError(f"cannot read checkpoint {path}: {why} ({NOT_A_CHECKPOINT})") from e
    if optimizer is not None and state is not None:
        state["optimizer"] = optimizer
    if expect_config is not None:
        diffs = [f"{key}: checkpoint {config.get(key)!r}, expected {expect_config.get(key)!r}"
                 for key in ARCHITECTURE_KEYS if config.get(key) != expect_config.get(key)]
        if diffs:
            raise CheckpointError(f"checkpoint {path} does not match this model: " + "; ".join(diffs))
    try:
        shapes = parameter_shapes(config)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise CheckpointError(f"checkpoint {path} has a broken config ({type(e).__name__}: {e}; "
                              f"{NOT_A_CHECKPOINT})") from e
    missing = sorted(set(shapes) - set(arrays))
    extra = sorted(set(arrays) - set(shapes))
    wrong = [f"{key} is {arrays[key].shape}, expected {shapes[key]}" for key in shapes
             if key in arrays and arrays[key].shape != tuple(shapes[key])]
    if missing or extra or wrong:
        raise CheckpointError(f"checkpoint {path} has wrong parameters: " + "; ".join(
            ([f"missing {', '.join(missing[:5])}"] if missing else []) +
            ([f"unexpected {', '.join(extra[:5])}"] if extra else []) + wrong[:5]))
    return {key: arrays[key].astype(np.float32) for key in shapes}, config, state


ARCHITECTURE_KEYS = ["m", "n", "patch", "scales", "target", "g_maps", "g_kernels", "d_maps", "d_kernels", "d_fc",
                     "d_maxpool"]


# ----------------------------------------------------------------------------- full frames in tiles
# G is fully convolutional, so it runs on frames of any size whose sides divide by 8, but the
# memory of one pass grows with the frame: at the paper's widths the unfolded columns of one
# scale-4 convolution are 51 kB per pixel (107 GB at 1920x1088). Prediction and evaluation
# therefore run G on overlapping tiles and keep only each tile's centre, which is exactly what G
# computes on the whole frame: the margin around a centre covers G's receptive field
# (receptive_radius), tile origins lie on the 8-pixel grid of the pooling of eq. 1, and a tile
# that touches the frame's border ends there, so that its "same" convolutions pad where the
# frame's do. Inside a tile each convolution runs on bands of rows (conv_same_in_bands), so that
# its unfolded columns stay within a fixed share of the budget too.

TILE_GRID = 8                         # d_1 averages 8x8 blocks: tiles start on multiples of 8
DEFAULT_TILE_MEMORY = 2 ** 30         # bytes for one tiled pass of G: 1 GiB


def receptive_radius(config):
    """How far, in full-size pixels, G's finest prediction at a pixel reaches into its input,
    for a tile whose origin lies on the 8-pixel grid: sum_k 2^(4-k) sum_i (kernel_ki - 1) / 2.

    Why: the "same" convolutions of a tile pad its borders with zeros where the frame has
    pixels, so values near a tile border are wrong. Each convolution of G'_k widens the wrong band
    by its kernel's half-width, in pixels of scale k, i.e. 2^(4-k) full-size pixels; the averaging
    d_k and the nearest upscaling u_k of eq. 1 neither widen nor narrow it when the tile's origin
    is a multiple of 8 (a block of scale k-1 is exactly two pixels of scale k). Table 1 gives
    8 (1+1+1+1) + 4 (2+1+1+2) + 2 (2+1+1+1+1+2) + (3+2+2+2+2+3) = 32 + 24 + 16 + 14 = 86 px.
    tests/test_tiles.py checks it against how far NaN inputs spread through G."""
    return sum(scale_factor(k) * sum(ks // 2 for ks in kernels)
               for k, kernels in zip(config["scales"], config["g_kernels"]))


def tile_margin(config):
    """receptive_radius rounded up to the 8-pixel grid: the overlap each tile needs on every side
    that is not the frame's border (88 px for Table 1, 16 for scale 4 alone)."""
    return -(-receptive_radius(config) // TILE_GRID) * TILE_GRID


def tile_values_per_pixel(config):
    """Values held per full-size pixel of a tile and per clip while G runs on it (the model behind
    the tile size): the tile's input (3m) and G's output and coarse guess (2 x 3n), plus the
    largest input + output pair of one convolution, whose pixels at scale k count 1 / 4^(4-k)."""
    m3, n3 = 3 * config["m"], 3 * config["n"]
    largest = 0
    for j, k in enumerate(config["scales"]):
        c_in = m3 if j == 0 else m3 + n3
        for c_out in config["g_maps"][j] + [n3]:
            largest = max(largest, (c_in + c_out) / scale_factor(k) ** 2)
            c_in = c_out
    return m3 + 2 * n3 + largest


def _axis_splits(length, parts, margin, grid=TILE_GRID):
    """Split [0, length) (a multiple of grid) into `parts` centres on the grid, as even as the grid
    allows -> [(start, stop, centre start, centre stop)]: each centre grown by margin on both sides,
    cut at 0 and length."""
    units = length // grid
    cuts = [grid * (units * i // parts) for i in range(parts + 1)]
    return [(max(0, c0 - margin), min(length, c1 + margin), c0, c1) for c0, c1 in zip(cuts, cuts[1:])]


def tile_grid(height, width, rows, cols, margin, grid=TILE_GRID):
    """The tiles of a rows x cols grid over a frame of height x width (multiples of grid): a list of
    (y0, y1, x0, x1) input windows and (cy0, cy1, cx0, cx1) centres. The centres split the frame
    as evenly as the grid allows and cover every pixel exactly once; each window is its centre
    grown by margin on every side, cut at the frame's border."""
    return [((y0, y1, x0, x1), (cy0, cy1, cx0, cx1))
            for y0, y1, cy0, cy1 in _axis_splits(height, rows, margin, grid)
            for x0, x1, cx0, cx1 in _axis_splits(width, cols, margin, grid)]


def tile_plan(height, width, max_pixels, margin, grid=TILE_GRID):
    """The tile grid (tile_grid) for a frame of height x width (multiples of grid) whose largest
    window has at most max_pixels pixels and whose windows add up to the fewest pixels (the work),
    fewer tiles on a tie; when even 8 x 8 centres are too big for max_pixels, the grid with the
    smallest windows. -> tile_grid's list."""
    if height % grid or width % grid or height < grid or width < grid:
        raise ValueError(f"tile_plan: the frame {height}x{width} must have sides that are positive multiples of {grid}")
    axes = []
    for length in (height, width):
        sides = [np.array([b - a for a, b, _, _ in _axis_splits(length, n, margin, grid)])
                 for n in range(1, length // grid + 1)]
        axes.append((np.array([s.max() for s in sides]), np.array([s.sum() for s in sides])))
    (big_y, sum_y), (big_x, sum_x) = axes
    biggest = np.outer(big_y, big_x)                   # [rows - 1, cols - 1]: the largest window's pixels
    work = np.outer(sum_y, sum_x)                      # all windows' pixels
    count = np.outer(np.arange(1, len(big_y) + 1), np.arange(1, len(big_x) + 1))
    fits = biggest <= max_pixels
    if fits.any():
        iy, ix = np.argwhere(fits)[np.lexsort((count[fits], work[fits]))[0]]
    else:
        iy, ix = np.unravel_index(np.argmin(biggest), biggest.shape)
    return tile_grid(height, width, int(iy) + 1, int(ix) + 1, margin, grid)


def conv_same_in_bands(ops, x, w, b, relu, band_bytes=None):
    """The 'same' convolution of x (N, C_in, H, W) [followed by a ReLU], computed on bands of rows:
    each band with its k // 2 rows above and below (zeros past the image, as 'same' pads) is
    convolved 'valid' and written into the output rows it determines, so the unfolded columns of
    one band (C_in k^2 per pixel) stay within band_bytes (None: one band, the whole image)."""
    n, c_in, h, wd = x.shape
    c_out, _, k, _ = w.shape
    p = k // 2
    per_row = x.dtype.itemsize * n * (wd + 2 * p) * (c_in * k * k + c_in + 2 * c_out)
    rows = h if band_bytes is None else max(1, int(band_bytes // per_row))
    if rows >= h:
        return ops.conv2d_forward(x, w, b, "same", relu=relu)[0]
    out = ops.xp.empty((n, c_out, h, wd), dtype=x.dtype)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        band = ops.xp.zeros((n, c_in, r1 - r0 + 2 * p, wd + 2 * p), dtype=x.dtype)
        s0, s1 = max(0, r0 - p), min(h, r1 + p)
        band[:, :, s0 - r0 + p:s1 - r0 + p, p:p + wd] = x[:, :, s0:s1]
        out[:, :, r0:r1] = ops.conv2d_forward(band, w, b, "valid", relu=relu)[0]
    return out


def generator_predict(ops, params, config, X, band_bytes=None):
    """G's finest prediction for X (N, 3m, H, W), sides divisible by 8 -> Y_hat (N, 3n, H, W):
    generator_forward's preds[top] computed for inference only: no caches for a backward pass,
    each activation freed as soon as the next exists, each convolution run in bands of rows
    (conv_same_in_bands) whose columns fit band_bytes."""
    if X.ndim != 4 or X.shape[1] != 3 * config["m"] or X.shape[2] % 8 or X.shape[3] % 8:
        raise ValueError(f"G expects input (N, {3 * config['m']}, H, W), H and W divisible by 8, got {tuple(X.shape)}")
    prev = None
    for j, k in enumerate(config["scales"]):
        up = None if prev is None else ops.upsample_forward(prev, 2)[0]        # u_k(Y_hat_(k-1))
        X_k = downscale(ops, X, k)
        h = X_k if up is None else ops.concat_forward([X_k, up])[0]
        n_layers = len(config["g_kernels"][j])
        for i in range(1, n_layers + 1):
            h = conv_same_in_bands(ops, h, params[f"G/scale{k}/conv{i}/weight"], params[f"G/scale{k}/conv{i}/bias"],
                                   relu=i < n_layers, band_bytes=band_bytes)
        prev = ops.tanh_forward(h if up is None else h + up)[0]                 # eq. 1
    return prev + last_input_frame(ops, X_k, config) if predicts_change(config) else prev


def tile_budget(config, batch, itemsize, memory=DEFAULT_TILE_MEMORY):
    """Split memory (bytes) for one tiled pass of G over `batch` clips of `itemsize`-byte values
    -> (max_pixels, band_bytes): a quarter for the bands of columns of each convolution
    (conv_same_in_bands), the rest for a tile's activations, tile_values_per_pixel per pixel and clip."""
    band_bytes = int(memory) // 4
    return (int(memory) - band_bytes) / (itemsize * max(int(batch), 1) * tile_values_per_pixel(config)), band_bytes


def predict_tiled(ops, params, config, X, memory=DEFAULT_TILE_MEMORY, tiles=None):
    """G's finest prediction for whole frames, in bounded memory: X host (N, 3m, H, W), H and W
    divisible by 8 -> host (N, 3n, H, W) of X's dtype, equal (to float rounding) to
    generator_forward(ops, params, config, X)[0][top].

    memory (bytes, see tile_budget) bounds one pass of G; the tiles are tile_plan's cheapest grid
    whose windows fit, unless `tiles` gives them (tile_grid's form). The N clips share each tile,
    so the memory does not grow with N or with the frame. params: host or device arrays."""
    n, _, height, width = X.shape
    max_pixels, band_bytes = tile_budget(config, n, np.dtype(X.dtype).itemsize, memory)
    if tiles is None:
        tiles = tile_plan(height, width, max_pixels, tile_margin(config))
    params = {key: ops.asarray(value) for key, value in params.items() if key.startswith("G/")}
    out = np.empty((n, 3 * config["n"], height, width), dtype=X.dtype)
    for (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) in tiles:
        tile = ops.asarray(np.ascontiguousarray(X[:, :, y0:y1, x0:x1]), dtype=X.dtype)
        Y = generator_predict(ops, params, config, tile, band_bytes)
        out[:, :, cy0:cy1, cx0:cx1] = ops.to_host(Y[:, :, cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0])
    return out


# ----------------------------------------------------------------------------- predict (command line)
# `python framepred.py predict --checkpoint C --input PATH --frames K --out DIR [--device D]`:
# the next K frames of a video, predicted recursively (paper section 4: "we apply the model
# recursively by using the newly generated frame as an input") on whole frames, G being fully
# convolutional. Sides that do not divide by 8 (G's four scales) are padded, not cropped, so that
# every pixel of the input is predicted: edge replication up to the next multiple of 8, split
# between the two sides (the extra pixel at the bottom / right), and every prediction cropped
# back to the input's size before it is saved or fed back in.

class PredictError(Exception):
    """A problem with predict's arguments or input (not a checkpoint or data error); a one-line message."""


def pad_to_multiple(x, multiple=8):
    """Edge-replicate the last two axes of x up to multiples of ``multiple``.
    -> (padded, (top, bottom, left, right)); the pads are 0 when the sides already divide."""
    h, w = x.shape[-2:]
    dh, dw = -h % multiple, -w % multiple
    pads = (dh // 2, dh - dh // 2, dw // 2, dw - dw // 2)
    if not (dh or dw):
        return x, pads
    width = [(0, 0)] * (x.ndim - 2) + [(pads[0], pads[1]), (pads[2], pads[3])]
    return np.pad(x, width, mode="edge"), pads


def predict_frames(ops, params, config, history, count, memory=DEFAULT_TILE_MEMORY, progress=None):
    """The next ``count`` frames after history (T >= m, 3, H, W) on [-1, 1], any H and W:
    float32 (count, 3, H, W). Each pass of G sees the newest m frames (padded, see
    pad_to_multiple) and gives n frames (cropped back), which become the newest frames. G runs in
    tiles whose memory is bounded by ``memory`` bytes (predict_tiled), whatever the frame size.
    progress(done, count), when given, is called after each pass."""
    m, n = config["m"], config["n"]
    if len(history) < m:
        raise PredictError(f"{len(history)} frames given, the model needs m = {m}")
    h, w = history.shape[-2:]
    device_params = {key: ops.asarray(value) for key, value in params.items() if key.startswith("G/")}
    frames, out = [np.asarray(f, dtype=np.float32) for f in history[-m:]], []
    while len(out) < count:
        X, (pt, _, pl, _) = pad_to_multiple(np.concatenate(frames[-m:], axis=0)[None])  # (1, 3m, H', W')
        Y = predict_tiled(ops, device_params, config, X.astype(np.float32), memory)[0, :, pt:pt + h, pl:pl + w]
        new = list(Y.reshape(n, 3, h, w))
        out += new
        frames += new
        if progress:
            progress(min(len(out), count), count)
    return np.stack(out[:count])


def predict(args):
    """Handler of ``framepred.py predict``; returns the exit status: 0, or 1 with a one-line
    "error: ..." on stderr for a bad checkpoint, input or output folder (never a traceback)."""
    import warnings
    from PIL import Image
    from data import DataError, DataWarning, read_frames, to_uint8, to_unit
    from kernels import BackendError, load_backend
    try:
        ckpt = resolve_checkpoint(args.checkpoint)
        params, config, state = load_checkpoint(ckpt)
        params = checkpoint_weights(params, state)
        print(f"checkpoint {ckpt}: {describe_checkpoint(config, state)}")
        if trained_on_synthetic_videos(state):
            print("note: this model was trained on the synthetic videos alone; on natural video such a model "
                  "predicts far worse than copying the last frame (README \"Real video\"): for videos like yours, "
                  "train on some with train_min.py --data")
        check_output_folder(args.out, PredictError, "the predicted frames")
        m = config["m"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            frames = read_frames(args.input, last=m)    # uint8 (T <= m, H, W, 3): only the last m are kept
        for w_ in caught:
            print(f"warning: {w_.message}", file=sys.stderr)
        T, H, W = frames.shape[:3]
        if T < m:
            raise PredictError(f"{args.input} has {T} frame{'s' * (T != 1)}; this model "
                               f"({args.checkpoint}) needs at least m = {m} input frames")
        print(f"input {args.input}: frames of {W}x{H} (WxH); predicting {args.frames} frame"
              f"{'s' * (args.frames != 1)} from the last {m}, {config['n']} per pass of G, recursively")
        _, (pt, pb, pl, pr) = pad_to_multiple(np.zeros((H, W)))
        if pt + pb + pl + pr:
            print(f"frame sides do not divide by 8: padded by edge replication to {W + pl + pr}x{H + pt + pb} "
                  f"(top +{pt}, bottom +{pb}, left +{pl}, right +{pr} px); predictions cropped back to {W}x{H}")
        ops = load_backend(args.device)
        history = to_unit(frames[-m:]).transpose(0, 3, 1, 2)
        memory = int(args.memory * 2 ** 20)
        max_pixels = tile_budget(config, 1, 4, memory)[0]
        tiles = tile_plan(H + pt + pb, W + pl + pr, max_pixels, tile_margin(config))
        biggest = max((y1 - y0) * (x1 - x0) for (y0, y1, x0, x1), _ in tiles)
        if biggest > max_pixels:   # even tile_plan's smallest windows do not fit
            need = biggest / max_pixels * args.memory
            raise PredictError(f"--memory {args.memory:g} MiB is too little for this model: its smallest tiles "
                               f"(8x8 px and G's receptive field, {tile_margin(config)} px, on each side) need "
                               f"{need:.0f} MiB; give at least that (default {DEFAULT_TILE_MEMORY / 2 ** 20:g})")
        print(f"G runs on {len(tiles)} tile{'s' * (len(tiles) != 1)} of at most "
              f"{max(x1 - x0 for (_, _, x0, x1), _ in tiles)}x{max(y1 - y0 for (y0, y1, _, _), _ in tiles)} "
              f"px (--memory {args.memory:g} MiB; overlap {tile_margin(config)} px, G's receptive field)")
        def progress(done, count):   # one line, rewritten after each pass of G
            print(f"\rpredicted {done}/{count} frames", end="\n" if done == count else "", file=sys.stderr, flush=True)
        preds = predict_frames(ops, params, config, history, args.frames, memory, progress=progress)
        make_output_folder(args.out, PredictError)
        paths = []
        for i, p in enumerate(preds, 1):
            paths.append(os.path.join(args.out, f"pred_{i}.png"))
            Image.fromarray(to_uint8(p).transpose(1, 2, 0)).save(paths[-1], format="PNG")
        import figures
        gif = os.path.join(args.out, "predictions.gif")
        captions = [f"input {t + 1} of {m}" for t in range(m)] + [
            f"predicted t+{i} (red frame)" for i in range(1, len(preds) + 1)]
        figures.save_gif(gif, list(history) + list(preds), fps=4, captions=captions, first_predicted=m,
                         labels=[os.path.basename(os.path.normpath(args.input))])
    except (CheckpointError, DataError, BackendError, PredictError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {paths[0]}" + (f" ... {paths[-1]}" if len(paths) > 1 else "")
          + f" ({W}x{H}) and {gif} ({m} input frames, then {len(paths)} predicted)")
    return 0


def build_parser():
    """``python framepred.py COMMAND ...``; each subcommand sets func(args) -> exit status."""
    import argparse
    from kernels import DEVICES

    parser = argparse.ArgumentParser(prog="framepred.py", description=" ".join(__doc__.split("\n\n")[0].split()))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("predict", help="predict the next frames of a video with a checkpoint",
                       description="Predict the next K frames of a video, recursively from its last m "
                                   "frames, at full frame size; writes DIR/pred_1.png ... DIR/pred_K.png and "
                                   "DIR/predictions.gif (the m input frames, then the predictions). Sides that "
                                   "do not divide by 8 are padded by edge replication for the generator and "
                                   "the predictions cropped back.")
    p.add_argument("--checkpoint", required=True, metavar="C", type=path_text,
                   help="run folder of train_min.py or its checkpoint.npz")
    p.add_argument("--input", required=True, metavar="PATH", type=path_text,
                   help="video file (.mp4 .avi .mkv .mov .webm .mpg .mpeg .wmv .gif) or folder of .png/.jpg frames (natural order)")
    p.add_argument("--frames", type=int_at_least(1), default=1, metavar="K",
                   help="number of frames to predict (default %(default)s)")
    p.add_argument("--out", default="predictions", metavar="DIR", type=path_text, help="output folder (default %(default)s)")
    p.add_argument("--device", choices=list(DEVICES), default="auto",
                   help="auto, cpu, gpu, or reference (the plain NumPy ops) (default %(default)s)")
    p.add_argument("--memory", type=positive_float, default=DEFAULT_TILE_MEMORY / 2 ** 20, metavar="MIB",
                   help="budget for one pass of G, in MiB (the frames themselves come on top): a larger "
                        "frame runs in more tiles, not in more memory (default %(default)g)")
    p.set_defaults(func=predict)
    return parser


def number_in(low=-np.inf, high=np.inf, above=False, below=False):
    """An argparse type: a finite number in [low, high] (above: > low; below: < high), else a usage
    error saying so (NaN, inf and a negative learning rate are refused before anything runs)."""
    import argparse

    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}")
        if not np.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if v < low or (above and v == low):
            raise argparse.ArgumentTypeError(f"must be {'above' if above else 'at least'} {low:g}, got {v:g}")
        if v > high or (below and v == high):
            raise argparse.ArgumentTypeError(f"must be {'below' if below else 'at most'} {high:g}, got {v:g}")
        return v
    return parse


def check_output_folder(path, error, contents="the outputs"):
    """Before any work, refuse (error(...)) an --out that is a file or lies inside one; creates nothing."""
    above = path
    while above and not os.path.exists(above):           # the nearest part of the path that exists
        above = os.path.dirname(above.rstrip(os.sep))
    if above and not os.path.isdir(above):
        where = "is a file" if above == path else f"is inside {above}, which is a file"
        raise error(f"--out {path} {where}; give a folder for {contents}")


def make_output_folder(path, error):
    """Create the --out folder, or raise error(...) naming the flag and why."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise error(f"--out {path}: cannot make the output folder there ({e.strerror or e})") from e


positive_float = number_in(0, above=True)   # an argparse type: a finite number > 0


def path_text(text):
    """An argparse type for a file or folder: any text but the empty one (which would mean the current folder)."""
    import argparse
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or folder")
    return text


def int_at_least(low):
    """An argparse type: an integer >= low, else a usage error saying so."""
    import argparse

    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
        if v < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {v}")
        return v
    return parse


def run_command(parser, argv=None):
    """Parse argv and run the chosen subcommand's func(args) -> exit status; help and 2 without one.
    The command lines of framepred.py and metrics.py both end here."""
    import warnings
    from data import show_warning
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    with warnings.catch_warnings():
        warnings.showwarning = show_warning        # one line per warning, no source line
        try:
            return args.func(args)
        except MemoryError as e:
            print(f"error: out of memory ({e}): ask for less (fewer --clips or --frames, a smaller --size or "
                  f"--memory)", file=sys.stderr)
            return 1


def main(argv=None):
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
