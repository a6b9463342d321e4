"""``python -m shmbench.server``: see :mod:`shmbench.server.core`."""

import sys

from shmbench.server.core import main

sys.exit(main())
