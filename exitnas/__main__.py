import sys

from exitnas.cli import main

sys.exit(main())
