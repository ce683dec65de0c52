"""PYNQ-Z1 target: the 8-bit engine (two output channels per DSP48E1).

The packed MAC multiplies A = w_hi * 2**17 + w_lo (25 bits) by B = x (18 bits) and splits the 48-bit
P every 4 products: low = sign-extended P[16:0], high = (P - low) >> 17. The checks below model the
DSP's bit widths in numpy and prove the packing exact for |w| <= 127, |x| <= 128 (and show where it
stops holding); the C-simulation, which implements the packed MAC and keeps activations in DDR as
bytes, is then bit-exact with the plain integer reference on a CEPD ResNet-20.
"""

from __future__ import annotations

import json
import runpy

import numpy as np
import pytest
import torch

from cepd_deploy import build_model, lower
from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.reference import run as float_run
from cepd_deploy.targets.pynq_z1 import csim, fixed, fxp, isa, model
from cepd_deploy.targets.pynq_z1.config import PACK_SHIFT, PACK_SPAN, EngineConfig, load_board, make_config
from cepd_deploy.targets.pynq_z1.intops import requant, saturate
from cepd_deploy.targets.pynq_z1.model import estimate, resources
from cepd_deploy.targets.pynq_z1.project import build
from tests.pynq_helpers import CSIM, cepd_resnet20, engine_cache  # noqa: F401 (autouse fixture)

W = np.arange(-127, 128, dtype=np.int64)  # the 8-bit engine's weights (symmetric range)
X = np.arange(-128, 128, dtype=np.int64)  # any int8 activation, -128 included


def _wrap(v, bits: int):
    """Two's-complement wrap to ``bits`` (what a register of that width holds)."""
    m = 1 << bits
    return ((v + (m >> 1)) % m) - (m >> 1)


def _packed(w_hi, w_lo, x):
    """The DSP48E1 packed MAC over the last axis (one split after the last product):
    (high field, low field) as the hardware extracts them."""
    a = _wrap((w_hi << PACK_SHIFT) + w_lo, 25)  # the pre-adder's 25-bit sum
    p = _wrap((a * _wrap(x, 18)).sum(axis=-1), 48)
    lo = _wrap(p, PACK_SHIFT)  # P[16:0], sign-extended
    return (p - lo) >> PACK_SHIFT, lo


def test_one_packed_product_is_exact_for_every_operand():
    """Every (w_hi, w_lo, x): 255 x 255 x 256 products."""
    hi, lo = np.meshgrid(W, W, indexing="ij")
    for x in X:
        got_hi, got_lo = _packed(hi[..., None], lo[..., None], np.full((1,), x))
        assert np.array_equal(got_hi, hi * x) and np.array_equal(got_lo, lo * x)


def test_field_extraction_is_exact_for_every_sum_of_four_products():
    """P = H 2**17 + L exactly (|A| < 2**24, |P| < 2**47); the split recovers (H, L) for every low
    sum L that four products can make and high sums H at and around their extremes."""
    prods = np.outer(W, X)
    lmin, lmax = PACK_SPAN * int(prods.min()), PACK_SPAN * int(prods.max())
    assert (lmin, lmax) == (-65024, 65024) and -(2**16) <= lmin and lmax < 2**16
    assert np.abs(_wrap((W[:, None] << PACK_SHIFT) + W, 25) - ((W[:, None] << PACK_SHIFT) + W)).max() == 0
    low = np.arange(lmin, lmax + 1)
    for h in (lmin, lmin + 1, -1, 0, 1, 12345, lmax - 1, lmax):
        p = _wrap(h * 2**PACK_SHIFT + low, 48)
        lo = _wrap(p, PACK_SHIFT)
        assert np.array_equal(lo, low) and np.array_equal((p - lo) >> PACK_SHIFT, np.full_like(low, h))


