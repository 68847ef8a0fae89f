"""Organising work among peers: Master-Slave, the work queue, pipes and filters.

Internal: users import the classes from ``posa`` (docs/work.md). One module
per concept, each pattern's state sans-IO beside the peers that drive it:

- ``jobstate`` (a master's schedule of subtasks and votes, sans-IO) and
  ``masterslave`` (``Master``, ``Slave`` and the split/merge strategies);
- ``state`` (a queue's items, leases and the scaling rule, sans-IO),
  ``protocol`` (the queue's requests: one ``OpTable`` for the queue and its
  clients), ``queue`` (``WorkQueue``, the queue manager), ``worker``
  (``Worker``, ``Item``), ``sources`` (where items come from), ``client``
  (``submit``) and ``progress`` (progress as text);
- ``pipeline`` (``Pipeline``: stages joined by work queues).
"""
