"""Every pytest benchmark here records the machine: ``extra_info["machine"]`` on each benchmark,
``machine_info["cepd"]`` in a saved run, and a header line when the session starts."""

from __future__ import annotations

import pytest

from cepd_deploy.bench.machine import describe, machine_info
from cepd_deploy.process import configure

configure()  # OMP_WAIT_POLICY=PASSIVE unless set: before any benchmark module loads torch

#: the intra-op thread count every benchmark in this folder uses
THREADS = 2
#: taken once, when the session starts (the load average before the benchmarks load the machine)
MACHINE = machine_info(THREADS)


def pytest_report_header(config) -> str:
    return f"measured on: {describe(MACHINE)}"


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info) -> None:
    machine_info["cepd"] = MACHINE


@pytest.fixture(autouse=True)
def _record_machine(request):
    if "benchmark" in request.fixturenames:
        request.getfixturevalue("benchmark").extra_info["machine"] = MACHINE
