"""CUDA: the same kernels as plain computes (unpacked weights), scheduled by TVM's dlight rules.

Every PrimFunc must end up with its loops bound to GPU threads; :func:`schedule_module` checks
that none is left unscheduled (which would only fail later, inside ``tvm.compile``).
"""

from __future__ import annotations

from cepd_deploy.errors import CEPDError


def schedule_module(mod, target):
    """Apply dlight's default GPU rules to every PrimFunc of ``mod`` for ``target``."""
    from tvm import tirx
    from tvm.s_tir import dlight as dl

    rules = (dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback())
    with target:
        mod = dl.ApplyDefaultSchedule(*rules)(mod)
    left = [
        gv.name_hint
        for gv, f in mod.functions_items()
        if isinstance(f, tirx.PrimFunc) and not f.attrs.get("tirx.is_scheduled", False)
    ]
    if left:
        raise CEPDError(f"no GPU schedule for kernels: {', '.join(sorted(left))}")
    return mod


def cuda_source(executable) -> str:
    """The CUDA C of a compiled Relax executable's kernels. ``tvm.compile`` stops at source;
    NVRTC or nvcc run only at ``export_library``/``jit``, so this works without the toolkit."""
    out, todo = [], [executable.mod]
    while todo:
        m = todo.pop()
        if m.kind == "cuda":
            out.append(m.inspect_source())
        todo.extend(m.imports)
    return "\n".join(out)
