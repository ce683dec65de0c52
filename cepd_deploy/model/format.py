"""The CEPD model file: ``save`` / ``load`` (``torch.load(weights_only=True)`` only).

A file is a dict of plain types and tensors::

    {"format": "cepd-model", "version": 1,
     "arch": {"name": "resnet50", "kwargs": {...}} or None,   # None: a user's own network
     "network": {"ref": "pkg.nets:make_net", "kwargs": {...}},  # only for a user's network named
                                                               # by reference (model/reference.py)
     "input_shape": [3, 224, 224] or None,
     "layers": {module name: CEPDConv2d.meta()},               # which convs are CEPD convs
     "state_dict": {...}, "info": {...}}

A user's network is rebuilt from its recorded reference (its code imported, never unpickled) only
with the user's consent (``trust_code``), or put into a template the user names.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from cepd_deploy.errors import CEPDError
from cepd_deploy.files import atomic_write
from cepd_deploy.model import reference
from cepd_deploy.model.layers import CEPDConv2d
from cepd_deploy.model.reference import Reference
from cepd_deploy.untrusted import brief, clip

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
    network = None if arch else getattr(model, "cepd_network", None)
    if network is not None:  # what read() accepts: a well-formed reference and plain JSON arguments
        reference.parse(network["ref"])
        network = {"ref": network["ref"], "kwargs": reference.check_args(network.get("kwargs") or {})}
    layers = {n: m.meta() for n, m in model.named_modules() if isinstance(m, CEPDConv2d)}
    if input_shape is None and arch is not None:
        from cepd_deploy.model.zoo import input_shape as zoo_shape

        input_shape = zoo_shape(arch["name"])
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": dict(arch) if arch else None,
        "input_shape": [int(s) for s in input_shape[-3:]] or None if input_shape is not None else None,
        "layers": layers,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "info": dict(info or {}),
    }
    if network is not None:  # only then: a zoo model's file stays what it was
        payload["network"] = network
    if not _plain(payload["info"], MAX_PLAIN_NODES, 32):  # read() would refuse the file
        raise CEPDError("model info must be plain data (numbers, text, lists, dicts)")
    atomic_write(path, lambda f: torch.save(payload, f))
    return path


#: limits of a model file's metadata: far beyond any real network, they keep every check cheap
MAX_CHANNELS = 1 << 20
MAX_KERNEL = 1024  # kernel, stride, padding and dilation entries
MAX_RANK = 1 << 16
MAX_FACTORS = 16  # factors of O or I, and ranks, per layer
MAX_IMAGE = 1 << 14  # input height and width
MAX_TENSORS = 100_000
MAX_PLAIN_NODES = 100_000  # values in arch/info (a pickle may share one list many times over)
MAX_ARCH_INT = 1 << 24  # arch.kwargs integers (e.g. num_classes); tensor shapes are checked too


def read(path: str | Path, *, check_values: bool = True) -> dict:
    """Read and validate a model file's payload (no model is built).

    Tensors are memory-mapped, not copied. The metadata is checked for types and ranges, and
    (with ``check_values``) every floating tensor for NaN/Inf and BN variances for sign.
    """
    path = Path(path)
    if not path.is_file():
        raise CEPDError(f"model file not found: {path}")
    _check_archive(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        lines = [x.strip() for x in str(exc).splitlines() if "Unsupported" in x or "error:" in x]
        why = lines[0][:160] if lines else "objects outside the safe set"
        raise CEPDError(f"{path}: refused: holds code or objects a safe load forbids ({why})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, TypeError,
            AttributeError, IndexError, OverflowError, MemoryError, RecursionError) as exc:  # fmt: skip
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CEPDError(f"{path}: not a readable CEPD model file (truncated or corrupt: {reason})") from None
    _validate(path, data)
    if check_values:
        check_tensor_values(path, data["state_dict"])
    return data


def _check_archive(path: Path) -> None:
    """A torch zip archive whose entries are stored, not compressed: what it holds in memory is
    then bounded by the file's own size (no zip bomb), before any entry is read."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if not head:
            raise CEPDError(f"{path}: not a CEPD model file (empty file)")
        zip_start = head == b"PK\x03\x04"
        if not zipfile.is_zipfile(path):
            if zip_start:
                raise CEPDError(f"{path}: not a readable CEPD model file (truncated or corrupt archive)")
            raise CEPDError(f"{path}: not a CEPD model file (not a torch zip archive)")
        with zipfile.ZipFile(path) as zf:
            entries = zf.infolist()
    except CEPDError:
        raise
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        why = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0][:120] or type(exc).__name__
        raise CEPDError(f"{path}: cannot read the model file ({why})") from None
    size = path.stat().st_size
    if len(entries) > MAX_TENSORS + 16:
        raise CEPDError(f"{path}: refused: {len(entries)} archive entries")
    for e in entries:
        if e.compress_type != zipfile.ZIP_STORED or e.file_size > size:
            raise CEPDError(f"{path}: refused: archive entry {brief(e.filename)} is compressed or larger "
                            "than the file (torch stores tensors uncompressed)")  # fmt: skip


