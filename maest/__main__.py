"""`python -m maest ...` is the `maest` command (so `accelerate launch -m maest` and `torchrun -m maest` work)."""

import sys

from .cli import main

sys.exit(main())
