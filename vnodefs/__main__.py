"""`python -m vnodefs` = the vnodefs command."""

import sys

from vnodefs.cli import main

sys.exit(main())