def check_tensor_values(path: str | Path, state: dict) -> None:
    """Refuse NaN/Inf in floating tensors and negative BatchNorm variances (one-line errors)."""
    for key, value in state.items():
        if value.is_floating_point() or value.is_complex():
            if not bool(torch.isfinite(value).all()):
                bad = int((~torch.isfinite(value)).sum())
                raise CEPDError(f"{path}: tensor {brief(key)} holds {bad} NaN/Inf value(s); refused")
            if key.endswith("running_var") and bool((value < 0).any()):
                raise CEPDError(f"{path}: tensor {brief(key)} has negative BatchNorm variances; refused")


def _validate(path: Path, data) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CEPDError(f"{path}: not a CEPD model file (format tag missing)")
    version = data.get("version")
    if type(version) is not int or not 1 <= version <= VERSION:
        raise CEPDError(f"{path}: unknown CEPD model file version {brief(version)} (reads 1..{VERSION})")
    for key, kind in (("layers", dict), ("state_dict", dict)):
        if not isinstance(data.get(key), kind):
            raise CEPDError(f"{path}: field {key!r} missing or malformed")
    for key in ("arch", "input_shape", "info"):
        if not _plain(data.get(key), MAX_PLAIN_NODES, 32):
            raise CEPDError(f"{path}: field {key!r} is not plain data of a sane size")
    if not isinstance(data.get("info", {}), dict):
        raise CEPDError(f"{path}: field 'info' malformed")
    _validate_arch(path, data.get("arch"))
    _validate_network(path, data)
    shape = data.get("input_shape")
    if shape is not None and not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(
            type(s) is int and 1 <= s <= (MAX_CHANNELS if i == 0 else MAX_IMAGE)
            for i, s in enumerate(shape))):  # fmt: skip
        raise CEPDError(f"{path}: field 'input_shape' must be [C, H, W] (positive integers, H and W at "
                        f"most {MAX_IMAGE}), got {brief(shape)}")  # fmt: skip
    state = data["state_dict"]
    if len(state) > MAX_TENSORS or len(data["layers"]) > len(state):
        raise CEPDError(f"{path}: refused: {len(state)} tensors, {len(data['layers'])} CEPD layers")
    for key, value in state.items():
        if not isinstance(key, str) or not key.isprintable() or len(key) > 1000:
            raise CEPDError(f"{path}: state entry {brief(key)} is not a module name")
        if not isinstance(value, torch.Tensor):
            raise CEPDError(f"{path}: state entry {brief(key)} is not a tensor")
    for name, meta in data["layers"].items():
        if not isinstance(name, str) or not name or not name.isprintable() or len(name) > 1000:
            raise CEPDError(f"{path}: layer name {brief(name)} is not a module name")
        validate_layer_meta(path, name, meta)
        _check_layer_tensors(path, name, meta, state)


def _plain(value, budget: int, depth: int) -> bool:
    """``value`` is None/bool/int/float/str or lists/dicts of them, within ``budget`` values
    (counted per visit, so a shared sub-list counts each time) and ``depth`` levels."""
    todo = [(value, 0)]
    while todo:
        v, d = todo.pop()
        budget -= 1
        if budget < 0 or d > depth:
            return False
        if isinstance(v, dict):
            if not all(isinstance(k, (str, int)) for k in v):
                return False
            todo.extend((x, d + 1) for x in v.values())
        elif isinstance(v, (list, tuple)):
            todo.extend((x, d + 1) for x in v)
        elif isinstance(v, str):
            budget -= len(v) // 64
        elif v is not None and not isinstance(v, (bool, int, float)):
            return False
    return True


