"""The ``ric`` command line and its tools: ``main`` (argument parsing), ``serve`` (``ric serve``: local Ray,
startup progress, stop) with ``placement`` (will the repository fit) and ``haproxy`` (how HAProxy runs), and
``ric perf`` (``perf`` for the load loops and report, ``perf_clients`` for its transports); ``arguments`` holds
the argument types they share.

On top of everything: may import ``cluster.app`` and the rooms below it. ``perf`` and ``perf_clients`` are
clients of any KServe v2 server and import no server code besides the datatype table.
"""
