"""Benchmark of one training iteration (Algorithm 1), called by `python train_min.py --bench N`.

run_bench(ops, params, config, next_batch, n): one warm-up iteration, then n timed iterations of
framepred.train_step, each on two fresh minibatches from next_batch(). It prints

- the BLAS in use and its threads (NumPy backend), OPENBLAS_CORETYPE and OPENBLAS_THREAD_TIMEOUT;
- a per-phase table: G forward, G backward, D forward, D backward, losses, update and the rest
  (downscaling, concatenations) of train_step; for each, its exclusive time per step and how much
  of it went to GEMMs and to im2col/col2im (the unfolding copies of the convolutions), with the
  GEMM work counted and its rate;
- as the last line:
  `bench: ms_per_step=... gflop_per_step=... gflops=... sgemm_gflops=... ratio=... peak_rss_mib=...`

gflop_per_step is computed analytically from the config (analytic_gflop): 2 x the multiply-adds
of every convolution and fully connected layer, forward, and backward dx and dw as train_step
performs them. It is checked against the GEMM work counted while timing. sgemm_gflops is a plain
float32 GEMM of a comparable size, (8192 x 6400) @ (6400 x 256), measured in the same process,
the best of 5 before the warm-up and 5 after the iterations (the machine may be shared: the best
is its capability); ratio = gflops / sgemm_gflops. peak_rss_mib is the process's peak resident
memory (getrusage) at the end of the timed iterations (the first reference GEMM's ~225 MiB of
operands come and go before the warm-up, below a paper-size step's peak).

Timing is by wrapping, not by hooks in the model: framepred's G/D forward/backward and
sgd_update are replaced for the duration of the run by timed versions (train_step looks them up
in the module at each call), the losses are timed through a proxy around `ops`, and the GEMM and
im2col/col2im helpers are timed by wrapping them: in the NumPy backends' modules (kernels.fast_cpu's
_gemm, _unfold, _fold, _add_taps, _unfold_rows, _fold_rows; kernels.numpy_ops' im2col and col2im: the convolutions call them
through the module, so the wrapper sees every call), and on a cupy_ops.CudaOps object (its `_gemm`,
`im2col`, `col2im`, called through self). Everything is restored afterwards. Phase times are
exclusive: a D forward inside the G step's loss counts as D forward, not as losses.

Clocks: on the CPU, host timestamps. On the GPU, CUDA events recorded in stream order (EventClock):
nothing waits for the device while the iterations run (a sync around every phase and GEMM would
change what is measured), and the intervals become seconds once, after the last iteration. The
bench line has the same format on both.
"""
import os
import resource
import sys
import time
from collections import defaultdict

import numpy as np

import framepred as fp

PHASES = ["G forward", "G backward", "D forward", "D backward", "losses", "update", "other"]
MODEL_PHASES = {"generator_forward": "G forward", "generator_backward": "G backward",
                "discriminator_forward": "D forward", "discriminator_backward": "D backward",
                "sgd_update": "update", "adam_update": "update"}
LOSS_OPS = ("lp_loss", "gdl_loss", "bce_logits_loss")
# the CPU backends' helpers timed as GEMM and as im2col/col2im work (those present are wrapped)
GEMM_HELPERS = ("_gemm",)
UNFOLD_HELPERS = ("im2col", "col2im", "_unfold", "_fold", "_add_taps", "_unfold_rows", "_fold_rows")
SGEMM_SHAPE = (8192, 6400, 256)          # (M, K, N) of the reference GEMM


