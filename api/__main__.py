"""`python -m api`: the platform's command line (api/cli.py)."""

import sys

from api.cli import main

sys.exit(main())
