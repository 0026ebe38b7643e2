"""``python -m deconv`` is the ``deconv`` command."""
import sys

from .cli import main

sys.exit(main())