# ----------------------------------------------------------------------------- analytic work
def conv_layers(config):
    """Every convolution as (net, scale index j, layer i, c_in, c_out, k, output pixels per sample)."""
    layers = []
    m3, n3 = 3 * config["m"], 3 * config["n"]
    for j, k in enumerate(config["scales"]):
        side = config["patch"] // fp.scale_factor(k)
        c_in = m3 if j == 0 else m3 + n3
        for i, (c_out, ks) in enumerate(zip(config["g_maps"][j] + [n3], config["g_kernels"][j]), 1):
            layers.append(("G", j, i, c_in, c_out, ks, side * side))            # 'same'
            c_in = c_out
        c_in = m3 + n3
        for i, (c_out, ks) in enumerate(zip(config["d_maps"][j], config["d_kernels"][j]), 1):
            side -= ks - 1                                                     # 'valid'
            layers.append(("D", j, i, c_in, c_out, ks, side * side))
            c_in = c_out
    return layers


def fc_layers(config):
    """D's fully connected layers as (d_in, d_out)."""
    out = []
    for j, flat in enumerate(fp.d_flat_sizes(config)):
        d_in = flat
        for d_out in config["d_fc"][j] + [1]:
            out.append((d_in, d_out))
            d_in = d_out
    return out


def forward_macs(config, net):
    """Multiply-adds of one forward pass of G or D (all scales) on one sample."""
    macs = sum(c_in * c_out * k * k * px for nt, _, _, c_in, c_out, k, px in conv_layers(config) if nt == net)
    if net == "D":
        macs += sum(a * b for a, b in fc_layers(config))
    return macs


def backward_macs(config, net, weights=True, inputs=True, first_dx="none"):
    """Multiply-adds of one backward pass of G or D on one sample.

    weights: the weight gradients (one GEMM per layer, as large as its forward).
    inputs: the input gradients of every layer but the first convolution of each scale.
    first_dx: that first convolution's input gradient: "none", "all" (every input channel) or
    "needed" (only the channels that need one: the coarse guess in G, the candidate in D).
    G's scale-1 first convolution sees data only and never gets one.
    """
    n3 = 3 * config["n"]
    macs = 0
    for nt, j, i, c_in, c_out, k, px in conv_layers(config):
        if nt != net:
            continue
        fwd = c_in * c_out * k * k * px
        macs += fwd if weights else 0
        if i > 1:
            macs += fwd if inputs else 0
        elif net == "G" and j == 0:
            pass                                      # G's scale-1 input is data only
        elif first_dx == "all":
            macs += fwd
        elif first_dx == "needed":
            macs += fwd * n3 // c_in
    if net == "D":
        fc = sum(a * b for a, b in fc_layers(config))
        macs += (fc if weights else 0) + (fc if inputs else 0)
    return macs


def step_macs(config, batch, d_weights_in_g_step, first_dx):
    """Multiply-adds of one train_step. first_dx: "all" or "needed" (see backward_macs), for the
    first convolutions whose input gradient is used at all (G's scales after the first; D's in the
    G step). G's scale-1 input and D's input in the D step get none in either case."""
    g_fwd = forward_macs(config, "G")
    g_bwd = backward_macs(config, "G", first_dx=first_dx)
    macs = batch * (g_fwd + g_bwd)                                  # the G step's G
    if config["lam_adv"]:
        d_fwd = forward_macs(config, "D")
        macs += batch * g_fwd                                       # D step: G's predictions
        macs += 2 * batch * (d_fwd + backward_macs(config, "D", first_dx="none"))   # D on 2N
        macs += batch * (d_fwd + backward_macs(config, "D", weights=d_weights_in_g_step, first_dx=first_dx))
    return macs


def analytic_gflop(config, batch, counted_gflop=None):
    """GFLOP (2 x multiply-adds) of one train_step -> (gflop, which variant).

    train_step's work depends on two choices of the implementation: whether the G step also
    computes D's weight gradients (unused), and whether the first convolutions' input gradients
    cover every input channel or only those that need one. With counted_gflop (the GEMM work
    observed while timing) the variant that matches it is taken; else the leanest."""
    variants = {}
    for d_w in (False, True):
        for first in ("needed", "all"):
            label = (f"D weight grads in G step: {'yes' if d_w else 'no'}; "
                     f"first-conv input grads: {'all channels' if first == 'all' else 'needed channels only'}")
            variants[label] = 2 * step_macs(config, batch, d_w, first) / 1e9
    if counted_gflop is None:
        label = next(iter(variants))
    else:
        label = min(variants, key=lambda v: abs(variants[v] - counted_gflop))
    return variants[label], label


