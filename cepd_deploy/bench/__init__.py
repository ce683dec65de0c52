"""The benchmark harness: one table of per-image latency on every target, dense vs CEPD.

``Row`` and ``run_bench`` load the harness (torch) on first use, so ``bench.machine`` and
``bench.paper`` import on their own.
"""

__all__ = ["Row", "run_bench"]


def __getattr__(name: str):
    if name in __all__:
        from cepd_deploy.bench import harness

        return getattr(harness, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
