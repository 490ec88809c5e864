"""`python -m kerasflow` is the `kerasflow` command."""

import sys

from kerasflow.cli.main import main

sys.exit(main())
