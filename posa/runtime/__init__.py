"""Runtime (internal): the process's event loop and the threads it owns.

``reactor`` (one thread demultiplexes every input), ``leases`` (one thread
renews every registration), ``local`` (per-process singletons that a forked
child forgets), ``trace`` (W3C trace context in message headers),
``offload`` (the blocking calls of asyncio proxies, on a worker thread, off the loop),
``pools`` (thread pools a forked child leaves to its parent: ``Pool``).
The package imports nothing.
"""
