"""The ``ric`` command line and its tools: ``main`` (argument parsing), ``serve`` (``ric serve``: local Ray,
startup progress, stop) with ``placement`` (will the repository fit), ``haproxy`` (how HAProxy runs),
``ports`` (ports checked or chosen before the start), ``console`` (what the terminal shows, the log file)
and ``loopback_grpc`` (Serve's gRPC listeners on a loopback ``--host``), ``status`` (``ric status``), and
``ric perf`` (``perf`` for the load loops and report, ``perf_clients`` for its transports); ``arguments`` holds
the argument types they share.

On top of everything: may import ``cluster.app`` and the rooms below it. ``perf`` and ``perf_clients`` are
clients of any KServe v2 server and import no server code besides the datatype table.
"""
