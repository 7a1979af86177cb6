"""`python -m agent.cli`: the `evidock` command."""

import sys

from agent.cli import main

sys.exit(main())
