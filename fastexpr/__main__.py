"""``python -m fastexpr ...``: the ``fastexpr`` command (fastexpr.cli)."""
import sys

from .cli import main

sys.exit(main())
