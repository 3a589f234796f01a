"""``python -m hires_vlm.data.smr --sources DIR --out FILE``: the ``smr`` command on its own."""

import sys

from .cli import main

sys.exit(main())
