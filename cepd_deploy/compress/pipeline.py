"""The ``compress`` pipeline: dense baseline -> ADMM -> compact CEPD model -> fine-tuning.

Every epoch ends with a checkpoint (model, optimizer, scheduler, ADMM state, RNG states and
the log so far; tensors and plain types only, read back with ``weights_only=True``), so a
killed run resumed with ``resume=True`` ends with the same weights as an uninterrupted one.
The model file is written atomically at the very end; the checkpoint is then removed.

>>> result = compress(CompressConfig(arch="resnet20", flops_remaining=0.5, output="m.pt"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cepd_deploy.compress import dist as D
from cepd_deploy.compress.admm import (
    ADMM,
    cepd_structure,
    layer_specs,
    split_structure,
    to_cepd,
    to_split,
)
from cepd_deploy.compress.config import CompressConfig  # noqa: F401  (re-exported)
from cepd_deploy.compress.data import Data, load_data
from cepd_deploy.compress.log import RunLog, plot_curves
from cepd_deploy.compress.train import (
    dense_rebuild,
    evaluate,
    optimizer,
    steps_per_epoch,
    train_epoch,
)
from cepd_deploy.errors import CEPDError
from cepd_deploy.files import atomic_write
from cepd_deploy.model.format import load, save
from cepd_deploy.model.layers import CEPDConv2d
from cepd_deploy.untrusted import brief

PHASES = ("baseline", "admm", "finetune")
CHECKPOINT_FORMAT = "cepd-compress-checkpoint"
_NOT_COMPARED = {"resume", "workers", "threads"}  # settings a resumed run may change


def side_paths(output: str | Path) -> dict[str, Path]:
    """The files a run writes next to its output: the checkpoint (removed when the run ends) and
    the JSON-lines log."""
    out = Path(output)
    return {"checkpoint": out.with_name(out.name + ".ckpt"), "log": out.with_suffix(".log.jsonl")}


def compress(
    cfg: CompressConfig,
    *,
    model_fn: Callable[[], nn.Module] | None = None,
    on_epoch_end: Callable[[str, int], None] | None = None,
    progress: bool = True,
) -> dict:
    """Run the pipeline; returns the headline figures (accuracies in percent).

    ``model_fn`` builds the dense network (default: the zoo's ``cfg.arch``); it is called
    after seeding, so its initial weights depend only on ``cfg.seed``. ``on_epoch_end(phase,
    epoch)`` runs after each epoch's checkpoint (tests use it to interrupt a run).
    """
    cfg.validate()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = D.init()
    try:
        return _Run(cfg, d, model_fn, on_epoch_end, progress).execute()
    finally:
        D.shutdown(d)
        torch.set_num_threads(threads)


class _Run:
    def __init__(self, cfg, d: D.Dist, model_fn, hook, progress: bool) -> None:
        self.cfg, self.d, self.model_fn, self.hook, self.progress = cfg, d, model_fn, hook, progress
        self.out = Path(cfg.output)
        if not self.out.parent.is_dir():
            raise CEPDError(f"output folder does not exist: {self.out.parent}")
        self.paths = side_paths(self.out)
        self.extra: dict = {}

    # -- the phases ------------------------------------------------------------------------
    def execute(self) -> dict:
        cfg, d = self.cfg, self.d
        start = time.time()
        torch.manual_seed(cfg.seed)
        self.data: Data = load_data(cfg.data, image_size=cfg.image_size, train_limit=cfg.train_limit,
                                    test_limit=cfg.test_limit)  # fmt: skip
        dense = self._dense_model()
        self.shape = (1, *self.data.shape)
        state = self._read_checkpoint(dense) if cfg.resume else None
        self.log = RunLog(self.paths["log"] if d.main else None, state["records"] if state else [])
        self.extra = dict(state["extra"]) if state else {}
        phase = state["phase"] if state else "baseline"

        if phase == "baseline":
            if cfg.weights:
                dense = _load_dense(cfg.weights, dense)
            else:
                self._train("baseline", dense, state)
            state = None
            model = self._begin_admm(dense)
        elif phase == "admm":
            model = split_structure(dense, self.extra["metas"])
        else:
            model = cepd_structure(dense, self.extra["metas"])

        if phase in ("baseline", "admm"):
            admm = ADMM(model, self.extra["metas"])
            self._train("admm", model, state, admm)
            state = None
            model = to_cepd(model, self.extra["metas"])
            self.extra["admm_accuracy"] = evaluate(model, self.data, cfg.batch_size, d)
            self.log.add(event="admm_done", accuracy=self.extra["admm_accuracy"])
        self._train("finetune", model, state)
        return self._finish(model, time.time() - start)

    def _begin_admm(self, dense: nn.Module) -> nn.Module:
        cfg, d = self.cfg, self.d
        base = evaluate(dense, self.data, cfg.batch_size, d)
        if cfg.baseline_out and d.main:
            save(dense, cfg.baseline_out, input_shape=self.data.shape,
                 info={"accuracy": base, "data": self.data.name})  # fmt: skip
        metas, direct = layer_specs(dense, **cfg.goal(), input_shape=self.shape)
        if not metas:
            raise CEPDError("the target leaves no conv to compress (every layer stays dense)")
        self.extra.update(baseline_accuracy=base, metas=metas,
                          direct_accuracy=evaluate(direct, self.data, cfg.batch_size, d))  # fmt: skip
        self.log.add(event="baseline", accuracy=base, direct_accuracy=self.extra["direct_accuracy"],
                     layers=len(metas))  # fmt: skip
        return to_split(dense, metas)

    def _train(self, phase: str, model: nn.Module, state: dict | None, admm: ADMM | None = None) -> None:
        from tqdm import tqdm

        cfg, d = self.cfg, self.d
        sched = cfg.schedule(phase)
        steps = steps_per_epoch(self.data, cfg.batch_size, d)
        opt, lr_sched = optimizer(model, sched, sched.epochs * steps)
        first = 0
        if state is not None and state["phase"] == phase:
            try:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                lr_sched.load_state_dict(state["scheduler"])
                if admm is not None:
                    admm.load_state_dict(state["admm"])
                _set_rng(state["rng"], d)
            except CEPDError:
                raise
            except Exception as exc:  # a checkpoint edited or torn in a way the checks above miss
                first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
                raise CEPDError(
                    f"{self.paths['checkpoint']}: checkpoint does not fit this run ({first})"
                ) from None
            first = int(state["epoch"])
        net = D.wrap(model, d)  # DDP also gives every rank rank 0's parameters and buffers
        if admm is not None:
            D.broadcast(admm.tensors(), d)
        bar = tqdm(total=sched.epochs * steps, initial=first * steps, desc=phase, leave=True,
                   disable=not (self.progress and d.main), dynamic_ncols=True)  # fmt: skip
        seed = cfg.seed * len(PHASES) + PHASES.index(phase)
        status = ""
        for epoch in range(first, sched.epochs):
            t0 = time.time()
            lam = cfg.penalty.at(epoch) if admm is not None else 0.0
            with dense_rebuild(model):
                stats = train_epoch(net, self.data, opt, lr_sched, epoch=epoch, seed=seed,
                                    batch_size=cfg.batch_size, d=d, admm=admm, lam=lam,
                                    project_every=cfg.project_every, bar=bar, status=status)  # fmt: skip
            D.sync_buffers(model, d)
            acc = evaluate(model, self.data, cfg.batch_size, d)
            rec = dict(phase=phase, epoch=epoch, **stats, test_acc=acc, lr=lr_sched.get_last_lr()[0])
            status = f"epoch {epoch + 1}/{sched.epochs} test acc {acc:.2f}"
            if admm is not None:
                res_l, res_s = admm.residuals()
                rec.update({"lambda": lam, "res_L": res_l, "res_S": res_s})
                status += f" |L-L^| {res_l:.3g} |S-S^| {res_s:.3g}"
            rec["time_s"] = round(time.time() - t0, 3)
            self.log.add(**rec)
            bar.set_postfix_str(f"loss {stats['loss']:.3f} {status}")
            self._write_checkpoint(phase, epoch + 1, model, opt, lr_sched, admm)
            if self.hook is not None:
                self.hook(phase, epoch)
        bar.close()
        if d.enabled:
            extra = admm.tensors() if admm is not None else ()
            self.log.add(event="sync", phase=phase, digests=D.gather_digests(model, d, extra))

    def _finish(self, model: nn.Module, wall_s: float) -> dict:
        from cepd_deploy.frontend.lower import lower
        from cepd_deploy.plan.cost import totals

        cfg, d = self.cfg, self.d
        acc = evaluate(model, self.data, cfg.batch_size, d)
        t = totals(lower(model.eval(), self.shape))
        result = {
            "output": str(self.out), "log": str(self.paths["log"]), "plot": cfg.plot,
            "data": self.data.name, "train_images": len(self.data.train), "test_images": len(self.data.test),
            "baseline_accuracy": self.extra["baseline_accuracy"],
            "direct_accuracy": self.extra["direct_accuracy"],
            "admm_accuracy": self.extra["admm_accuracy"], "accuracy": acc,
            "flops_remaining": t["flops_remaining"], "params_remaining": t["params_remaining"],
            "macs": t["macs"], "params": t["params"], "dense_macs": t["dense_macs"],
            "dense_params": t["dense_params"], "layers": len(self.extra["metas"]),
            "epochs": {p: cfg.schedule(p).epochs for p in PHASES}, "world_size": d.world,
            "train_s": round(sum(r.get("time_s", 0.0) for r in self.log.records), 1),
            "wall_s": round(wall_s, 1),
        }  # fmt: skip
        self.log.add(event="done", **{k: v for k, v in result.items() if k not in ("output", "log", "plot")})
        result["main_process"] = d.main
        if d.main:
            info = {k: result[k] for k in ("data", "baseline_accuracy", "accuracy", "flops_remaining",
                                            "params_remaining")}  # fmt: skip
            save(model, self.out, input_shape=self.data.shape, info=info)
            if cfg.plot:
                plot_curves(self.log.records, Path(cfg.plot))
            self.paths["checkpoint"].unlink(missing_ok=True)
        D.barrier(d)
        return result

    # -- models ----------------------------------------------------------------------------
    def _dense_model(self) -> nn.Module:
        if self.model_fn is not None:
            return self.model_fn()
        from cepd_deploy.model.zoo import ZOO, build_model, input_shape

        if self.cfg.arch not in ZOO:
            raise CEPDError(f"unknown model {self.cfg.arch!r}; valid names: {', '.join(ZOO)}")
        kwargs = {} if ZOO[self.cfg.arch].num_classes == self.data.num_classes else {
            "num_classes": self.data.num_classes}  # fmt: skip
        want = input_shape(self.cfg.arch)
        if tuple(want) != tuple(self.data.shape):
            raise CEPDError(f"{self.cfg.arch} takes {want} inputs but --data {self.cfg.data} gives "
                            f"{self.data.shape} (use --image-size for image folders)")  # fmt: skip
        return build_model(self.cfg.arch, **kwargs)

    # -- checkpoints -----------------------------------------------------------------------
    def _settings(self) -> dict:
        return {k: v for k, v in asdict(self.cfg).items() if k not in _NOT_COMPARED}

    def _write_checkpoint(self, phase, epoch, model, opt, lr_sched, admm) -> None:
        rng = _rng_states(self.d)
        if self.d.main:
            payload = {
                "format": CHECKPOINT_FORMAT, "version": 1, "settings": self._settings(),
                "phase": phase, "epoch": epoch, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": lr_sched.state_dict(),
                "admm": admm.state_dict() if admm is not None else None, "rng": rng,
                "records": self.log.records, "extra": self.extra,
            }  # fmt: skip
            atomic_write(self.paths["checkpoint"], lambda f: torch.save(payload, f))
        D.barrier(self.d)

    def _read_checkpoint(self, dense: nn.Module) -> dict | None:
        path = self.paths["checkpoint"]
        if not path.is_file():
            if self.out.exists():
                raise CEPDError(f"--resume: {self.out} is complete (no checkpoint {path.name} beside it); "
                                "nothing to resume: drop --resume to train it again")  # fmt: skip
            if self.d.main:
                _say(f"no checkpoint at {path}; starting from the beginning")
            return None
        if path.stat().st_size == 0:
            raise CEPDError(f"{path}: empty checkpoint (0 bytes): delete it or drop --resume")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file: explain in one line
            first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            raise CEPDError(f"{path}: unreadable checkpoint ({first})") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CEPDError(f"{path}: not a compress checkpoint")
        _check_checkpoint(path, state)
        _check_metas(path, state["extra"].get("metas", {}), dense)
        old, new = state["settings"], self._settings()
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                raise CEPDError(f"{path} was written with {key}={brief(old.get(key))}, this run has "
                                f"{brief(new.get(key))}: match it or drop --resume")  # fmt: skip
        phase, epoch = state["phase"], state["epoch"]
        epochs = self.cfg.schedule(phase).epochs
        if not 0 <= epoch <= epochs:
            raise CEPDError(f"{path}: epoch {epoch} is outside phase {phase}'s 0..{epochs}")
        if self.d.main:
            where = (f"epoch {epoch + 1} of {epochs} of phase {phase}" if epoch < epochs
                     else f"the end of phase {phase} ({_plural(epochs, 'epoch')} done)")  # fmt: skip
            _say(f"resuming from {where} (checkpoint {path})")
        return state


def _check_checkpoint(path: Path, state: dict) -> None:
    """The checkpoint's fields have the types a run writes (one-line errors, nothing is run)."""
    kinds = {"version": int, "settings": dict, "phase": str, "epoch": int, "model": dict,
             "optimizer": dict, "scheduler": dict, "rng": dict, "records": list, "extra": dict}  # fmt: skip
    for key, kind in kinds.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CEPDError(f"{path}: incomplete checkpoint (field {key!r} missing or malformed)")
    if state["version"] != 1:
        raise CEPDError(f"{path}: unknown checkpoint version {brief(state['version'])} (reads 1)")
    if state["phase"] not in PHASES:
        raise CEPDError(f"{path}: unknown phase {brief(state['phase'])}")
    if state["phase"] == "admm" and not isinstance(state.get("admm"), dict):
        raise CEPDError(f"{path}: incomplete checkpoint (field 'admm' missing or malformed)")
    if state["phase"] != "baseline" and not isinstance(state["extra"].get("metas"), dict):
        raise CEPDError(f"{path}: incomplete checkpoint (no layer metadata after the baseline)")
    if not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise CEPDError(f"{path}: incomplete checkpoint (a model entry is not a tensor)")
    try:
        json.dumps(state["records"], allow_nan=True)
        json.dumps(state["extra"], allow_nan=True)
    except (TypeError, ValueError):
        raise CEPDError(f"{path}: malformed checkpoint (log or metadata not plain data)") from None


def _check_metas(path: Path, metas: dict, dense: nn.Module) -> None:
    """Each layer's metadata is valid and names a conv of the dense model with its shape, so the
    CEPD layers built from it are no larger than that conv's factors (nothing huge is built)."""
    from cepd_deploy.model.format import validate_layer_meta

    for name, meta in metas.items():
        if not isinstance(name, str):
            raise CEPDError(f"{path}: layer name {brief(name)} is not a module name")
        validate_layer_meta(path, name, meta)
        try:
            conv = dense.get_submodule(name)
        except AttributeError:
            conv = None
        if not isinstance(conv, nn.Conv2d) or [conv.in_channels, conv.out_channels, *conv.kernel_size,
                                                *conv.stride, *conv.padding, *conv.dilation] != [
                meta["in_channels"], meta["out_channels"], *meta["kernel_size"], *meta["stride"],
                *meta["padding"], *meta["dilation"]]:  # fmt: skip
            raise CEPDError(f"{path}: layer {brief(name)} of the checkpoint is not a conv of this model")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _say(message: str) -> None:
    """A notice on stderr (stdout may carry --json)."""
    import sys

    print(f"cepd-deploy: {message}", file=sys.stderr)


def _load_dense(path: str, template: nn.Module) -> nn.Module:
    model = load(path, template=template).train()
    if any(isinstance(m, CEPDConv2d) for m in model.modules()):
        raise CEPDError(f"{path}: --weights needs a dense model file, this one holds CEPD layers")
    if hasattr(template, "cepd_arch"):
        model.cepd_arch = template.cepd_arch
    return model


def _rng_states(d: D.Dist) -> dict:
    """Every rank's torch RNG state, and this process's numpy and Python states."""
    mine = torch.get_rng_state()
    states = [mine]
    if d.enabled:
        import torch.distributed as dist

        states = [None] * d.world
        dist.all_gather_object(states, mine)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": states, "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                       int(has_gauss), float(cached)],
            "python": random.getstate()}  # fmt: skip


def _set_rng(rng: dict, d: D.Dist) -> None:
    states = rng["torch"]
    torch.set_rng_state(states[d.rank] if d.rank < len(states) else states[0])
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(rng["python"])

