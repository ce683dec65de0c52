"""The command line: convert -> inspect, --help everywhere, user errors as one line + exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cepd_deploy.cli import COMMANDS, main, parser


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cepd_deploy", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_convert_then_inspect_resnet50(tmp_path):
    out = tmp_path / "r50.pt"
    done = _run("convert", "--arch", "resnet50", "--flops-remaining", "0.461", "-o", str(out))
    assert done.returncode == 0, done.stderr
    shown = _run("inspect", str(out), "--json")
    data = json.loads(shown.stdout)
    assert data["totals"]["flops_remaining"] == pytest.approx(0.461, abs=0.01)
    for key in ("macs", "params", "dense_macs", "dense_params", "params_remaining"):
        assert key in data["totals"]
    assert {"name", "ranks", "kept_filters", "order", "params", "macs"} <= set(data["layers"][1])


def test_inspect_table_of_a_zoo_model(capsys):
    assert main(["inspect", "resnet20"]) == 0
    text = capsys.readouterr().out
    assert "layer3.2.conv2" in text and "100.0% FLOPs remaining" in text


def test_every_command_has_help():
    sub = next(a for a in parser()._actions if a.dest == "command")
    assert set(sub.choices) <= set(COMMANDS) and {"demo", "convert", "inspect"} <= set(sub.choices)
    for name in sub.choices:
        done = _run(name, "--help")
        assert done.returncode == 0 and "usage" in done.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["inspect", "no_such_model"], "neither a model file nor a zoo model"),
        (["convert", "--arch", "resnet20", "--flops-remaining", "0.001", "-o", "{tmp}/x.pt"], "unreachable"),
        (["convert", "--arch", "nope", "--flops-remaining", "0.5", "-o", "{tmp}/x.pt"], "neither"),
        (["convert", "--arch", "resnet20", "--flops-remaining", "0.5", "-o", "{tmp}/no/dir/x.pt"],
         "output folder does not exist"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line_and_exit_2(args, message, tmp_path):
    done = _run(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "x.pt").exists() and list(tmp_path.iterdir()) == []


def test_bad_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04garbage")
    done = _run("inspect", str(bad))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("allocation, cache", [("ort-latency", "onnx-latency"),
                                               ("library-latency", "library-latency")])
def test_convert_with_a_latency_allocation(tmp_path, monkeypatch, allocation, cache):
    monkeypatch.setenv("CEPD_DEPLOY_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "r20.pt"
    done = _run("convert", "--arch", "resnet20", "--flops-remaining", "0.7", "--allocation", allocation,
                "--threads", "1", "-o", str(out), "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["totals"]["flops_remaining"] == pytest.approx(0.7, abs=0.01)
    assert list((tmp_path / "cache").glob(f"{cache}-*.json"))
    bad = _run("convert", "--arch", "resnet20", "--flops-remaining", "0.7", "--rank-multiple", "0",
               "-o", str(tmp_path / "x.pt"))  # fmt: skip
    assert bad.returncode == 2 and "rank-multiple" in bad.stderr and not (tmp_path / "x.pt").exists()


def test_hugepage_env(tmp_path):
    from cepd_deploy.cli.common import HUGETLB, hugepage_env

    thp = tmp_path / "enabled"
    thp.write_text("always [madvise] never\n")
    glibc = ("glibc", "2.36")
    assert hugepage_env({}, thp, glibc)["GLIBC_TUNABLES"] == HUGETLB
    assert hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, thp, glibc)["GLIBC_TUNABLES"] == (
        "glibc.malloc.arena_max=2:" + HUGETLB)  # fmt: skip
    assert hugepage_env({"GLIBC_TUNABLES": HUGETLB}, thp, glibc) is None  # already set: no loop
    assert hugepage_env({"CEPD_DEPLOY_HUGEPAGES": "0"}, thp, glibc) is None  # opted out
    assert hugepage_env({}, thp, ("glibc", "2.31")) is None  # no malloc.hugetlb before 2.35
    assert hugepage_env({}, thp, ("", "")) is None  # not glibc
    assert hugepage_env({}, tmp_path / "missing", glibc) is None
    thp.write_text("always madvise [never]\n")
    assert hugepage_env({}, thp, glibc) is None


def test_measure_on_hugepages_reexecs_only_the_command(monkeypatch):
    from cepd_deploy.cli import common

    calls = []
    monkeypatch.setattr(common.os, "execve", lambda *a: calls.append(a))
    monkeypatch.setattr(common, "hugepage_env", lambda: {"GLIBC_TUNABLES": common.HUGETLB})
    monkeypatch.setattr(common.sys, "argv", ["/usr/bin/cepd-deploy", "bench", "--repeats", "5"])
    common.measure_on_hugepages()  # main() called from Python (this test): never
    assert calls == []
    monkeypatch.setattr(common, "COMMAND_PROCESS", True)
    common.measure_on_hugepages()
    exe, argv, env = calls[0]
    assert exe == sys.executable
    assert argv == [sys.executable, *common.command_argv(["bench", "--repeats", "5"])]
    assert "-m" not in argv and argv[-2:] == ["--repeats", "5"]  # never `-m`: it imports from the cwd
    assert env["GLIBC_TUNABLES"] == common.HUGETLB
