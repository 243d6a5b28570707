"""``python -m pr1d.sim``: the simulator without the rest of the pr1d command line."""

import sys

from pr1d.sim.cli import main

sys.exit(main())
