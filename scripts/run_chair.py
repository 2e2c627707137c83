"""Run the CHAIR job: the same as ``halluc chair``, for users who prefer a script (all options alike).

python scripts/run_chair.py --help
"""

from __future__ import annotations

import sys

from halluc.cli import main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "chair", *sys.argv[1:]]
    main()
