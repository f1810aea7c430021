"""`python -m messenger` is the `messenger` command."""

import sys

from messenger.cli import main

sys.exit(main())
