"""`python -m backend.cli`: the same as the `gem-labeler` command (workers are started this way)."""

import sys

from backend.cli import main

sys.exit(main())
