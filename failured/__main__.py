"""``python -m failured`` is the ``failured`` command."""

import sys

from .cli import main

sys.exit(main())
