"""`python -m sae ...` (see sae.cli)."""

import sys

from sae.cli import main

sys.exit(main())
