"""Runtime (internal): the process's event loop and the threads it owns.

``reactor`` (one thread demultiplexes every input), ``leases`` (one thread
renews every registration), ``local`` (per-process singletons that a forked
child forgets).  The package imports nothing.
"""
