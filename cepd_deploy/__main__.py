"""``python -m cepd_deploy``: the ``cepd-deploy`` command."""

from cepd_deploy.cli import entry

entry()
