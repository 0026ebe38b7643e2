"""``python -m deconv`` is the ``deconv`` command."""

import sys

from .commands.main import main

sys.exit(main())
