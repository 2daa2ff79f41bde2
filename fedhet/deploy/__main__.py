"""``python -m fedhet.deploy``: see :mod:`fedhet.deploy.cli`."""

import sys

from fedhet.deploy.cli import main

sys.exit(main())
