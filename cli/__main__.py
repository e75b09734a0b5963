"""`python -m maskrt.cli <verb> ...`: the `maskrt` command where its console script is not installed."""

import sys

from maskrt.cli.main import main

sys.exit(main())