def taps_border_gflop(config, batch, ops):
    """GFLOP per train_step that a backend's taps-path convolutions (fast_cpu.use_taps) multiply on
    top of the analytic work: their GEMM runs over the padded input pixels, C_in C_out k^2 (Hp Wp -
    Ho Wo) more multiply-adds per sample and forward. 0 for a backend without that path."""
    use_taps = getattr(ops, "use_taps", None)
    if use_taps is None:
        return 0.0
    extra = {"G": 0, "D": 0}
    for net, j, _, c_in, c_out, k, px in conv_layers(config):
        pad = k // 2 if net == "G" else 0
        side_out = int(round(px ** 0.5))
        padded = (side_out + k - 1) ** 2 if net == "D" else (side_out + 2 * pad) ** 2
        if use_taps(c_in, c_out, padded, px):
            extra[net] += c_in * c_out * k * k * (padded - px)
    # G forwards: the G step's, and the D step's predictions; D forwards: 2N in the D step, N in the G step
    g_passes, d_passes = (2, 3) if config["lam_adv"] else (1, 0)
    return 2 * batch * (g_passes * extra["G"] + d_passes * extra["D"]) / 1e9


# ----------------------------------------------------------------------------- timing
class HostClock:
    """Timestamps for the NumPy backend: perf_counter (the work is done when a call returns)."""

    def mark(self):
        return time.perf_counter()

    def finish(self):
        pass

    @staticmethod
    def seconds(a, b):
        return b - a


class EventClock:
    """Timestamps for the CUDA backend: CUDA events recorded on the current stream, in stream order,
    without a sync (the host runs ahead; a host timer would time the launches, not the work).
    finish() waits for the last event; seconds() is then the GPU time between two events."""

    def __init__(self, cupy):
        self._cuda = cupy.cuda
        self._last = None

    def mark(self):
        event = self._cuda.Event()
        event.record()
        self._last = event
        return event

    def finish(self):
        if self._last is not None:
            self._last.synchronize()

    def seconds(self, a, b):
        return self._cuda.get_elapsed_time(a, b) / 1e3       # milliseconds -> seconds


def clock_for(ops):
    """EventClock for a backend on CuPy (it has cupy.cuda), HostClock otherwise."""
    xp = getattr(ops, "xp", None)
    if getattr(ops, "name", "cpu") == "gpu" and hasattr(xp, "cuda"):
        return EventClock(xp)
    return HostClock()


class Timer:
    """Exclusive per-phase times (a stack: a nested phase pauses its parent) plus, attributed to the
    phase running, the time and GEMM work of the leaf kinds "gemm" and "unfold".

    Time is taken as clock marks (host timestamps or CUDA events) and turned into seconds by
    resolve(), once, after the timed iterations: on the GPU nothing waits for the device meanwhile."""

    def __init__(self, clock):
        self.clock = clock
        self.stack = []
        self.intervals = []                       # (key, mark, mark): key ("phase", name) or ("kind", phase, kind)
        self.phase = defaultdict(float)
        self.kind = defaultdict(float)            # (phase, kind) -> seconds
        self.flop = defaultdict(float)            # phase -> GEMM flop
        self.calls = defaultdict(int)

    def current(self):
        return self.stack[-1][0] if self.stack else "other"

    def enter(self, name):
        now = self.clock.mark()
        if self.stack:
            top = self.stack[-1]
            self.intervals.append((("phase", top[0]), top[1], now))
        self.stack.append([name, now])

    def leave(self):
        now = self.clock.mark()
        name, start = self.stack.pop()
        self.intervals.append((("phase", name), start, now))
        if self.stack:
            self.stack[-1][1] = now

    def resolve(self):
        """Wait for the last mark and add every interval into phase and kind (seconds)."""
        self.clock.finish()
        for key, a, b in self.intervals:
            if key[0] == "phase":
                self.phase[key[1]] += self.clock.seconds(a, b)
            else:
                self.kind[key[1], key[2]] += self.clock.seconds(a, b)
        self.intervals = []

    def phased(self, name, fn):
        def wrapped(*args, **kwargs):
            self.enter(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()
        return wrapped

    def leaf(self, kind, fn, count_flop=False):
        def wrapped(*args, **kwargs):
            t0 = self.clock.mark()
            out = fn(*args, **kwargs)
            phase = self.current()
            self.intervals.append((("kind", phase, kind), t0, self.clock.mark()))
            self.calls[kind] += 1
            if count_flop:
                a, b = args[0], args[1]
                batch = int(np.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))) if a.ndim > 2 or b.ndim > 2 else 1
                self.flop[phase] += 2.0 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1]
            return out
        return wrapped


