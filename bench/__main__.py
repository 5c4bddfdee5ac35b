"""``python -m bench``: the same as ``moorage bench``."""

import sys

from moorage.bench.cli import main

sys.exit(main())
