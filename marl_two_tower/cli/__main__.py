"""``python -m marl_two_tower.cli``: the console script (used by ``torchrun``)."""

import sys

from marl_two_tower.cli.main import main

sys.exit(main())
