import sys

from edsr.cli import main

sys.exit(main())
