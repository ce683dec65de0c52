"""Start-up: the command's parser, --help, --version and argument errors import nothing heavy
(``python -X importtime`` lists what a process imports), and ``import cepd_deploy`` sets no
environment variable; the command itself sets OMP_WAIT_POLICY (see cepd_deploy.process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cepd_deploy.process import PROCESS_ENV

#: top-level packages that take seconds to import (or pull in those that do)
HEAVY = {"torch", "numpy", "onnx", "onnxruntime", "tvm", "matplotlib", "scipy", "sympy", "ml_dtypes",
         "yaml", "jinja2", "tqdm", "PIL"}  # fmt: skip
#: runs the command as its console script does, with the arguments after the code
COMMAND = "import sys; sys.argv[0] = 'cepd-deploy'; from cepd_deploy.cli import entry; entry()"


def _env() -> dict:
    """This environment less the variables the command sets (to see that it sets them)."""
    return {k: v for k, v in os.environ.items() if k not in PROCESS_ENV}


#: prepended to the code: at exit, list ``sys.modules`` (importtime misses importlib's imports)
AT_EXIT = (
    "import atexit, sys\n"
    "def _loaded():\n"
    "    sys.stderr.write(''.join(f'loaded: {m}\\n' for m in sorted(sys.modules)))\n"
    "atexit.register(_loaded)\n"
)


def _imports(code: str, *args: str, cwd=None) -> tuple[set[str], subprocess.CompletedProcess]:
    """(the modules ``python -X importtime -c code args`` imported, the finished process)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", AT_EXIT + code, *args],
                          capture_output=True, text=True, env=_env(), cwd=cwd)  # fmt: skip
    lines = done.stderr.splitlines()
    timed = {line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")}
    loaded = {line.split(": ", 1)[1] for line in lines if line.startswith("loaded: ")}
    assert loaded, done.stderr[-2000:]
    return timed | loaded, done


def _heavy(names: set[str]) -> list[str]:
    return sorted(n for n in names if n.split(".")[0] in HEAVY)


def test_the_parser_imports_nothing_heavy():
    names, done = _imports("import cepd_deploy.cli; cepd_deploy.cli.parser()")
    assert done.returncode == 0, done.stderr[-2000:]
    # every command's module was imported (and registered): the check saw them all
    from cepd_deploy.cli import COMMANDS

    assert {f"cepd_deploy.cli.{c}" for c in COMMANDS} <= names
    assert _heavy(names) == []


@pytest.mark.parametrize(
    "args, code, says",
    [
        (["--version"], 0, "cepd-deploy 0.1.0"),
        (["--help"], 0, "COMMAND"),
        (["bench", "--help"], 0, "--warmup"),
        (["analyze", "sequence", "--help"], 0, "--png"),
        (["convert", "--arch", "resnet20"], 2, "arguments are required"),  # an argparse error
        (["simulate", "resnet20", "--target", "tpu"], 2, "unknown target 'tpu'"),
        (["build", "resnet20", "--target", "eyeriss", "-o", "x"], 2, "targets that build"),
        (["convert", "--arch", "resnet20", "--flops-remaining", "0.5", "-o", "/no/such/dir/x.pt"], 2,
         "output folder does not exist"),
        (["export", "resnet20", "-o", "x.txt"], 2, "should end in .onnx"),
    ],
)  # fmt: skip
def test_help_version_and_argument_errors_import_nothing_heavy(args, code, says, tmp_path):
    names, done = _imports(COMMAND, *args, cwd=tmp_path)
    assert done.returncode == code, done.stderr[-2000:]
    assert says in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert _heavy(names) == []
    assert list(tmp_path.iterdir()) == []  # and wrote nothing


@pytest.mark.slow
def test_simulate_imports_no_runtime(tmp_path):
    """simulate loads the model (torch) and the simulator, not onnx, onnxruntime, TVM or matplotlib."""
    names, done = _imports(COMMAND, "simulate", "resnet20", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch" in names and "cepd_deploy.targets.eyeriss" in names
    assert [n for n in _heavy(names) if n.split(".")[0] in {"onnx", "onnxruntime", "tvm", "matplotlib"}] == []


def test_import_cepd_deploy_sets_no_environment_variable():
    code = ("import os; before = dict(os.environ)\n"
            "import cepd_deploy, cepd_deploy.cli\n"
            "cepd_deploy.cli.parser()\n"
            "public = [getattr(cepd_deploy, name) for name in cepd_deploy.__all__]  # the lazy ones too\n"
            "changed = sorted(k for k in {*before, *os.environ} if before.get(k) != os.environ.get(k))\n"
            "assert not changed, changed\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_command_sets_omp_wait_policy_unless_the_user_did(given, expected):
    code = ("import os, sys\nfrom cepd_deploy.cli import entry\nsys.argv = ['cepd-deploy', '--version']\n"
            "try:\n    entry()\nexcept SystemExit:\n    print(os.environ.get('OMP_WAIT_POLICY'))\n"
            "print('torch' in sys.modules)\n")  # fmt: skip
    env = _env() if given is None else {**_env(), "OMP_WAIT_POLICY": given}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-3:-1] == [expected, "False"]  # set before torch would load


def test_public_names_load_on_first_use():
    import cepd_deploy

    assert set(cepd_deploy.__all__) <= set(dir(cepd_deploy))
    from cepd_deploy import Plan, lower  # noqa: F401  (the lazy names import like any others)

    assert cepd_deploy.lower is lower and lower.__module__ == "cepd_deploy.frontend.lower"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cepd_deploy.nope  # noqa: B018
    from cepd_deploy import hw  # a subpackage, not a lazy name

    assert hw.__name__ == "cepd_deploy.hw"
