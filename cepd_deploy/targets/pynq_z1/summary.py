"""Plain-text summaries of a PYNQ-Z1 build (what the CLI prints without --json)."""

from __future__ import annotations

from cepd_deploy.plan.report import format_table


def text_summary(result: dict, report: bool = False) -> str:
    """A build result as text: what was written, the engine and its estimated latency (ms per image),
    the resource estimate, the C-simulation check and, with ``report``, the per-layer table."""
    t, r, lim = result["totals"], result["resources"], result["limits"]
    e = result["engine"]
    lines = [
        f"wrote {result['output']}: PYNQ-Z1 project for {result['model']!r}",
        f"engine: {e['pe_out']} x {e['lanes']} MACs/cycle{_packed(e)}, {e['bits']}-bit, "
        f"{e['clock_mhz']:g} MHz; "
        f"estimated {t['latency_ms']:.2f} ms per image ({100 * t['dsp_efficiency']:.0f}% of peak)",
        f"resources (estimate): DSP {r['dsp']}/{lim['dsp']}, BRAM36 {r['bram36']:g}/{lim['bram36']}, "
        f"LUT {r['lut']}/{lim['lut']}, FF {r['ff']}/{lim['ff']}",
    ]
    c = result["csim"]
    if c is not None:
        lines.append(
            f"csim ({c['images']} images): bit-exact {'yes' if c['bit_exact'] else 'NO'}, max |err| vs float "
            f"{c['max_abs_err_vs_float']:.3g} (tolerance {c['tolerance']:.3g}), top-1 agreement "
            f"{100 * c['top1_agreement']:.0f}%"
        )
    if report:
        lines += ["", *layer_table(result)]
    return "\n".join(lines)


def layer_table(figures: dict) -> list[str]:
    """The per-layer latency table of a report (``figures["layers"]``) and its total line."""
    t = figures["totals"]
    rows = [
        [x["name"], f"{x['ms']:.3f}", f"{x['macs'] / 1e6:.2f}", f"{100 * x['dsp_efficiency']:.0f}%"]
        for x in figures["layers"]
    ]
    return [
        format_table(["layer", "ms", "MMACs", "PE eff"], rows, "lrrr"),
        f"total: {t['latency_ms']:.3f} ms, {t['macs'] / 1e6:.1f} MMACs, {t['ddr_mbytes']:.1f} MB DDR",
    ]


def _packed(engine: dict) -> str:
    """How the MACs map onto DSPs, where two share one (the 8-bit engine)."""
    pack = engine.get("pack", 1)
    return f" (two per DSP48E1: {engine['macs_per_cycle'] // pack} DSPs)" if pack == 2 else ""


def estimate_text(figures: dict, batch: int = 1) -> str:
    """The latency estimate of one image (``Report.to_json()``) per layer, and the batch's total."""
    e, t = figures["engine"], figures["totals"]
    head = (
        f"PYNQ-Z1 engine: {e['pe_out']} x {e['lanes']} MACs/cycle{_packed(e)}, {e['bits']}-bit, "
        f"{e['clock_mhz']:g} MHz; "
        f"modelled {t['latency_ms']:.3f} ms per image ({100 * t['dsp_efficiency']:.0f}% of peak)"
    )
    if batch != 1:
        head += f", {batch * t['latency_ms']:.3f} ms for {batch} images (one per call)"
    return "\n".join([head, "", *layer_table(figures)])
