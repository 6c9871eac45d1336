import sys

from accessgate.cli import main

sys.exit(main())
