"""``python -m kloros_tasks.cli``: the ``kloros-tasks`` command without its script."""

import sys

from kloros_tasks.cli.main import main

sys.exit(main())
