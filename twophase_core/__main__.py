"""`python -m twophase_core ...` is the `twophase` command."""

import sys

from .cli import main

sys.exit(main())
