"""``python -m xarray_modelfit``: the command line (guarded, so process pools can spawn)."""

import sys

from xarray_modelfit.cli import main

if __name__ == "__main__":
    sys.exit(main())
