"""``python -m labbook.cli ARGS``: the ``labbook`` command (how rank 0 starts its DDP workers)."""

import sys

from labbook.cli.commands import main

sys.exit(main())
