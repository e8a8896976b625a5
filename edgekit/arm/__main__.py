"""`python -m edgekit.arm`: build the aarch64 environment for ARM emulation (once) and describe it."""
import sys

from .setup import main

sys.exit(main())
