"""Run any Python process with uvloop's event loop, for measuring it (not a dependency).

    PYTHONPATH=bench/uvloop .venv/bin/python -m bench.proxy ...

With this directory on PYTHONPATH, Python imports this module at startup (site), so
`filterd serve` started by a bench runs `asyncio.run()` on uvloop. Needs
`.venv/bin/pip install uvloop`; without it, nothing changes (bench/uvloop/compare.py checks
that it is installed before it measures).
"""

import contextlib

with contextlib.suppress(ImportError):
    import uvloop

    uvloop.install()
