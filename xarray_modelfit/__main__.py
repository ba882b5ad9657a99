import sys

from xarray_modelfit.cli import main

sys.exit(main())