class TimedOps:
    """The backend with its losses timed as the phase "losses"; every other name passes through."""

    def __init__(self, ops, timer):
        self._ops = ops
        for name in LOSS_OPS:
            setattr(self, name, timer.phased("losses", getattr(ops, name)))

    def __getattr__(self, name):
        return getattr(self._ops, name)


def _install(timer, ops):
    """Wrap the model's phases and the backend's GEMM / im2col helpers; -> what _restore undoes."""
    saved = []

    def patch(owner, name, new):
        own = isinstance(owner, type(fp)) or name in vars(owner)     # a module's, or the object's own
        saved.append((owner, name, getattr(owner, name), own))
        setattr(owner, name, new)

    for fn_name, phase in MODEL_PHASES.items():
        patch(fp, fn_name, timer.phased(phase, getattr(fp, fn_name)))
    # The NumPy backend is a module whose convolutions call its helpers through module globals;
    # the CUDA backend is an object whose convolutions call self.im2col / self.col2im.
    for name in GEMM_HELPERS:
        if hasattr(ops, name):
            patch(ops, name, timer.leaf("gemm", getattr(ops, name), count_flop=True))
    for name in UNFOLD_HELPERS:
        if hasattr(ops, name):
            patch(ops, name, timer.leaf("unfold", getattr(ops, name)))
    return saved


def _restore(saved):
    for owner, name, original, own in reversed(saved):
        if own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)           # the wrapper shadowed a method of the object's class


def sgemm_gflops(ops, shape=SGEMM_SHAPE, repeats=5):
    """Best of `repeats` float32 GEMMs (M x K) @ (K x N) on the backend, in GFLOP/s."""
    m, k, n = shape
    xp, clock = ops.xp, clock_for(ops)
    rng = np.random.default_rng(0)
    a = ops.asarray(rng.standard_normal((m, k), dtype=np.float32))
    b = ops.asarray(rng.standard_normal((k, n), dtype=np.float32))
    out = xp.matmul(a, b)                                      # warm-up (threads, GPU handles)
    marks = []
    for _ in range(repeats):
        t0 = clock.mark()
        xp.matmul(a, b, out=out)
        marks.append((t0, clock.mark()))
    clock.finish()
    best = min(clock.seconds(t0, t1) for t0, t1 in marks)
    return 2.0 * m * k * n / best / 1e9