def _validate_arch(path: Path, arch) -> None:
    if arch is None:
        return
    from cepd_deploy.model.zoo import ZOO

    if not (isinstance(arch, dict) and isinstance(arch.get("name"), str)
            and isinstance(arch.get("kwargs", {}), dict) and set(arch) <= {"name", "kwargs"}):  # fmt: skip
        raise CEPDError(f"{path}: field 'arch' malformed")
    if arch["name"] not in ZOO:
        raise CEPDError(f"{path}: unknown architecture {brief(arch['name'])} (zoo: {', '.join(ZOO)})")
    import inspect

    params = inspect.signature(ZOO[arch["name"]].builder).parameters
    for key, value in arch.get("kwargs", {}).items():
        if key not in params:
            raise CEPDError(f"{path}: arch.kwargs: {arch['name']} takes no argument {brief(key)} "
                            f"(takes: {', '.join(params) or 'none'})")  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ARCH_INT:
            raise CEPDError(f"{path}: arch.kwargs.{key}: expected an integer in [1, {MAX_ARCH_INT}], "
                            f"got {brief(value)}")  # fmt: skip


def _validate_network(path: Path, data: dict) -> None:
    """The recorded network reference is well formed (nothing is imported here)."""
    network = data.get("network")
    if network is None:
        return
    if not (isinstance(network, dict) and set(network) == {"ref", "kwargs"}):
        raise CEPDError(f"{path}: field 'network' malformed")
    if data.get("arch") is not None:
        raise CEPDError(f"{path}: records both a zoo architecture and a network reference")
    try:
        reference.parse(network["ref"])
        reference.check_args(network["kwargs"], "arguments")
    except CEPDError as exc:
        raise CEPDError(f"{path}: field 'network': {exc}") from None


def validate_layer_meta(path: Path, name: str, meta) -> None:
    """Types and ranges of one CEPD layer's metadata (its tensors are checked next)."""
    if not isinstance(meta, dict):
        raise CEPDError(f"{path}: metadata of layer {brief(name)} malformed")
    for key, kind in _META_KEYS.items():
        if not isinstance(meta.get(key), kind) or (kind is int and isinstance(meta[key], bool)):
            raise CEPDError(f"{path}: metadata of layer {brief(name)} lacks a valid {key!r}")
    if not isinstance(meta.get("channels_last", False), bool):  # optional: a 1x1 layer replacing nn.Linear
        raise CEPDError(f"{path}: metadata of layer {brief(name)} has a non-boolean 'channels_last'")
    unknown = sorted((k for k in meta if k not in _META_KEYS and k != "channels_last"), key=repr)
    if unknown:
        raise CEPDError(f"{path}: metadata of layer {brief(name)} has an unknown field {brief(unknown[0])}")

    def ints(key: str, count: tuple[int, int], low: int, high: int) -> None:
        v = meta[key]
        if not (count[0] <= len(v) <= count[1] and all(type(x) is int and low <= x <= high for x in v)):
            many = f"{count[0]}" if count[0] == count[1] else f"{count[0]} to {count[1]}"
            raise CEPDError(f"{path}: layer {brief(name)}: {key} must be {many} integers in [{low}, {high}], "
                            f"got {brief(v)}")  # fmt: skip

    for key in ("in_channels", "out_channels"):
        if not 1 <= meta[key] <= MAX_CHANNELS:
            raise CEPDError(f"{path}: layer {brief(name)}: {key} must be in [1, {MAX_CHANNELS}], "
                            f"got {brief(meta[key])}")  # fmt: skip
    if not 0 <= meta["kappa"] <= meta["out_channels"]:
        raise CEPDError(f"{path}: layer {brief(name)}: kappa must be in [0, out_channels], "
                        f"got {meta['kappa']}")  # fmt: skip
    ints("kernel_size", (2, 2), 1, MAX_KERNEL)
    ints("stride", (2, 2), 1, MAX_KERNEL)
    ints("padding", (2, 2), 0, MAX_KERNEL)
    ints("dilation", (2, 2), 1, MAX_KERNEL)
    ints("ranks", (1, MAX_FACTORS), 1, MAX_RANK)
    ints("o_factors", (0, MAX_FACTORS), 1, MAX_CHANNELS)
    ints("i_factors", (0, MAX_FACTORS), 1, MAX_CHANNELS)
    layout = meta["layout"]
    if not layout or len(layout) > 64 or not layout.isprintable():
        raise CEPDError(f"{path}: layer {brief(name)}: layout must be a short layout spec, "
                        f"got {brief(layout)}")  # fmt: skip


