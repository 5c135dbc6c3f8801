import sys

from pymqueue.cli import main

sys.exit(main())
