"""A small ONNX graph builder: nodes, initializers and integer constants with unique names."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cepd_deploy.plan.ir import unique_name

#: The standard-op opset every exported model imports (the fused domain adds its own).
OPSET = 18
#: IR version: 10 lets model-local functions carry overloads (one body per layer structure).
IR_VERSION = 10


class GraphBuilder:
    """Collects nodes and initializers; ``node`` returns its (first) output's name.

    >>> b = GraphBuilder()
    >>> y = b.node("Relu", ["x"])
    """

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self._taken: set[str] = set()
        self._ints: dict[tuple[int, ...], str] = {}
        self.scope = ""  # prefix of node names (the Plan node being emitted), for profiles

    def fresh(self, base: str) -> str:
        return unique_name(base, self._taken)

    def const(self, name: str, value: np.ndarray) -> str:
        """A float32 (or int64) initializer; a name already used gets a suffix."""
        value = np.asarray(value)
        if value.dtype != np.int64:
            value = value.astype(np.float32)
        name = self.fresh(name)
        self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
        return name

    def ints(self, values: Sequence[int]) -> str:
        """A shared int64 1-D initializer (shapes for Reshape, axes, ...)."""
        key = tuple(int(v) for v in values)
        if key not in self._ints:
            self._ints[key] = self.const("shape_" + "_".join(map(str, key)).replace("-", "m"),
                                         np.array(key, dtype=np.int64))  # fmt: skip
        return self._ints[key]

    def node(
        self,
        op_type: str,
        inputs: Sequence[str],
        output: str | None = None,
        *,
        name: str | None = None,
        domain: str = "",
        overload: str = "",
        **attrs,
    ) -> str:
        base = output or name or (f"{self.scope}/{op_type.lower()}" if self.scope else op_type.lower())
        out = output if output is not None else self.fresh(base)  # a given name is the caller's
        self._taken.add(out)
        label = name or (f"{self.scope}/{op_type}" if self.scope else f"{base}/{op_type}")
        proto = helper.make_node(op_type, list(inputs), [out], name=self.fresh(label),
                                 domain=domain or None, **attrs)  # fmt: skip
        if overload:
            proto.overload = overload
        self.nodes.append(proto)
        return out

    def rename(self, value: str, new: str) -> str:
        """Make the node that produced ``value`` (if last, and not a graph input) write ``new``."""
        if value == new:
            return new
        last = self.nodes[-1] if self.nodes else None
        if last is not None and list(last.output) == [value]:
            last.output[0] = new
            self._taken.add(new)
            return new
        return self.node("Identity", [value], new)

    def reshape(self, x: str, shape: Sequence[int], output: str | None = None) -> str:
        return self.node("Reshape", [x, self.ints(shape)], output)

    def scalar(self, v: float) -> str:
        """A shared float32 scalar constant."""
        key = ("f", float(v))
        if key not in self._ints:
            self._ints[key] = self.const(f"scalar_{v:g}".replace(".", "p").replace("-", "m"),
                                         np.array(v, np.float32))  # fmt: skip
        return self._ints[key]


class FunctionBuilder(GraphBuilder):
    """Builds a function body: constants become Constant nodes (a body has no initializers)."""

    def const(self, name: str, value: np.ndarray) -> str:
        value = np.asarray(value)
        if value.dtype != np.int64:
            value = value.astype(np.float32)
        return self.node("Constant", [], self.fresh(name), value=numpy_helper.from_array(value))


def value_info(name: str, shape: Sequence[int]) -> onnx.ValueInfoProto:
    """A float32 graph input/output ``name`` of ``shape``."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def make_model(
    b: GraphBuilder,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    *,
    name: str,
    functions: Sequence[onnx.FunctionProto] = (),
    extra_opsets: dict[str, int] | None = None,
) -> onnx.ModelProto:
    """The builder's nodes and initializers as an ONNX model (opset :data:`OPSET` plus
    ``extra_opsets``, IR :data:`IR_VERSION`), with the local ``functions``."""
    graph = helper.make_graph(b.nodes, name, inputs, outputs, list(b.initializers.values()))
    opsets = [helper.make_opsetid("", OPSET)]
    opsets += [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions),
                              producer_name="cepd-deploy")  # fmt: skip
    model.ir_version = IR_VERSION
    return model
