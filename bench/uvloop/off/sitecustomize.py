"""Run any Python process with uvloop hidden, so that filterd runs on asyncio's own loop.

    PYTHONPATH=bench/uvloop/off .venv/bin/python -m bench.proxy ...

With this directory on PYTHONPATH, Python imports this module at startup (site): `import
uvloop` then fails as if it were not installed, whatever the virtual environment holds.
bench/uvloop/compare.py runs its asyncio contender this way.
"""

import sys

sys.modules["uvloop"] = None  # type: ignore[assignment]  # the import system's "not there"