# ----------------------------------------------------------------------------- environment
def blas_info():
    """A line or two on the BLAS and its threads (NumPy backend), where cheaply available."""
    lines = []
    try:
        blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
        lines.append(f"blas: {blas.get('name')} {blas.get('version')}")
    except Exception:
        pass
    try:
        import ctypes
        libdir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
        libs = [f for f in os.listdir(libdir) if "openblas" in f]
        if libs:
            lib = ctypes.CDLL(os.path.join(libdir, libs[0]))
            for prefix, suffix in (("scipy_openblas_", "64_"), ("openblas_", "64_"), ("openblas_", "")):
                if hasattr(lib, f"{prefix}get_num_threads{suffix}"):
                    threads = getattr(lib, f"{prefix}get_num_threads{suffix}")()
                    core = getattr(lib, f"{prefix}get_corename{suffix}")
                    core.restype = ctypes.c_char_p
                    lines.append(f"openblas: {threads} threads, core {core().decode()}")
                    break
    except Exception:
        pass
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    lines.append(f"OPENBLAS_CORETYPE={coretype}" + ("  (forces OpenBLAS's kernels for that core; "
                 "numbers may differ without it)" if coretype else " (unset)"))
    timeout = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    lines.append(f"OPENBLAS_THREAD_TIMEOUT={timeout}" + ("" if timeout else
                 " (unset: OpenBLAS's idle threads spin ~0.1 s after every GEMM, taking the cores "
                 "from the im2col copies; 4 before NumPy is imported lets them sleep)"))
    lines.append(f"cpus: {os.cpu_count()}")
    return lines


def _peak_rss_mib():
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss     # KiB on Linux
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


# ----------------------------------------------------------------------------- the run
def time_group(group, next_batch, n, lr_g):
    """Seconds per iteration of a data_parallel.ProcessGroup, the minibatches drawn outside the timing."""
    group.train_step(next_batch(), next_batch(), lr_g=lr_g)                                     # warm-up
    seconds = 0.0
    for _ in range(n):
        d_batch, g_batch = next_batch(), next_batch()
        start = time.perf_counter()
        group.train_step(d_batch, g_batch, lr_g=lr_g)
        seconds += time.perf_counter() - start
    return seconds / n


