"""``python -m af2cpu_plugin ...`` is the ``af2cpu`` command."""

import sys

from af2cpu_plugin.cli import main

if __name__ == "__main__":
    sys.exit(main())