def test_random_and_worst_case_sequences_and_where_the_packing_stops():
    rng = np.random.default_rng(0)
    for n in range(1, PACK_SPAN + 1):
        w_hi, w_lo = rng.choice(W, (2, 50000, n))
        x = rng.choice(X, (50000, n))
        hi, lo = _packed(w_hi, w_lo, x)
        assert np.array_equal(hi, (w_hi * x).sum(-1)) and np.array_equal(lo, (w_lo * x).sum(-1))
    for w, x in ((127, -128), (-127, -128), (127, 127), (-127, 127)):  # every product at an extreme
        ext = np.full((1, PACK_SPAN), w)
        hi, lo = _packed(ext, ext, np.full((1, PACK_SPAN), x))
        assert hi[0] == lo[0] == PACK_SPAN * w * x
    # the limits: a fifth product, or w = -128 (A overflows its 25 bits), breaks it
    five = np.full((1, PACK_SPAN + 1), 127)
    assert _packed(five, five, -five - 1)[1][0] != (PACK_SPAN + 1) * 127 * -128
    assert _packed(np.array([[-128]]), np.array([[-1]]), np.array([[1]]))[0][0] != -128


def test_8bit_data_saturate_symmetrically():
    assert int(saturate(np.int64(-1000), 8)) == -127 and int(requant(np.int64(-1000), 0, 8)) == -127
    assert int(saturate(np.int64(-1000), 4)) == -7
    assert int(saturate(np.int64(-(10**6)), 16)) == -32768  # the 16-bit engine keeps the full range
    plan = lower(build_model("resnet20"), (1, 3, 32, 32))
    q = fixed.quantize(plan, np.random.default_rng(0).standard_normal((2, 3, 32, 32)), 8)
    weights = [q.qconsts[n.weights[0]] for n in plan.nodes if n.op.value in ("conv", "linear", "matmul")]
    assert weights and all(np.abs(w).max() <= 127 for w in weights)
    assert int(fixed.quantize_array([-1.0], 7, 8)[0]) == -127  # -1.0 at frac 7 would be -128


def test_8bit_engine_config_and_resources():
    cfg = EngineConfig(bits=8)
    assert (cfg.pack, cfg.pe_out, cfg.macs_per_cycle, cfg.dsp_macs, cfg.red_max) == (2, 8, 392, 196, 9216)
    assert make_config(bits=8) == cfg and EngineConfig(bits=9).pack == 1 and EngineConfig(bits=9).pe_out == 4
    assert cfg.hw_hash != EngineConfig().hw_hash
    r = resources(cfg)
    b = r["breakdown"]
    # 196 packed DSPs + 14 epilogue + 6 address = 216, as the 16-bit engine; the same 135.5 BRAM36
    # (8-bit words fill 2048 x 9 BRAM18s: twice the ibuf and scratch words; weights, outputs and
    # residuals as channel pairs); the field split and 392 fabric accumulators in LUTs and FFs
    assert (r["dsp"], b["dsp"]["mac_array"], r["bram36"]) == (216, 196, 135.5)
    assert b["lut"]["unpack"] == 196 * 18 + 392 * 30 and b["ff"]["unpack"] == 196 * 35
    assert r["lut"] < 53200 and r["ff"] < 106400
    model.check_fit(r, load_board())
    with pytest.raises(CEPDError, match="does not fit.*dsp"):
        model.check_fit(resources(make_config(bits=8, pe_out=16)), load_board())
    with pytest.raises(CEPDError, match="does not fit.*bram36"):
        model.check_fit(resources(make_config(bits=8, ibuf_words=2 * 100352)), load_board())
    with pytest.raises(CEPDError, match="does not fit.*lut"):
        model.check_fit(resources(make_config(bits=8, epi_lanes=28)), load_board())
    with pytest.raises(CEPDError, match="pe_out must be even"):
        make_config(bits=8, pe_out=7, wbuf_words=7 * 9216, obuf_words=7 * 2048)


def test_8bit_engine_latency_model():
    plan = lower(build_model("resnet20"), (1, 3, 32, 32))
    r16, r8 = estimate(plan).to_json(), estimate(plan, {"bits": 8}).to_json()
    assert r8["engine"]["macs_per_cycle"] == 392 and r8["engine"]["pack"] == 2
    assert r8["totals"]["macs"] == pytest.approx(r16["totals"]["macs"], rel=0.05)  # bigger tiles: fewer halos
    assert r8["totals"]["latency_ms"] < 0.75 * r16["totals"]["latency_ms"]
    assert r8["totals"]["peak_ms"] == pytest.approx(r16["totals"]["peak_ms"] / 2, rel=0.05)
    assert r8["totals"]["latency_ms"] >= r8["totals"]["peak_ms"]
    # the PYNQ-Z1 target's estimate and bench take the width
    from cepd_deploy import targets

    t = targets.get("pynq-z1")
    assert t.estimate(plan, t.options({"bits": 8})).latency_ms == pytest.approx(r8["totals"]["latency_ms"])


