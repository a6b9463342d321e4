"""``python -m shmbench`` is the ``shmbench`` command."""

import sys

from shmbench.cli import main

sys.exit(main())
