"""python3 -m probe: the command line, from a checkout."""
import sys

from probe.cli import main

sys.exit(main())
