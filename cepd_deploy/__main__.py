from cepd_deploy.cli import entry

entry()
