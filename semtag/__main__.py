import sys

from semtag.cli import main

sys.exit(main())
