import sys

from swapd.cli import main

sys.exit(main())
