"""Per-layer rows and a printable summary of a Plan (what ``inspect`` shows)."""

from __future__ import annotations

from cepd_deploy.plan.cost import node_macs, node_params, totals
from cepd_deploy.plan.ir import Plan


def layer_rows(plan: Plan, why_dense: dict[str, str] | None = None) -> list[dict]:
    """One row per source conv/linear layer: structure, params and MACs from the Plan, and for a
    conv that stayed dense, why (``why_dense``: layer -> reason)."""
    why_dense = why_dense or {}
    rows = []
    for name, info in plan.layers.items():
        nodes = plan.layer_nodes(name)
        rows.append({
            "name": name,
            "kind": info.kind,
            "weight_shape": list(info.weight_shape),
            "layout": info.layout or "dense",
            "factors": info.factors,
            "ranks": list(info.ranks),
            "kept_filters": info.kappa,
            "order": info.path or "dense",
            "ops": len(nodes),
            "params": sum(node_params(n, plan) for n in nodes),
            "macs": sum(node_macs(n) for n in nodes),
            "dense_params": info.dense_params,
            "dense_macs": info.dense_macs,
        } | ({"dense_because": why_dense[name]} if name in why_dense else {}))  # fmt: skip
    return rows


def format_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A plain-text table; ``align`` has one 'l' or 'r' per column (default: text left)."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    align = align or "".join("r" if rows and isinstance(rows[0][i], (int, float)) else "l"
                             for i in range(len(headers)))  # fmt: skip

    def line(r):
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(r, widths, align))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def summary(plan: Plan, why_dense: dict[str, str] | None = None,
            latency: dict[str, tuple[float, float]] | None = None) -> str:  # fmt: skip
    """The per-layer table, the totals line, and why convs stayed dense (grouped by reason); with
    ``latency`` (layer -> (ms, dense ms) measured), those two columns and their ratio."""
    headers = ["layer", "weight", "layout", "factors", "ranks", "kept", "order", "params", "MACs"]
    rows = [[r["name"], "x".join(map(str, r["weight_shape"])), r["layout"], r["factors"] or "-",
             ",".join(map(str, r["ranks"])) or "-", r["kept_filters"] if r["kind"] == "cepd" else "-",
             r["order"], _si(r["params"]), _si(r["macs"])] for r in layer_rows(plan)]  # fmt: skip
    align = "lllllrlrr"
    if latency is not None:
        headers += ["ms", "dense ms", "of dense"]
        align += "rrr"
        for row in rows:
            ms, dense = latency.get(row[0], (None, None))
            row += [f"{ms:.3f}", f"{dense:.3f}", f"{ms / dense:.2f}"] if ms else ["-", "-", "-"]
    t = totals(plan)
    foot = (
        f"total: {_si(t['macs'])} MACs of {_si(t['dense_macs'])} dense "
        f"({t['flops_remaining']:.1%} FLOPs remaining), {_si(t['params'])} params of "
        f"{_si(t['dense_params'])} ({t['params_remaining']:.1%} remaining), {t['ops']} ops"
    )
    groups: dict[str, list[str]] = {}
    for name, reason in (why_dense or {}).items():
        groups.setdefault(reason, []).append(name)
    why = [f"stayed dense, {reason}: {_names(names)}" for reason, names in groups.items()]
    return "\n".join([format_table(headers, rows, align), foot, *why])


def _names(names: list[str], limit: int = 6) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
