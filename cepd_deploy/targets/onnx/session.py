"""onnxruntime session helpers: thread settings that make side-by-side timings fair."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cepd_deploy.errors import CEPDError


def session_options(threads: int | None = None, *, spinning: bool = False, optimize: bool = True):
    """SessionOptions with ``threads`` intra-op threads (default: onnxruntime's choice).

    Spinning is off by default: when several sessions live in one process, idle spinning
    threads steal the cores of the one being timed.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        from cepd_deploy.threads import clamp

        so.intra_op_num_threads = clamp(threads, "onnxruntime threads")
        so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


def build_session(model, threads: int | None = None, *, spinning: bool = False, optimize: bool = True,
                  native: bool | str = False, profile: str | Path | None = None):  # fmt: skip
    """An ``onnxruntime.InferenceSession`` on the CPU for a path or a ModelProto.

    With ``native``, the fused model's TTSparseConv nodes run the native kernel on ``threads``
    threads of its own: through the custom-op library (:mod:`~cepd_deploy.targets.onnx.ort_library`)
    where it is built, else through onnxruntime-extensions (:mod:`~cepd_deploy.targets.onnx.ort_native`);
    ``native="library"`` / ``"extensions"`` picks one. The session's ``cepd_native`` names the path
    taken and ``cepd_native_layers`` lists the natively run layers (node names on the library path,
    the NativeLayer objects, kept alive with the session, on the extensions path). With ``profile``
    (a folder), onnxruntime profiles every node there (``sess.end_profiling()`` gives the file).

    >>> sess = build_session("model.onnx", threads=2)          # doctest: +SKIP
    """
    import onnxruntime as ort

    so = session_options(threads, spinning=spinning, optimize=optimize)
    if profile is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(profile) / "ort")
    layers: list = []
    how = _native_path(native)
    if how:
        import onnx

        model = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    if how == "library":
        from cepd_deploy.targets.onnx import ort_library

        so.register_custom_ops_library(ort_library.get_library_path())
        model = ort_library.native_model(model)
        layers = [n.name for n in model.graph.node if ort_library.is_native(n)]
        if threads:
            ort_library.set_threads(threads)
    elif how == "extensions":
        from cepd_deploy.native.library import set_threads
        from cepd_deploy.targets.onnx.ort_native import library_path, native_model

        so.register_custom_ops_library(library_path())
        model, layers = native_model(model)
        if threads:
            set_threads(threads)
    src = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    try:
        sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        sess.cepd_native = how
        sess.cepd_native_layers = layers  # the kernels live as long as the session
        return sess
    except Exception as exc:  # onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CEPDError(f"onnxruntime cannot load the model: {first}") from None


def _native_path(native: bool | str) -> str | None:
    if native in (False, None, ""):
        return None
    if native not in (True, "library", "extensions"):
        raise CEPDError(f"native must be a bool, 'library' or 'extensions', not {native!r}")
    if native is True:
        from cepd_deploy.targets.onnx import ort_library

        return "library" if ort_library.available() else "extensions"
    return native


def run_session(sess, x: np.ndarray) -> np.ndarray:
    """Run a one-input, one-output session."""
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]
