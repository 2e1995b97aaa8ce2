"""Data parallelism over processes, for training on the CPU (`train_min.py --processes`).

Speed, not the paper. One process with a BLAS thread per core leaves the other cores idle through
everything between the GEMMs (the Python, NumPy's elementwise work), and splits the small
preset's thin GEMMs poorly. So P worker processes, one core each, run Algorithm 1's iteration
(framepred.train_step) on their shares of each minibatch, and before each update the gradients are
averaged over the shares, weighted by their sizes: every loss is a mean over its minibatch, so
this is the gradient of the whole minibatch. Each worker then applies the same update to the same
numbers, so the workers' parameters stay identical without ever being sent; the main process asks
worker 0 for them when it evaluates or saves (`pull`).

The exchange (GradientExchange.average): each worker writes its weighted gradients into its row of
a shared array, waits at a barrier for the others, then adds the rows in the same order as every
other worker. Two such arrays are used in turn, so a worker can write the next exchange while a
slower one still reads the last one (it cannot get further ahead: it waits at the next barrier).
"""
import functools
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
import traceback

import numpy as np

import framepred as fp

# BLAS libraries read these when they load: one thread per worker process.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


class WorkerError(RuntimeError):
    """A worker process failed or died; the message says which and why (the exception's last line),
    `details` holds the worker's whole traceback."""

    def __init__(self, message, details=""):
        super().__init__(message)
        self.details = details


def share_slices(batch, processes):
    """The rows of a minibatch of `batch` samples that each of `processes` workers takes: sizes as
    equal as they can be, the larger ones first."""
    base, extra = divmod(batch, processes)
    sizes = [base + (rank < extra) for rank in range(processes)]
    ends = np.cumsum(sizes)
    return [slice(int(end - size), int(end)) for size, end in zip(sizes, ends)]


# Measured on 2 cores (README "Speed"): at 1/8 of the paper's widths two workers step 15-25% faster
# than one process with two BLAS threads; at the paper's widths, whose large GEMMs split well across
# threads, no faster (5445 against 5185 ms per adv_gdl iteration), with a model and caches per worker.
THIN_WIDTH = 0.25


def auto_processes(ops, config, batch_sizes, cores=None):
    """--processes 0 (auto): one worker per core on the fast CPU backend for models of at most
    THIN_WIDTH of the paper's widths, as many as the smallest minibatch has samples; else 1 (the
    GPU, the reference backend, which is for reading, and the wide models)."""
    widths = [config["width"], config.get("d_width") or config["width"]]
    if getattr(ops, "name", None) != "cpu" or max(widths) > THIN_WIDTH:
        return 1
    return max(1, min([cores or ops.available_cores()] + [int(b) for b in batch_sizes]))


class GradientExchange:
    """The shared memory and the barrier of P workers. In worker `rank` (set in the worker),
    average(grads, weights) returns the sum over the workers of each one's grads times its weight
    for that network ('G' or 'D'): the average over the whole minibatch."""

    def __init__(self, context, params, processes):
        keys = [key for key in params if key.startswith("G/")] + [key for key in params if not key.startswith("G/")]
        self.spans, offset = {}, 0                                 # key -> (offset, shape, size) in a row
        for key in keys:
            size = int(np.prod(params[key].shape))
            self.spans[key] = (offset, tuple(params[key].shape), size)
            offset += size
        self.dtype, self.length, self.processes = np.dtype(params[keys[0]].dtype), offset, processes
        nbytes = processes * offset * self.dtype.itemsize
        self.buffers = [context.RawArray("b", nbytes) for _ in range(2)]
        self.barrier = context.Barrier(processes)
        self.rank, self.turn = None, 0

    def average(self, grads, weights):
        rows = np.frombuffer(self.buffers[self.turn], self.dtype).reshape(self.processes, self.length)
        self.turn ^= 1
        keys = list(grads)
        weight = weights[keys[0].split("/")[0]]                 # each call holds one network's gradients
        spans = [self.spans[key] for key in keys]
        start = min(offset for offset, _, _ in spans)
        end = max(offset + size for offset, _, size in spans)
        mine = rows[self.rank]
        for key, (offset, _, size) in zip(keys, spans):
            np.multiply(grads[key].reshape(-1), weight, out=mine[offset:offset + size])
        self.barrier.wait()
        total = np.add.reduce(rows[:, start:end], axis=0)        # row 0 + row 1 + ...: the same order everywhere
        return {key: total[offset - start:offset - start + size].reshape(shape)
                for key, (offset, shape, size) in zip(keys, spans)}


