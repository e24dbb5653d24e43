"""`python -m edgellm.cli ...`: the same as the `edgellm` command."""

import sys

from edgellm.cli.main import main

sys.exit(main())
