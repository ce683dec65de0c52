"""The benchmark harness: one table of per-image latency on every target, dense vs CEPD."""

from cepd_deploy.bench.harness import Row, run_bench

__all__ = ["Row", "run_bench"]
