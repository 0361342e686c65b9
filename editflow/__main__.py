"""`python -m editflow` runs the command-line interface."""

import sys

from editflow.cli import main

sys.exit(main())
