import sys

from nucseg.cli import main

sys.exit(main())
