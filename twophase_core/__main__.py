"""`python -m twophase_core ...` is the `twophase` command."""

import sys

from twophase_core.interfaces.cli import main

sys.exit(main())
