"""What the test suites and the benchmarks share, written once and imported as ``tests.support``.

One module per concept: ``ports`` (free loopback ports, waiting for a listener), ``waiting``
(``eventually``), ``redis_server`` (a real ``redis-server`` a test may pause, stall, kill and
start again), ``sentinel`` (a Sentinel group), ``processes`` (``loops-webhooks`` commands as
child processes, a supervisor restarting them, benchmark servers pinned to a core),
``resources`` (a process's CPU time and memory), ``loops_sender`` (events signed as Loops
signs them), ``postgres`` (a real PostgreSQL server), ``shop_databases`` (the shop databases
the effects tests write to). Conftests only turn these into fixtures.
"""
