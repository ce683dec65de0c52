"""The onnxruntime Targets: a Plan exported to ONNX and run by onnxruntime on this CPU.

* ``onnxruntime`` (:class:`Portable`): standard ops only (opset 18);
* ``onnxruntime-fused`` (:class:`Fused`): one ``ai.cepd::TTSparseConv`` node per CEPD layer, run
  by stock onnxruntime through its function body of standard ops;
* ``onnxruntime-native`` (:class:`Native`): the fused export with the custom-op library (or
  onnxruntime-extensions) running those nodes on the native kernel.

Light on purpose: onnx, onnxruntime and the exporters are imported by the verbs.

>>> built = Fused().build(plan, "out/")      # out/model.onnx, checked      # doctest: +SKIP
>>> built.figures["verify"]["max_rel_err"]["plan"]                                  # doctest: +SKIP
>>> run = Native().runner(plan, threads=2, workdir="work/")                         # doctest: +SKIP
>>> y = run(x)                         # numpy in -> numpy out, the Plan's whole batch
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Op, Plan
from cepd_deploy.targets.base import Built, Kind, Runner, Target, option

#: the Plan passes every onnxruntime export runs (applied once, by ``Target.prepare``)
PASSES = ("merge_pointwise",)
#: random inputs a build is checked on against the reference interpreter
VERIFY_SAMPLES = 2


def prepare(plan: Plan) -> Plan:
    """``plan`` after the onnxruntime targets' passes (:data:`PASSES`: an exact rewrite merging
    consecutive 1x1 steps of a layer into one matmul where that saves MACs), verified; raises on
    an op the targets do not run. What the targets' verbs and :func:`export` emit."""
    return Portable().prepare(plan)


def export(plan: Plan, path: str | os.PathLike, fused: bool = False) -> Path:
    """Write the Plan, after :func:`prepare`, as an ONNX file (atomically: no partial file on failure)."""
    from cepd_deploy.targets.onnx.exporter import save, to_model

    path = Path(path)
    if not path.parent.exists():
        raise CEPDError(f"output folder does not exist: {path.parent}")
    return save(to_model(prepare(plan), fused=fused, name=path.stem), path)


def _layer_names(text: str) -> tuple[str, ...]:
    return tuple(n for n in (x.strip() for x in text.split(",")) if n)


@dataclass(frozen=True)
class NativeOptions:
    """Options of ``onnxruntime-native``."""

    standard_layers: tuple[str, ...] = option(
        (), "layers the custom-op library leaves to onnxruntime's own ops, comma-separated (what "
        "export --fused and bench measure and apply on this CPU)", type=_layer_names, metavar="L1,L2")


class Portable(Target):
    """The Plan as standard ONNX ops (opset 18); base of the fused and native targets."""

    name = "onnxruntime"
    kind = Kind.RUNTIME
    summary = "onnxruntime on this CPU: the Plan as standard ONNX ops (portable export)"
    ops = frozenset(Op)
    passes = PASSES
    #: whether the export has one TTSparseConv node per CEPD layer
    fused: ClassVar[bool] = False
    #: whether those nodes run the native kernel (the custom-op library, else onnxruntime-extensions)
    native: ClassVar[bool] = False

    def _build(self, plan: Plan, out: Path, options: Any) -> Built:
        """``out/model.onnx``, written only once onnxruntime's outputs match the reference
        interpreter's (every layer output, max abs error <= 1e-4 x max|y|)."""
        from cepd_deploy.targets.onnx import verify
        from cepd_deploy.targets.onnx.exporter import save
        from cepd_deploy.targets.onnx.fused import OP_TYPE
        from cepd_deploy.targets.onnx.ort_library import is_native

        model = self._model(plan, options, "model")
        checks = verify.compare(plan, model, samples=VERIFY_SAMPLES, native=self.native)
        result = verify.summary(checks)
        worst = result["worst"]
        rel = worst["max_abs_error"] / max(worst["max_abs_ref"], 1e-30)
        result["max_rel_err"] = {"plan": rel}
        fused = [n for n in model.graph.node if n.op_type == OP_TYPE]
        figures = {"target": self.name, "output": None, "format": "onnx", "fused": self.fused,
                   "native": self.native, "nodes": len(model.graph.node), "fused_nodes": len(fused),
                   "native_nodes": sum(map(is_native, fused)), "verify": result,
                   "checks": [c.as_dict() for c in checks]}  # fmt: skip
        kind = "fused" if self.fused else "portable"
        what = f"{kind} ONNX, {len(fused)} TTSparseConv nodes" if self.fused else f"{kind} ONNX"
        if self.native:
            what += f", {figures['native_nodes']} on the native kernel"
        check = (f"  {result['outputs_checked']} outputs checked against the reference interpreter on "
                 f"{VERIFY_SAMPLES} random inputs; worst {worst['value']}: max abs error "
                 f"{worst['max_abs_error']:.3g} / max|y| {worst['max_abs_ref']:.3g} (relative {rel:.3g}): "
                 f"{'OK' if result['ok'] else 'FAILED'}")  # fmt: skip
        if not result["ok"]:
            problem = (f"onnxruntime differs from the reference interpreter at {worst['value']}: "
                       f"max relative error {rel:.3g} > {verify.RTOL:g}")  # fmt: skip
            return Built(figures, f"not written: {out / 'model.onnx'} ({what})\n{check}", False, problem)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CEPDError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
        path = save(model, out / "model.onnx")
        figures["output"] = str(path)
        return Built(figures, f"wrote {path} ({what})\n{check}")

    def _model(self, plan: Plan, options: Any, name: str):
        """The ONNX model this target writes for ``plan``."""
        from cepd_deploy.targets.onnx.exporter import to_model

        return to_model(plan, fused=self.fused, name=name)

    def _runner(self, plan: Plan, threads: int, workdir: Path, options: Any) -> Runner:
        """Export into a new folder under ``workdir``; a session with ``threads`` intra-op threads
        (and as many for the native kernel's pool)."""
        import tempfile

        from cepd_deploy.targets.onnx.exporter import save
        from cepd_deploy.targets.onnx.session import build_session, run_session

        try:
            workdir.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=workdir))
        except OSError as exc:
            raise CEPDError(f"cannot create an export folder in {workdir}: {exc.strerror or exc}") from None
        path = save(self._model(plan, options, "m"), folder / "m.onnx")
        sess = build_session(path, threads, native=self.native)

        def run(x):
            return run_session(sess, x)

        return run


class Fused(Portable):
    """One TTSparseConv node per CEPD layer; stock onnxruntime runs its function body."""

    name = "onnxruntime-fused"
    summary = "onnxruntime on this CPU: one TTSparseConv node per CEPD layer, run as its function body"
    fused = True


class Native(Fused):
    """The fused export with its TTSparseConv nodes on the native kernel (the custom-op library,
    else onnxruntime-extensions); layers the kernel does not run keep their function body."""

    name = "onnxruntime-native"
    summary = "onnxruntime on this CPU with the CEPD layers on our native kernel (custom-op library)"
    native = True
    Options = NativeOptions

    def _model(self, plan: Plan, options: Any, name: str):
        """The fused model, marked to leave ``options.standard_layers`` to onnxruntime's own ops."""
        from cepd_deploy.targets.onnx.ort_library import mark_standard

        return mark_standard(super()._model(plan, options, name), options.standard_layers)
