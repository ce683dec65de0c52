import sys

from cepd_deploy.cli import main

sys.exit(main())
