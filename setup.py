"""Package layout beyond pyproject.toml: the top-level hw/ folder installs as cepd_deploy.hw."""

from setuptools import find_namespace_packages, find_packages, setup

packages = find_packages(include=["cepd_deploy", "cepd_deploy.*"])
packages += ["cepd_deploy.hw"] + [f"cepd_deploy.hw.{p}" for p in find_namespace_packages("hw")]

setup(
    packages=packages,
    package_dir={"cepd_deploy.hw": "hw"},
)
