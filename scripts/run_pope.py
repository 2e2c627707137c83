"""Run the POPE job: the same as ``halluc pope``, for users who prefer a script (all options alike).

python scripts/run_pope.py --help
"""

from __future__ import annotations

import sys

from halluc.cli import main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "pope", *sys.argv[1:]]
    main()
