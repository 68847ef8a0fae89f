import sys

from posa.cli import main

sys.exit(main())
