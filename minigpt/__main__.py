"""``python -m minigpt ...`` is the ``minigpt`` command."""

import sys

from minigpt.cli.dispatch import main

sys.exit(main())
