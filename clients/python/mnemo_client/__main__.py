"""`python -m mnemo_client …`: the command-line tool (see mnemo_client.cli)."""

import sys

from mnemo_client.cli import main

if __name__ == "__main__":
    sys.exit(main())