def test_8bit_step_cost_moves_bytes_and_computes_8_channels_per_chunk():
    """The 3x3 conv 16->8 on a 14x14 tile of test_pynq_model, on the 8-bit engine: one chunk of 8
    channels; weights from the blob stay 16-bit words, outputs to the arena are bytes."""
    cfg = EngineConfig(bits=8)
    bw = model.bandwidth(cfg, load_board())
    geo = dict(op=0, flat=0, bh=7, bw=7, src_pitch=21, oh=14, ow=14, sh=1, sw=1, kh=3, kw=3)
    r = isa.record(isa.Kind.STEP, cin_g=16, cout_g=8, groups=1, dst_buf=int(isa.Buf.DDR), **geo)
    c = model.step_cost(r, cfg, bw)
    # 4 blocks x max(red 144, drain 8 * 49 / 14 = 28) + depth 12, one chunk
    assert c.compute == c.cycles == 4 * 144 + 12
    assert c.macs == 8 * 14 * 14 * 144
    assert (c.rd_bytes, c.wr_bytes) == (8 * 144 * 2, 8 * 14 * 14 * 1)


def test_bench_refuses_a_bad_pynq_width_before_loading_models():
    from cepd_deploy.bench import run_bench

    with pytest.raises(CEPDError, match="bits"):
        run_bench("no-such-model", (0.5,), ("pynq-z1",), pynq_bits=3, progress=False)


# -- the C-simulation ---------------------------------------------------------------------------
@pytest.mark.slow
@CSIM
def test_8bit_csim_of_cepd_resnet20_is_bit_exact(tmp_path, capsys):
    """The packed MAC in the engine equals the plain integer reference on every output."""
    out = tmp_path / "p8"
    plan = lower(cepd_resnet20(), (1, 3, 32, 32))
    r = build(plan, out, csim=True, golden=4, label="cepd-resnet20-int8", bits=8)
    c = r["csim"]
    assert c["bit_exact"] and c["mismatches"] == 0 and c["images"] == 4
    assert c["within_tolerance"]
    assert r["engine"]["pack"] == 2 and r["resources"]["dsp"] == 216
    header = (out / "src" / "cepd_config.h").read_text()
    assert "#define CEPD_PACK 2" in header and "#define CEPD_PE_OUT 8" in header
    # the driver (its symmetric 8-bit input quantisation) against the simulation library
    drv = runpy.run_path(str(out / "driver.py"))
    sim = csim.build_sim(make_config(bits=8))
    assert drv["ARENA_DTYPE"] is np.int8  # activations travel through DDR as bytes
    acc = drv["Accelerator"](device=csim.SimDevice(sim), blob=str(out / "data" / "weights.bin"))
    raw, _, _ = acc.run(np.load(out / "data" / "golden_images.npy"))
    expected = np.fromfile(out / "data" / "golden_output.bin", dtype="<i2").reshape(raw.shape)
    assert np.array_equal(raw, expected)
    assert json.loads((out / "report.json").read_text())["fixed_point"]["bits"] == 8


@pytest.mark.slow
def test_8bit_accuracy_vs_float():
    """Max error relative to max|float output| and top-1 agreement with float on 16 standard-normal
    images (no trained model: CEPD ResNet-20 with random weights and BatchNorm statistics; 8 other
    images calibrate). The fixed-point reference is what the C-simulation computes bit for bit.
    Measured on 64 images: 16-bit 0.06%, 8-bit 14% (per-tensor power-of-two formats, one bit of
    headroom, about 40 requantisations deep)."""
    plan = lower(cepd_resnet20(), (1, 3, 32, 32))
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    test = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    ref = np.concatenate([float_run(plan, torch.from_numpy(t[None])).numpy() for t in test])
    got = {}
    for bits in (16, 8):
        q = fixed.quantize(plan, calib, bits)
        y = fixed.dequantize(fxp.run(q, test), q.output_frac)
        got[bits] = (np.abs(y - ref).max() / np.abs(ref).max(), (y.argmax(1) == ref.argmax(1)).mean())
    assert got[16][0] <= 0.002 and got[16][1] == 1.0
    assert got[8][0] <= 0.25 and got[8][1] == 1.0
    assert got[8][0] > 10 * got[16][0]