def _check_layer_tensors(path: Path, name: str, meta: dict, state: dict) -> None:
    """The layer built on the meta device (no memory) has the shapes of the stored tensors."""
    try:
        with torch.device("meta"):
            probe = CEPDConv2d.from_meta(meta)
    except CEPDError as exc:
        raise CEPDError(f"{path}: metadata of layer {brief(name)} invalid ({exc})") from None
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError, OverflowError) as exc:
        raise CEPDError(f"{path}: metadata of layer {brief(name)} invalid ({clip(str(exc))})") from None
    for key, want in probe.state_dict().items():
        full = f"{name}.{key}"  # a missing one is reported once the architecture is known
        if full in state and tuple(state[full].shape) != tuple(want.shape):
            raise CEPDError(f"{path}: tensor {full!r} has shape {tuple(state[full].shape)}, the metadata "
                            f"implies {tuple(want.shape)}")  # fmt: skip


def load(
    path: str | Path,
    template: nn.Module | Reference | None = None,
    *,
    check_values: bool = True,
    trust_code: bool = False,
) -> nn.Module:
    """Rebuild a CEPD model: the zoo architecture named in the file, ``template``, or the network
    reference the file records.

    ``template`` is a user's own network (its dense convs are replaced by the file's CEPD layers),
    or a :class:`Reference` to one (built with its kwargs, or the file's recorded ones when None).
    A recorded reference is imported and called only with ``trust_code=True``: a model file is
    data (perhaps downloaded), and building its network runs the code it names. Tensors are
    checked against the metadata before any network is built (a zoo architecture is first built
    on the meta device, which allocates nothing); the model is returned in eval mode.
    ``check_values=False`` accepts NaN/Inf weights (see :func:`read`).
    """
    path = Path(path)
    data = read(path, check_values=check_values)
    network = data.get("network")
    if isinstance(template, Reference):
        recorded = network["kwargs"] if network is not None else {}
        template = reference.build(template.ref, recorded if template.kwargs is None else template.kwargs)
    if template is None and data["arch"] is None and network is not None:
        if not trust_code:
            raise CEPDError(f"{path}: records the network {brief(network['ref'])} with arguments "
                            f"{brief(network['kwargs'])}; building it imports and runs that code: pass "
                            "--trust-model-code (trust_code=True) if you trust this file, or name the "
                            "network yourself with --template MODULE:ATTR")  # fmt: skip
        template = _build_recorded(path, network)
    if template is not None:
        import copy

        model = copy.deepcopy(template)
        _apply_layers(path, model, data["layers"], meta_device=True)  # shapes first, then real layers
        _check_state(path, model, data["state_dict"])
    elif data["arch"] is not None:
        from cepd_deploy.model.zoo import build_model

        with torch.device("meta"):  # the structure only: every shape is checked before a real build
            skeleton = build_model(data["arch"]["name"], **data["arch"].get("kwargs", {}))
        _apply_layers(path, skeleton, data["layers"], meta_device=True)
        _check_state(path, skeleton, data["state_dict"])
        del skeleton
        model = build_model(data["arch"]["name"], **data["arch"].get("kwargs", {}))
    else:
        raise CEPDError(f"{path}: holds a custom network and records no MODULE:ATTR reference to it; name "
                        "it with --template MODULE:ATTR (template=<your network> in Python)")  # fmt: skip
    _apply_layers(path, model, data["layers"])
    state = data["state_dict"]
    _check_state(path, model, state)
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


def _build_recorded(path: Path, network: dict) -> nn.Module:
    """The network a file records, with a one-line way out where its code is not where it was."""
    try:
        return reference.build(network["ref"], network["kwargs"])
    except reference.NotFound as exc:
        raise CEPDError(f"{path}: records the network {network['ref']}, not found here: {exc.reason}; run "
                        "from the folder it was converted in, or pass --template MODULE:ATTR naming where "
                        "it is now") from None  # fmt: skip
    except CEPDError as exc:
        raise CEPDError(f"{path}: {exc}") from None


def dense_architecture(model: nn.Module) -> nn.Module | None:
    """A fresh dense network of ``model``'s architecture (random weights), from the zoo name or the
    network reference it carries; None for a network that carries neither (a template object)."""
    arch = getattr(model, "cepd_arch", None)
    if arch is not None:
        from cepd_deploy.model.zoo import build_model

        return build_model(arch["name"], **arch.get("kwargs", {})).eval()
    network = getattr(model, "cepd_network", None)
    return reference.build(network["ref"], network["kwargs"]) if network is not None else None


