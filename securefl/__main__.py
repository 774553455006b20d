import sys

from securefl.cli.main import main

sys.exit(main())
