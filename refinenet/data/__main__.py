"""`python -m refinenet.data` is `refinenet-data`."""
import sys

from refinenet.data.cli import main

sys.exit(main())