def run_bench(ops, params, config, next_batch, n, sgemm_shape=SGEMM_SHAPE, group=None):
    """Warm up with one iteration, time n, print the table and the bench line; -> exit status 0.
    The parameters are trained by the iterations (in place), as in a run. group: a
    data_parallel.ProcessGroup (train_min --processes P > 1): after the table, which times this
    process alone, n iterations of the group are timed too, and the bench line gives theirs."""
    if n < 1:
        raise ValueError(f"--bench needs at least 1 iteration, got {n}")
    batch = int(next_batch()[0].shape[0])
    lr_g = fp.lr_g_at(0, 2)
    print(f"benchmark: {n} timed iteration{'s' * (n != 1)} of Algorithm 1 after 1 warm-up; batch {batch}, "
          f"loss {config['loss']}, width {config['width']:g}, patch {config['patch']}, backend {ops.name}")
    if ops.name != "gpu":
        for line in blas_info():
            print("  " + line)
    sys.stdout.flush()

    ref_before = sgemm_gflops(ops, sgemm_shape)
    fp.train_step(ops, params, config, next_batch(), next_batch(), lr_g=lr_g)         # warm-up

    clock = clock_for(ops)
    timer = Timer(clock)
    timed_ops = TimedOps(ops, timer)
    saved = _install(timer, ops)
    marks = []                                     # per iteration: before sampling, before and after the step
    try:
        for _ in range(n):
            t0 = clock.mark()
            d_batch, g_batch = next_batch(), next_batch()
            t1 = clock.mark()
            timer.enter("other")
            fp.train_step(timed_ops, params, config, d_batch, g_batch, lr_g=lr_g)
            timer.leave()
            marks.append((t0, t1, clock.mark()))
    finally:
        _restore(saved)
    timer.resolve()                                # on the GPU: the one wait, after the last step
    data_s = sum(clock.seconds(t0, t1) for t0, t1, _ in marks)
    step_s = sum(clock.seconds(t1, t2) for _, t1, t2 in marks)
    peak_rss = _peak_rss_mib()

    ms = 1e3 / n
    counted = sum(timer.flop.values()) / n / 1e9
    border = taps_border_gflop(config, batch, ops)
    gflop, variant = analytic_gflop(config, batch, counted - border if counted else None)
    have_gemm = bool(timer.calls["gemm"])
    have_unfold = bool(timer.calls["unfold"])

    def col(value, width, fmt="{:.1f}", show=True):
        return (fmt.format(value) if show else "n/a").rjust(width)

    print()
    print(f"{'phase':<12} {'ms/step':>9} {'%':>6} {'GEMM ms':>9} {'im2col ms':>10} {'rest ms':>9} "
          f"{'GEMM GFLOP':>11} {'GEMM GFLOP/s':>13}")
    rows = [(phase, timer.phase[phase] * ms, timer.kind[phase, "gemm"] * ms, timer.kind[phase, "unfold"] * ms,
             timer.flop[phase] / n / 1e9) for phase in PHASES]
    tot = [sum(r[i] for r in rows) for i in range(1, 5)]
    for phase, t, g, u, f in rows + [("total", *tot)]:
        print(f"{phase:<12} {col(t, 9)} {col(100 * t / tot[0], 6)} {col(g, 9, show=have_gemm)} "
              f"{col(u, 10, show=have_unfold)} {col(t - g - u, 9)} {col(f, 11, '{:.2f}', have_gemm)} "
              f"{col(f / g * 1e3 if g else 0, 13, show=g > 0)}")
    tot = dict(zip("tguf", tot))
    print(f"(phases are exclusive; 'other' is the rest of train_step: downscaling, concatenations; "
          f"minibatch sampling outside train_step: {data_s * ms:.1f} ms/step, not counted)")
    if have_gemm:
        print(f"GEMM: {tot['g'] / tot['t'] * 100:.1f}% of the step, {timer.calls['gemm'] / n:.0f} calls/step; "
              f"im2col/col2im: {tot['u'] / tot['t'] * 100:.1f}%, {timer.calls['unfold'] / n:.0f} calls/step; "
              f"everything else: {(tot['t'] - tot['g'] - tot['u']) / tot['t'] * 100:.1f}%")
        diff = (counted - border - gflop) / gflop
        print(f"work: analytic {gflop:.2f} GFLOP/step ({variant}); GEMMs counted {counted:.2f}"
              + (f", {border:.2f} of them on the padded borders of the taps path" if border else "")
              + f" ({100 * diff:+.2f}%"
              + ("" if abs(diff) < 0.005 else ": the analytic model is out of date") + ")")
    else:
        print(f"work: analytic {gflop:.2f} GFLOP/step ({variant}); GEMMs not counted on this backend")
    sys.stdout.flush()

    ref_after = sgemm_gflops(ops, sgemm_shape)
    ref = max(ref_before, ref_after)
    ms_step = step_s * ms
    gflops = gflop / (ms_step / 1e3)
    m, k, nn = sgemm_shape
    print(f"reference sgemm ({m} x {k}) @ ({k} x {nn}) float32, best of 5 before and 5 after the "
          f"iterations: {ref_before:.1f} and {ref_after:.1f} GFLOP/s; taking {ref:.1f}")
    if have_gemm and tot["g"] and tot["f"] / tot["g"] * 1e3 > ref:
        print(f"warning: the step's own GEMMs ran faster ({tot['f'] / tot['g'] * 1e3:.1f} GFLOP/s) than the "
              f"reference: the machine was busier while it was measured, and the ratio reads high")
    extra = ""
    if group is not None:
        one = ms_step
        ms_step = time_group(group, next_batch, n, lr_g) * 1e3
        gflops = gflop / (ms_step / 1e3)
        extra = f" processes={group.processes}"
        print(f"{group.processes} worker processes of one core each, {n} iteration{'s' * (n != 1)} after 1 warm-up: "
              f"{ms_step:.1f} ms/step (this process alone, with the table: {one:.1f} ms/step); "
              f"peak_rss_mib is this process's, each worker holds a model of its own")
    print(f"bench: ms_per_step={ms_step:.1f} gflop_per_step={gflop:.2f} gflops={gflops:.2f} "
          f"sgemm_gflops={ref:.2f} ratio={gflops / ref:.3f} peak_rss_mib={peak_rss:.0f}{extra}", flush=True)
    return 0
