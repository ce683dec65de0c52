"""MetaSchedule over a model's distinct contraction kernels, with a persistent cache.

Each (target, workload) pair owns a folder ``$CEPD_DEPLOY_CACHE/<hash>/`` (default
``~/.cache/cepd-deploy/tvm/``): MetaSchedule's JSON database plus ``result.json`` (trials so
far, our schedule's latency, the best tuned latency, both measured the same way). A later build
reuses a folder without re-tuning when it already holds at least the requested trials; the
build then takes, per kernel, whichever schedule measured faster.

Candidates are built and timed in this process (MetaSchedule's default builder and runner start
worker processes that each import TVM: tens of seconds per batch on 2 cores).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import linecache
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, PyRunner
from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture
from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common, run_evaluator_common

from cepd_deploy.cache import (
    CACHE_ENV,  # noqa: F401 (re-exported for callers and tests)
    cache_root,
    discard,
    ensure_dir,
    figure,
)
from cepd_deploy.errors import CEPDError
from cepd_deploy.ownership import digest
from cepd_deploy.targets.tvm.kernel import Kernel

RESULT = "result.json"
DB_FILES = ("database_workload.json", "database_tuning_record.json")  # MetaSchedule's JSONDatabase
_BUILT: dict[str, tvm.runtime.Module] = {}  # artifact key -> module built in this process
_EVAL = EvaluatorConfig(number=3, repeat=3, min_repeat_ms=20)
MARGIN = 0.95  # a tuned schedule replaces ours only when at least 5% faster
MS_LOGGER = "tvm.s_tir.meta_schedule"  # MetaSchedule's global logger


@derived_object
class InProcessBuilder(PyBuilder):
    """Builds candidates with ``tvm.tirx.build`` in this process; keeps the modules in memory."""

    def build(self, build_inputs):
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        out = []
        for bi in build_inputs:
            try:
                key = f"inproc:{len(_BUILT)}:{time.monotonic_ns()}"
                mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(bi.mod)
                _BUILT[key] = tvm.tirx.build(mod, target=bi.target)
                out.append(BuilderResult(key, None))
            except Exception as exc:  # a candidate that does not compile is a failed trial
                out.append(BuilderResult(None, f"build failed: {exc}"))
        return out


@derived_object
class InProcessRunner(PyRunner):
    """Times built candidates with ``time_evaluator`` on random inputs, in this process."""

    def run(self, runner_inputs):
        dev = tvm.cpu()
        fill = _fill  # not TVM's random fill: random int32 would index the gathers out of bounds
        out = []
        for ri in runner_inputs:
            mod = _BUILT.pop(str(ri.artifact_path), None)
            try:
                args = alloc_argument_common(fill, dev, [a.as_json() for a in ri.args_info], 1)
                out.append(LocalRunnerFuture(res=run_evaluator_common(_module(mod), dev, _EVAL, args)))
            except Exception as exc:
                out.append(LocalRunnerFuture(error_message=f"run failed: {exc}"))
        return out


def _fill(arr) -> None:
    """Floats uniform in [-1, 1]; integers (the scatter's row indices) zero, always in bounds."""
    shape, dtype = tuple(int(v) for v in arr.shape), str(arr.dtype)
    value = np.random.default_rng(0).uniform(-1, 1, shape) if "float" in dtype else np.zeros(shape)
    arr.copyfrom(value.astype(dtype))


def _module(mod):
    return mod.jit() if hasattr(mod, "jit") else mod


def _runnable(func: tvm.tirx.PrimFunc, kernel: Kernel, target):
    """(time evaluator, output after one call) of ``func`` on fixed random inputs."""
    lib = _module(tvm.compile(tvm.IRModule({"main": func}), target=target))
    dev = tvm.cpu()
    args = []
    for t in [*kernel.inputs, *kernel.consts, kernel.output]:
        arr = tvm.runtime.empty([int(s) for s in t.shape], str(t.dtype), dev)
        _fill(arr)
        args.append(arr)
    lib["main"](*args)
    ev = lib.time_evaluator("main", dev, number=_EVAL.number, repeat=1, min_repeat_ms=_EVAL.min_repeat_ms)
    return (lambda: ev(*args).mean), args[-1].numpy()


def measure(funcs: list[tvm.tirx.PrimFunc], kernel: Kernel, target, rounds: int = 5):
    """[(seconds per call, output)] of schedules of ``kernel``, timed in alternating rounds (the
    min of each): a load change on a shared machine then hits all of them alike."""
    runs = [_runnable(f, kernel, target) for f in funcs]
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        best = [min(b, timer()) for b, (timer, _) in zip(best, runs)]
    return [(b, out) for b, (_, out) in zip(best, runs)]


class Tuner:
    """Tunes kernels into the cache and picks, per kernel, the faster schedule at build time."""

    def __init__(self, target, *, root: Path | None = None, log: Callable[[str], None] | None = None) -> None:
        self.target = target
        self.root = root or cache_root("tvm")
        self.log = log or (lambda msg: None)
        self.used = 0  # kernels built with a tuned schedule

    def folder(self, kernel: Kernel) -> Path:
        """The cache folder of (target, workload)."""
        wl = kernel.workload()
        text = json.dumps([str(self.target), tvm.__version__, tvm.ir.save_json(wl)])
        return self.root / hashlib.sha256(text.encode()).hexdigest()[:20]

    def result(self, kernel: Kernel) -> dict | None:
        """The cached result of ``kernel``, or None (not tuned yet). A damaged entry (a result of
        the wrong form, figures that are not finite positive times, a database whose files are not
        the ones the result records) is discarded with a notice, and the kernel is tuned again."""
        folder = self.folder(kernel)
        path = folder / RESULT
        if not path.is_file():
            if _db_damaged(folder):  # a run killed mid-tuning: its records are not trusted either
                discard(folder, "an unfinished or unreadable tuning database", "tuning cache entry")
            return None
        why = _result_damaged(path, folder)
        if why is not None:
            discard(folder, why, "tuning cache entry")
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def tune(self, kernels: list[Kernel], trials: int, uses: Counter | None = None) -> list[dict]:
        """Tune every contraction kernel to at least ``trials`` trials (cached ones are skipped)."""
        uses = uses or Counter()
        todo = sorted((k for k in kernels if k.macs), key=lambda k: -k.macs * max(uses[k.key], 1))
        done = []
        t_all = time.perf_counter()
        for i, k in enumerate(todo, 1):
            res, t0 = self.result(k), time.perf_counter()
            cached = res is not None and res["trials"] >= trials
            if not cached:
                res = self._tune_one(k, trials, res)
            now = time.perf_counter()
            took = "cached" if cached else f"{now - t0:.0f} s, {now - t_all:.0f} s total"
            best = f"best {_us(res['tuned_us'])}, ours {_us(res['hand_us'])}"
            self.log(f"[{i}/{len(todo)}] {k.label}: {res['trials']} trials, {best} ({took})")
            done.append(res)
        return done

    def _tune_one(self, k: Kernel, trials: int, prev: dict | None) -> dict:
        folder = self.folder(k)
        ensure_dir(folder)
        have = prev["trials"] if prev else 0
        self._fresh_trials = trials  # what a retry on an emptied database runs (see _run_metaschedule)
        wl = k.workload()
        load_intrinsics()
        # MetaSchedule logs its tables to a console handler bound to sys.stdout when it sets up
        # logging (each call): keep stdout clean (`--json`); its log files stay in the folder
        try:
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                with _unnamed_handlers_detached():
                    db = self._run_metaschedule(wl, folder, trials - have)
        except Exception as exc:  # MetaSchedule raises TVMError subclasses
            raise CEPDError(f"tuning {k.label} failed: {str(exc).splitlines()[0]}") from exc
        sch = db.query_schedule(tvm.IRModule({"main": wl}), self.target, workload_name="main")
        funcs = [k.scheduled()] + ([sch.mod["main"]] if sch is not None else [])
        (hand, ref), *tuned_run = measure(funcs, k, self.target)
        tuned, ok = float("inf"), False
        if tuned_run:
            # MetaSchedule does not check results; TVM has bugs (e.g. compute_at of a padded copy
            # can drop columns): a schedule that disagrees with ours is never used
            tuned, out = tuned_run[0]
            ok = bool(np.abs(out - ref).max() <= 1e-4 * max(float(np.abs(ref).max()), 1e-30))
            if not ok:
                self.log(f"    {k.label}: the tuned schedule computes wrong results; keeping ours")
        res = {
            "key": k.key,
            "label": k.label,
            "target": str(self.target),
            "trials": trials,
            "hand_us": hand * 1e6,
            "tuned_us": tuned * 1e6 if ok else None,
            "db": {name: digest(folder / name) for name in DB_FILES if (folder / name).is_file()},
        }
        tmp = folder / (RESULT + ".tmp")
        tmp.write_text(json.dumps(res, indent=2))
        os.replace(tmp, folder / RESULT)
        return res

    def _run_metaschedule(self, wl, folder: Path, trials: int):
        try:
            return self._tune_tir(wl, folder, trials)
        except Exception as exc:  # MetaSchedule raises TVMError subclasses
            if not any((folder / name).is_file() for name in DB_FILES):
                raise
            # the database of earlier runs is what it trips over: start this kernel afresh
            discard(folder, f"MetaSchedule cannot read it: {_first_line(exc)}", "tuning cache entry")
            ensure_dir(folder)
            return self._tune_tir(wl, folder, max(trials, getattr(self, "_fresh_trials", trials)))

    def _tune_tir(self, wl, folder: Path, trials: int):
        return ms.tir_integration.tune_tir(
            wl,
            self.target,
            str(folder),
            max_trials_global=trials,
            num_trials_per_iter=min(16, trials),
            builder=InProcessBuilder(),
            runner=InProcessRunner(),
            cost_model="xgb" if _has_xgboost() else "random",
            strategy=_strategy(trials),
            num_tuning_cores=1,
            # the default callbacks also delete artifact folders; ours live in memory
            measure_callbacks=[ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel()],
        )

    def best_prim_func(self, k: Kernel) -> tvm.tirx.PrimFunc:
        """The tuned schedule when the cache says it measured clearly faster than ours (by
        ``MARGIN``: timings on a shared machine jitter), else ours."""
        res = self.result(k) if k.macs else None
        if res is not None and res["tuned_us"] is not None and res["tuned_us"] < MARGIN * res["hand_us"]:
            folder = self.folder(k)
            wl = k.workload()
            try:
                db = ms.database.JSONDatabase(work_dir=str(folder))
                sch = db.query_schedule(tvm.IRModule({"main": wl}), self.target, workload_name="main")
                func = sch.mod["main"] if sch is not None else None
            except Exception as exc:  # TVMError: a database TVM cannot read
                discard(folder, f"MetaSchedule cannot read it: {_first_line(exc)}", "tuning cache entry")
                func = None
            if func is not None:
                self.used += 1
                return func
        return k.scheduled()


@contextlib.contextmanager
def _unnamed_handlers_detached() -> Iterator[None]:
    """Take the host application's unnamed handlers off MetaSchedule's logger while it tunes.

    MetaSchedule rebuilds its logging config on every tuning call from the names of the handlers
    already on its logger (``handler.get_name()``); a handler without a name (pytest's log
    capture, many applications' own) makes that call fail. They are put back afterwards.
    """
    logger = logging.getLogger(MS_LOGGER)
    foreign = [h for h in logger.handlers if not h.get_name()]
    for h in foreign:
        logger.removeHandler(h)
    try:
        yield
    finally:
        for h in foreign:
            logger.addHandler(h)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _db_damaged(folder: Path) -> bool:
    """Whether MetaSchedule's database files in ``folder`` are not all JSON lines (JSON arrays)."""
    for name in DB_FILES:
        path = folder / name
        if not path.exists():
            continue
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip() and not isinstance(json.loads(line), list):
                        return True
        except (OSError, ValueError):
            return True
    return False


def _result_damaged(path: Path, folder: Path) -> str | None:
    """Why a cache folder's result.json cannot be used, or None."""
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{RESULT} is not JSON: {type(exc).__name__}"
    if not isinstance(res, dict):
        return f"{RESULT} is a JSON {type(res).__name__}, not an object"
    trials = res.get("trials")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        return f"{RESULT}: trials {trials!r:.40} is not a positive whole number"
    if not figure(res.get("hand_us"), positive=True):
        return f"{RESULT}: hand_us {res.get('hand_us')!r:.40} is not a finite positive time"
    if res.get("tuned_us") is not None and not figure(res.get("tuned_us"), positive=True):
        return f"{RESULT}: tuned_us {res.get('tuned_us')!r:.40} is not a finite positive time or null"
    db = res.get("db")
    if db is None:  # written before digests were recorded: the files must at least parse
        return "an unreadable tuning database" if _db_damaged(folder) else None
    if not isinstance(db, dict) or not all(isinstance(v, str) for v in db.values()):
        return f"{RESULT}: db is not a table of digests"
    for name in DB_FILES:
        have = (folder / name).is_file()
        if (name in db) != have or (have and digest(folder / name) != db[name]):
            return f"{name} is not the database {RESULT} records"
    return None


def _us(v: float | None) -> str:
    return "invalid" if v is None else f"{v:.1f} us"


def _strategy(trials: int):
    """Evolutionary search, with a population scaled to small budgets (the default 512 takes
    minutes to sample before the first trial)."""
    pop = int(min(512, max(16, 8 * trials)))
    return ms.search_strategy.EvolutionarySearch(
        population_size=pop, init_min_unmeasured=min(50, pop), genetic_num_iters=2 if trials < 64 else 4
    )


@contextlib.contextmanager
def _fast_inspect_stack():
    """``inspect.stack`` without per-frame module lookups, for importing TVM's tensor intrinsics.

    MetaSchedule imports ``tvm.s_tir.tensor_intrin``, which parses ~250 TVMScript functions;
    each calls ``inspect.stack()``, whose cost grows with ``sys.modules`` (minutes with torch
    loaded). TVMScript only reads the frames, their locals and one source line.
    """
    original = inspect.stack

    def stack(context: int = 1):
        frames, f = [], sys._getframe(1)
        while f is not None:
            line = linecache.getline(f.f_code.co_filename, f.f_lineno)
            frames.append(
                inspect.FrameInfo(
                    f,
                    f.f_code.co_filename,
                    f.f_lineno,
                    f.f_code.co_name,
                    [line] if line else None,
                    0 if line else None,
                )
            )
            f = f.f_back
        return frames

    inspect.stack = stack
    try:
        yield
    finally:
        inspect.stack = original


def load_intrinsics() -> None:
    """Import TVM's tensor intrinsics (MetaSchedule needs them) quickly; see above."""
    if "tvm.s_tir.tensor_intrin" not in sys.modules:
        with _fast_inspect_stack():
            import tvm.s_tir.tensor_intrin  # noqa: F401


def _has_xgboost() -> bool:
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return False
    return True
