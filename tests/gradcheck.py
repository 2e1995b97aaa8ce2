"""Finite-difference oracles for the hand-written backward passes.

Every check is central differences in float64, contracted with a random upstream gradient
`dout`: the scalar checked is sum(dout * f(inputs)). Errors are relative,
|a - n| / max(1e-8, |a| + |n|), taken with 2-norms over a sample of entries of each input
(all entries when the input is small), and once more on the directional derivative along a
random direction through all entries at once.

Why norms over the sample and not entry by entry: an entry whose true gradient is exactly 0
(GDL's terms cancel, a saturated tanh) gets a numeric estimate of pure rounding noise,
~1e-16 |f| / eps, which is ~1e-11 and so a relative error of ~1e-3 against the 1e-8 floor.
The norm keeps the bound meaningful (one wrong entry of typical size still gives ~0.1).
"""
import numpy as np


def rel_error(a, n):
    """|a - n| / max(1e-8, |a| + |n|), with 2-norms for vectors."""
    a, n = np.ravel(a), np.ravel(n)
    return float(np.linalg.norm(a - n) / max(1e-8, np.linalg.norm(a) + np.linalg.norm(n)))


def _contract(out, dout):
    return float(np.sum(dout * out))


def _evaluate(f):
    # a copy: an op may return a view of its input (flatten), which the next perturbation would change
    return np.array(f(), dtype=np.float64, copy=True)


def numeric_entries(f, x, idx, dout, eps):
    """d/dx[i] of sum(dout * f()) for each flat index i in idx; f reads x, which is perturbed in place."""
    flat = x.reshape(-1)
    grads = np.empty(len(idx))
    for k, i in enumerate(idx):
        v = flat[i]
        flat[i] = v + eps
        plus = _evaluate(f)
        flat[i] = v - eps
        minus = _evaluate(f)
        flat[i] = v
        grads[k] = _contract(plus - minus, dout) / (2 * eps)
    return grads


def numeric_direction(f, x, u, dout, eps):
    """Directional derivative of sum(dout * f()) along u (same shape as x)."""
    x0 = x.copy()
    x[...] = x0 + eps * u
    plus = _evaluate(f)
    x[...] = x0 - eps * u
    minus = _evaluate(f)
    x[...] = x0
    return _contract(plus - minus, dout) / (2 * eps)


def agreeing_estimate(estimate, analytic, eps, tol, tries=4):
    """Central differences through whole networks, whose relu and |.| kinks cannot all be kept
    away: a kink inside [x - eps, x + eps] moves the estimate. If the estimate at eps disagrees
    with the analytic value, retry with eps / 4, up to `tries` times, and return the first
    estimate that agrees (else the last one, which then fails the check). A wrong gradient
    agrees with none of them."""
    for _ in range(tries + 1):
        current = estimate(eps)
        if rel_error(analytic, current) < tol:
            break
        eps /= 4
    return current


def check_gradients(f, inputs, analytic, dout, *, eps, tol, rng, samples=40, kinks=False):
    """Compare analytic gradients with central differences; assert within tol; return the worst error.

    f: () -> output array (or scalar), reading the arrays in `inputs` (a dict name -> float64 array).
    analytic: dict name -> gradient of sum(dout * f()) w.r.t. inputs[name].
    kinks=True: f has kinks that the inputs were not steered clear of (a whole network); each
    estimate then comes from agreeing_estimate.
    """
    worst = 0.0
    for name, x in inputs.items():
        a = np.asarray(analytic[name], dtype=np.float64)
        assert a.shape == x.shape, f"{name}: gradient shape {a.shape} != input shape {x.shape}"
        idx = np.arange(x.size) if x.size <= samples else rng.choice(x.size, samples, replace=False)
        if kinks:
            num = agreeing_estimate(lambda e: numeric_entries(f, x, idx, dout, e), a.reshape(-1)[idx], eps, tol)
        else:
            num = numeric_entries(f, x, idx, dout, eps)
        ana = a.reshape(-1)[idx]
        err = rel_error(ana, num)
        k = int(np.argmax(np.abs(ana - num)))
        assert err < tol, (f"{name}: rel error {err:.3g} >= {tol} over {len(idx)} entries; worst entry "
                           f"{np.unravel_index(idx[k], x.shape)}: analytic {ana[k]:.10g} vs numeric {num[k]:.10g}")
        u = rng.standard_normal(x.shape)
        ana_dir = float(np.sum(a * u))
        if kinks:
            num_dir = agreeing_estimate(lambda e: numeric_direction(f, x, u, dout, e), ana_dir, eps, tol)
        else:
            num_dir = numeric_direction(f, x, u, dout, eps)
        err_dir = rel_error(ana_dir, num_dir)
        assert err_dir < tol, (f"{name} along a random direction: analytic {ana_dir:.10g} vs numeric "
                               f"{num_dir:.10g}, rel error {err_dir:.3g} >= {tol}")
        worst = max(worst, err, err_dir)
    return worst
