"""`[server] workers = N`: N processes serving the same listeners, so filterd uses every core.

- `shares`: how many workers, and each worker's part of the budgets that guard something
  shared (clamd's threads, memory);
- `listeners`: the sockets the parent opens (or receives from systemd) before any worker
  exists;
- `channel`: what a worker tells its parent (ready, reloading, stopping);
- `supervisor`: the parent: forks the workers, restarts one that dies, passes on SIGTERM and
  SIGHUP, tells systemd, serves the metrics of all of them.

The modules here import app.py, never the other way round except for `channel` and `shares`
(serve() runs inside each worker). The sessions in flight of every worker, in memory shared
by all of them, are filterd/endpoints/inflight.py: the endpoints read it, the supervisor
creates it.
"""
