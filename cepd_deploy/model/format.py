"""The CEPD model file: ``save`` / ``load`` (``torch.load(weights_only=True)`` only).

A file is a dict of plain types and tensors::

    {"format": "cepd-model", "version": 1,
     "arch": {"name": "resnet50", "kwargs": {...}} or None,   # None: a user's own network
     "input_shape": [3, 224, 224] or None,
     "layers": {module name: CEPDConv2d.meta()},               # which convs are CEPD convs
     "state_dict": {...}, "info": {...}}
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from cepd_deploy.errors import CEPDError
from cepd_deploy.model.layers import CEPDConv2d

FORMAT = "cepd-model"
VERSION = 1
_META_KEYS = {
    "in_channels": int, "out_channels": int, "kernel_size": list, "layout": str,
    "o_factors": list, "i_factors": list, "ranks": list, "kappa": int, "stride": list,
    "padding": list, "dilation": list, "bias": bool,
}  # fmt: skip


def save(
    model: nn.Module,
    path: str | Path,
    *,
    input_shape: tuple[int, ...] | None = None,
    info: dict | None = None,
) -> Path:
    """Write ``model`` atomically (temporary file, then rename): nothing partial is left behind."""
    path = Path(path)
    arch = getattr(model, "cepd_arch", None)
    layers = {n: m.meta() for n, m in model.named_modules() if isinstance(m, CEPDConv2d)}
    if input_shape is None and arch is not None:
        from cepd_deploy.model.zoo import input_shape as zoo_shape

        input_shape = zoo_shape(arch["name"])
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": dict(arch) if arch else None,
        "input_shape": list(input_shape[-3:]) if input_shape else None,
        "layers": layers,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "info": dict(info or {}),
    }
    atomic_write(path, lambda f: torch.save(payload, f))
    return path


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    if not path.parent.is_dir():
        raise CEPDError(f"output folder does not exist: {path.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: str | Path) -> dict:
    """Read and validate a model file's payload (no model is built)."""
    path = Path(path)
    if not path.is_file():
        raise CEPDError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            zip_start = f.read(4) == b"PK\x03\x04"
        if zip_start:
            raise CEPDError(f"{path}: not a readable CEPD model file (truncated or corrupt archive)")
        raise CEPDError(f"{path}: not a CEPD model file (not a torch zip archive)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [x.strip() for x in str(exc).splitlines() if "Unsupported" in x or "error:" in x]
        why = lines[0][:160] if lines else "objects outside the safe set"
        raise CEPDError(f"{path}: refused: holds code or objects a safe load forbids ({why})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CEPDError(f"{path}: not a readable CEPD model file (truncated or corrupt: {reason})") \
            from None
    _validate(path, data)
    return data


def _validate(path: Path, data) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CEPDError(f"{path}: not a CEPD model file (format tag missing)")
    version = data.get("version")
    if not isinstance(version, int) or not 1 <= version <= VERSION:
        raise CEPDError(f"{path}: unknown CEPD model file version {version!r} (reads 1..{VERSION})")
    for key, kind in (("layers", dict), ("state_dict", dict)):
        if not isinstance(data.get(key), kind):
            raise CEPDError(f"{path}: field {key!r} missing or malformed")
    arch = data.get("arch")
    if arch is not None and not (isinstance(arch, dict) and isinstance(arch.get("name"), str)
                                 and isinstance(arch.get("kwargs", {}), dict)):  # fmt: skip
        raise CEPDError(f"{path}: field 'arch' malformed")
    for name, meta in data["layers"].items():
        if not isinstance(meta, dict):
            raise CEPDError(f"{path}: metadata of layer {name!r} malformed")
        for key, kind in _META_KEYS.items():
            if not isinstance(meta.get(key), kind):
                raise CEPDError(f"{path}: metadata of layer {name!r} lacks a valid {key!r}")
    for key, value in data["state_dict"].items():
        if not isinstance(value, torch.Tensor):
            raise CEPDError(f"{path}: state entry {key!r} is not a tensor")


def load(path: str | Path, template: nn.Module | None = None) -> nn.Module:
    """Rebuild a CEPD model: the zoo architecture named in the file, or ``template``.

    ``template`` is a user's own network (its dense convs are replaced by the file's CEPD
    layers). Tensors are checked against the metadata; the model is returned in eval mode.
    """
    path = Path(path)
    data = read(path)
    if template is not None:
        import copy

        model = copy.deepcopy(template)
    elif data["arch"] is not None:
        from cepd_deploy.model.zoo import build_model

        model = build_model(data["arch"]["name"], **data["arch"].get("kwargs", {}))
    else:
        raise CEPDError(f"{path}: holds a custom network; load it with template=<your module>")
    for name, meta in data["layers"].items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise CEPDError(f"{path}: layer {name!r} does not exist in the architecture") from None
        if not isinstance(old, (nn.Conv2d, CEPDConv2d)) or (old.in_channels, old.out_channels) != (
            meta["in_channels"], meta["out_channels"]):  # fmt: skip
            raise CEPDError(f"{path}: layer {name!r} contradicts the architecture")
        try:
            new = CEPDConv2d.from_meta(meta)
        except (TypeError, ValueError) as exc:
            raise CEPDError(f"{path}: metadata of layer {name!r} invalid ({exc})") from None
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    state = data["state_dict"]
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing:
        raise CEPDError(f"{path}: tensor {missing[0]!r} missing ({len(missing)} in all)")
    if extra:
        raise CEPDError(f"{path}: unexpected tensor {extra[0]!r} ({len(extra)} in all)")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CEPDError(
                f"{path}: tensor {key!r} has shape {tuple(value.shape)}, the metadata implies "
                f"{tuple(own[key].shape)}"
            )
    model.load_state_dict(state, strict=True)
    if data["arch"] is not None:
        model.cepd_arch = dict(data["arch"])
    if data.get("input_shape"):
        model.cepd_input_shape = tuple(int(s) for s in data["input_shape"])
    for m in model.modules():
        if isinstance(m, CEPDConv2d):
            index = m.s_index.tolist()
            if len(set(index)) != m.spec.kappa or any(not 0 <= i < m.out_channels for i in index):
                raise CEPDError(f"{path}: sparse filter indices out of range or repeated")
    return model.eval()


def resolve(model_arg: str, input_shape=None) -> tuple[nn.Module, tuple[int, ...], str]:
    """A CLI MODEL argument (a model file or a zoo name) -> (model, (1, C, H, W), label)."""
    from cepd_deploy.model.zoo import ZOO, build_model
    from cepd_deploy.model.zoo import input_shape as zoo_shape

    if model_arg in ZOO and not Path(model_arg).exists():
        model = build_model(model_arg).eval()
        shape = zoo_shape(model_arg)
    elif not Path(model_arg).exists():
        raise CEPDError(f"{model_arg!r} is neither a model file nor a zoo model ({', '.join(ZOO)})")
    else:
        model = load(model_arg)
        shape = getattr(model, "cepd_input_shape", None)
        if shape is None:
            raise CEPDError(f"{model_arg}: the file records no input shape")
    if input_shape is not None:
        shape = tuple(input_shape)[-3:]
    return model, (1, *shape), Path(model_arg).stem if Path(model_arg).exists() else model_arg