def _worker(rank, conn, exchange, backend, params, config, opt):
    """One worker's loop: ('step', (d_share, g_share, weights, kwargs)) -> ('ok', log);
    ('state', None) -> ('ok', (params, opt)); None or a closed pipe -> exit. It answers ('ok', None)
    once it is ready; a failure answers ('error', traceback), or ('aborted', ...) in a worker that
    was only waiting at the barrier when another failed."""
    # Ctrl-C (SIGINT) and a SIGTERM sent to the whole process group are the main process's to
    # handle: it finishes the step, saves and closes the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    exchange.rank = rank
    message = ("ready", None)
    while message is not None:
        kind, payload = message
        try:
            if kind == "ready":
                from kernels import load_backend
                ops = load_backend(backend, verbose=False)
                if hasattr(ops, "set_threads"):
                    ops.set_threads(1)
                conn.send(("ok", None))
            elif kind == "step":
                d_share, g_share, weights, kwargs = payload
                log = fp.train_step(ops, params, config, d_share, g_share, opt=opt,
                                    average=functools.partial(exchange.average, weights=weights), **kwargs)
                conn.send(("ok", fp.read_log(ops, log)))
            else:
                conn.send(("ok", (params, opt)))
        except threading.BrokenBarrierError:
            conn.send(("aborted", "stopped at the barrier: another worker failed"))
            return
        except BaseException:
            exchange.barrier.abort()                   # the others stop waiting for this one
            conn.send(("error", traceback.format_exc()))
            return
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return


