import sys

from selftaught.cli import main

sys.exit(main())