def _apply_layers(path: Path, model: nn.Module, layers: dict, *, meta_device: bool = False) -> None:
    """Replace the convs named in ``layers`` by CEPD layers built from their metadata."""
    for name, meta in layers.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise CEPDError(f"{path}: layer {brief(name)} does not exist in the architecture") from None
        if isinstance(old, nn.Linear) and meta.get("channels_last"):  # a pointwise layer on (N, H, W, C)
            channels = (old.in_features, old.out_features)
        else:
            conv = isinstance(old, (nn.Conv2d, CEPDConv2d))
            channels = (old.in_channels, old.out_channels) if conv else None
        if channels != (meta["in_channels"], meta["out_channels"]):
            raise CEPDError(f"{path}: layer {brief(name)} contradicts the architecture")
        try:
            if meta_device:
                with torch.device("meta"):
                    new = CEPDConv2d.from_meta(meta)
            else:
                new = CEPDConv2d.from_meta(meta)
        except (TypeError, ValueError) as exc:
            raise CEPDError(f"{path}: metadata of layer {brief(name)} invalid ({exc})") from None
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)


def _check_state(path: Path, model: nn.Module, state: dict) -> None:
    """The stored tensors are exactly the model's: same names, same shapes, same dtypes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing:
        raise CEPDError(f"{path}: tensor {missing[0]!r} missing ({len(missing)} in all)")
    if extra:
        raise CEPDError(f"{path}: unexpected tensor {brief(extra[0])} ({len(extra)} in all)")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CEPDError(
                f"{path}: tensor {key!r} has shape {tuple(value.shape)}, the metadata implies "
                f"{tuple(own[key].shape)}"
            )
        if value.dtype != own[key].dtype and not (value.is_floating_point() and own[key].is_floating_point()):
            raise CEPDError(f"{path}: tensor {key!r} is {value.dtype}, the model holds {own[key].dtype}")


def resolve(
    model_arg: str,
    input_shape=None,
    *,
    model_args: dict | None = None,
    template: str | None = None,
    trust_code: bool = False,
) -> tuple[nn.Module, tuple[int, ...], str]:
    """A CLI MODEL argument -> (model, (1, C, H, W), label).

    ``model_arg``: a model file, a zoo name, or a network reference ``MODULE:ATTR`` (built with
    ``model_args``; it needs ``input_shape``). For a model file, ``template`` names the network its
    weights go into (``model_args`` or the file's recorded arguments), and ``trust_code`` lets the
    network reference the file records be imported and built (see :func:`load`).
    """
    from cepd_deploy.model.zoo import ZOO, build_model
    from cepd_deploy.model.zoo import input_shape as zoo_shape

    path = Path(model_arg)
    if path.exists():
        if path.suffix == ".py" and path.is_file():
            raise CEPDError(f"{model_arg} is Python source: name the network in it, as {model_arg}:MyNet")
        if model_args is not None and template is None:
            raise CEPDError("--model-args goes with a MODULE:ATTR network or --template, not a model file")
        model = load(model_arg, Reference(template, model_args) if template else None, trust_code=trust_code)
        shape = getattr(model, "cepd_input_shape", None)
        if shape is None and input_shape is None:
            raise CEPDError(f"{model_arg}: the file records no input shape; give --input-shape C H W")
        label = path.stem
    elif template is not None:
        raise CEPDError(f"--template goes with a model file; {model_arg!r} is not one")
    elif model_arg in ZOO:
        if model_args is not None:
            raise CEPDError(f"--model-args goes with a MODULE:ATTR network; {model_arg} is a zoo name")
        model, shape, label = build_model(model_arg).eval(), zoo_shape(model_arg), model_arg
    elif reference.looks_like(model_arg):
        reference.parse(model_arg)
        if input_shape is None:  # before any of the user's code runs
            raise CEPDError(f"{model_arg}: give --input-shape C H W (a network named by reference "
                            "records none)")  # fmt: skip
        model, shape, label = reference.build(model_arg, model_args), None, reference.label(model_arg)
    else:
        raise CEPDError(f"{model_arg!r} is neither a model file nor a zoo model ({', '.join(ZOO)}) nor a "
                        "network MODULE:ATTR (pkg.nets:make_net, path/to/nets.py:MyNet)")  # fmt: skip
    if input_shape is not None:
        shape = tuple(input_shape)[-3:]
    return model, (1, *shape), label
