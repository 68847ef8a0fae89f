"""netagents: network-management agents that talk to each other by name.

The model user of posa (see docs/netagents.md).  One agent per router of a
simulated network; agents flood link-state changes to their neighbours by
name, recompute their routes by shortest paths, publish alerts on the event
channel ``events/netmgmt``, answer the admin service ``netmgmt/admin``, and
one of them migrates while traffic flows.

    python -m examples.netagents            all agents in one process
    python -m examples.netagents --multi    a dispatcher, a channel, and agents
                                            in several processes
    python -m examples.netagents --web      either, drawn live in a browser

Modules, each small: ``network`` (the simulated network and its scenario),
``routing`` (link state and Dijkstra), ``agent``, ``alerts``, ``admin``,
``handover`` (moving an agent to another process), ``outcome`` (the checks),
``scenario`` (the driver and the live view), ``allinone``, ``multi`` (the
launcher), ``node`` (one agent process) and ``web`` (``--web``: the page).
"""
