"""`python -m hostwatch` is the same as the `hostwatch` command."""

import sys

from hostwatch.cli import main

sys.exit(main())