class ProcessGroup:
    """P worker processes, each with its own copy of params, config and the optimiser's state, that
    train as one: group.train_step(d_batch, g_batch, lr_g=..., ...) is framepred.train_step on the
    whole minibatches (up to float rounding: sums are formed in another order) and returns its log.
    Use as a context manager, or call close()."""

    def __init__(self, processes, backend, params, config, opt=None):
        context = multiprocessing.get_context("spawn")      # fresh interpreters: no threads or locks copied
        self.processes = processes
        self.exchange = GradientExchange(context, params, processes)
        host = {key: np.asarray(value) for key, value in params.items()}
        self.conns, self.workers = [], []
        saved = {name: os.environ.get(name) for name in BLAS_THREAD_VARIABLES}
        os.environ.update({name: "1" for name in BLAS_THREAD_VARIABLES})   # read by BLAS as it loads
        try:
            for rank in range(processes):
                mine, theirs = context.Pipe()
                worker = context.Process(target=_worker, args=(rank, theirs, self.exchange, backend, host, config, opt),
                                         name=f"framepred-worker-{rank}", daemon=True)
                worker.start()
                theirs.close()
                self.conns.append(mine)
                self.workers.append(worker)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        self._receive_all()                            # each worker says it is ready (or why not)

    def train_step(self, d_batch, g_batch, **kwargs):
        """framepred.train_step(ops, params, config, d_batch, g_batch, **kwargs) over the workers ->
        the log as Python floats (framepred.read_log's), each term the mean over the whole minibatch."""
        for batch in (d_batch, g_batch):
            if batch is not None and len(batch[0]) < self.processes:
                raise ValueError(f"a minibatch of {len(batch[0])} cannot be shared by {self.processes} processes")
        d_slices = share_slices(len(d_batch[0]), self.processes) if d_batch is not None else [None] * self.processes
        g_slices = share_slices(len(g_batch[0]), self.processes)
        for rank, (d_part, g_part) in enumerate(zip(d_slices, g_slices)):
            weights = {"G": (g_part.stop - g_part.start) / len(g_batch[0])}
            if d_part is not None:
                weights["D"] = (d_part.stop - d_part.start) / len(d_batch[0])
            d_share = None if d_part is None else tuple(np.asarray(a[d_part]) for a in d_batch)
            self._send(rank, ("step", (d_share, tuple(np.asarray(a[g_part]) for a in g_batch), weights, kwargs)))
        logs = self._receive_all()
        total = {}
        for log, d_part, g_part in zip(logs, d_slices, g_slices):
            for key, value in log.items():
                part, batch = (d_part, d_batch) if key.startswith("d_") else (g_part, g_batch)
                total[key] = total.get(key, 0.0) + value * (part.stop - part.start) / len(batch[0])
        return total

    def pull(self, params, opt=None, rank=0):
        """Copy a worker's parameters (and optimiser state) into params (and opt), in place."""
        self._send(rank, ("state", None))
        (theirs, their_opt), = self._receive_all([rank])
        for key, value in theirs.items():
            params[key][...] = value
        for net, state in (opt or {}).items():
            for name, value in their_opt[net].items():
                if name in fp.OPTIMIZER_ARRAYS:
                    for key, array in value.items():
                        state[name][key][...] = array
                else:
                    state[name] = value          # the step count, the average's beta and total weight

    def _receive_all(self, ranks=None):
        """Each worker's answer, in rank order; WorkerError if one fails or dies first. A worker
        that only stopped at the barrier ('aborted') is not the cause: the one that failed is."""
        ranks = list(range(self.processes)) if ranks is None else ranks
        answers, aborted, waiting = {}, [], set(ranks)
        while waiting:
            multiprocessing.connection.wait([self.conns[r] for r in waiting] + [self.workers[r].sentinel for r in waiting])
            for rank in sorted(waiting):
                if not self.conns[rank].poll():
                    if not self.workers[rank].is_alive() and not self.conns[rank].poll():
                        raise self._close_after_death(rank)
                    continue
                try:
                    status, value = self.conns[rank].recv()
                except (EOFError, OSError):
                    raise self._close_after_death(rank) from None
                waiting.discard(rank)
                if status == "ok":
                    answers[rank] = value
                elif status == "aborted":
                    aborted.append(rank)
                else:
                    self.close()
                    last = value.strip().splitlines()[-1] if value.strip() else value
                    raise WorkerError(f"worker process {rank} failed: {last}", details=value)
        if aborted:
            self.close()
            raise WorkerError(f"worker process {aborted[0]} stopped at the barrier, and no worker said why")
        return [answers[r] for r in ranks]

    def _send(self, rank, message):
        if not self.workers:
            raise WorkerError("the worker processes have stopped (the group is closed)")
        try:
            self.conns[rank].send(message)
        except OSError:                                 # its end of the pipe is gone: the worker with it
            raise self._close_after_death(rank) from None

    def _close_after_death(self, rank):
        """Close the group after worker `rank` died; -> the WorkerError that says so. Its pipe can
        close before the process is reaped: waited for here, so that its exit code is known."""
        self.workers[rank].join(timeout=5)
        code = self.workers[rank].exitcode
        self.close()
        return WorkerError(f"worker process {rank} died (exit code {code}"
                           + (": killed, perhaps for lack of memory" if code == -9 else "") + ")")

    def close(self, timeout=5.0):
        """Stop the workers: those still at work are woken from the barrier, every one is told to
        exit, and any left after `timeout` seconds is killed."""
        if not self.workers:
            return
        if all(worker.is_alive() or worker.exitcode == 0 for worker in self.workers):
            # abort() waits for every sleeper at the barrier to wake: never for long (in a thread,
            # abandoned after a second) and never with a killed worker among them, which would not
            waker = threading.Thread(target=self.exchange.barrier.abort, daemon=True)
            waker.start()
            waker.join(timeout=1.0)
        else:
            timeout = 0.0                              # the survivors may wait at the barrier for good
        for conn in self.conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
            conn.close()
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                worker.kill()
                worker.join()
        self.conns, self.workers = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

