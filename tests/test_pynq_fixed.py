"""PYNQ-Z1 target: fixed-point semantics, calibration and the fixed-point reference interpreter."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cepd_deploy import build_model, lower
from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Op
from cepd_deploy.plan.reference import run as float_run
from cepd_deploy.targets import get
from cepd_deploy.targets.base import Kind
from cepd_deploy.targets.pynq_z1 import fixed, fxp
from cepd_deploy.targets.pynq_z1.fixed import quantize
from cepd_deploy.targets.pynq_z1.intops import align, requant, rshift_round
from cepd_deploy.targets.pynq_z1.program import HANDLERS
from cepd_deploy.targets.pynq_z1.project import tolerance
from cepd_deploy.targets.pynq_z1.target import PynqZ1
from tests.pynq_helpers import cepd_resnet20


def _round_half_up(x: Fraction) -> int:
    return int((x + Fraction(1, 2)).__floor__())


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2**50), 2**50), st.integers(-20, 40), st.sampled_from([8, 12, 16]))
def test_requant_is_round_half_up_then_saturate(v, s, bits):
    exact = _round_half_up(Fraction(v, 2**s)) if s >= 0 else v * 2 ** (-s)
    lo, hi = -(2 ** (bits - 1)) + (bits <= 8), 2 ** (bits - 1) - 1  # symmetric at 8 bits (packed MAC)
    assert int(requant(np.int64(v), s, bits)) == min(hi, max(lo, exact))


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2**31), 2**31), st.integers(0, 30))  # the formats keep values below 2**62
def test_shift_primitives(v, s):
    assert int(rshift_round(np.int64(v), s)) == _round_half_up(Fraction(v, 2**s))
    assert int(align(np.int64(v), s)) == v * 2**s
    assert int(align(np.int64(v), -s)) == _round_half_up(Fraction(v, 2**s))


def test_value_frac_holds_the_range_without_saturating():
    for m in (0.3, 1.0, 5.9, 100.0, 1e-4):
        f = fixed.value_frac(m, 16)
        assert m * 2**f < 2**15 <= 2 * m * 2**f or f == 32
    assert fixed.value_frac(0.0, 16) == 32
    with pytest.raises(CEPDError):
        fixed.value_frac(float("inf"), 16)


def test_every_op_has_a_handler():
    ops = set(Op)
    assert set(HANDLERS) == ops == PynqZ1.ops  # the compiler runs every op the target claims
    assert set(fxp.HANDLERS) == ops  # the fixed-point reference defines every op
    assert isinstance(get("pynq-z1"), PynqZ1) and PynqZ1.kind is Kind.MODEL


@pytest.fixture(scope="module")
def cepd20():
    return lower(cepd_resnet20(), (1, 3, 32, 32))


@pytest.mark.slow
def test_fixed_point_reference_tracks_float(cepd20):
    rng = np.random.default_rng(0)
    q = quantize(cepd20, rng.standard_normal((4, 3, 32, 32)), 16)
    x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    y = fixed.dequantize(fxp.run(q, x), q.output_frac)
    ref = np.concatenate([float_run(cepd20, torch.from_numpy(x[i : i + 1])).numpy() for i in range(3)])
    assert np.abs(y - ref).max() <= tolerance(16) * np.abs(ref).max()
    assert (y.argmax(1) == ref.argmax(1)).all()
    # every node has its parameters; biases are int32 and weights fit 16 bits
    assert set(q.nodes) == {n.name for n in cepd20.nodes}
    for name, arr in q.qconsts.items():
        bound = 2**31 if name.endswith(".bias") else 2**15
        assert arr.min() >= -bound and arr.max() < bound


@pytest.mark.slow
def test_fewer_bits_are_coarser_but_bounded(cepd20):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    ref = np.concatenate([float_run(cepd20, torch.from_numpy(x[i : i + 1])).numpy() for i in range(2)])
    errs = {}
    for bits in (10, 16):
        q = quantize(cepd20, rng.standard_normal((4, 3, 32, 32)), bits)
        errs[bits] = np.abs(fixed.dequantize(fxp.run(q, x), q.output_frac) - ref).max()
        assert errs[bits] <= tolerance(bits) * np.abs(ref).max()
    assert errs[10] > errs[16]


def test_quantize_needs_batch_one_plans():
    plan = lower(build_model("resnet20"), (2, 3, 32, 32))
    with pytest.raises(CEPDError, match="one image"):
        quantize(plan, np.zeros((2, 3, 32, 32)), 16)
