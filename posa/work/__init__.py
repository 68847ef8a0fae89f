"""Organising work among peers: Master-Slave, the work queue, pipes and filters.

Internal: users import the classes from ``posa`` (docs/work.md). One module
per concept, each pattern's state sans-IO beside the peers that drive it:

- ``jobstate`` (a master's schedule of subtasks, votes and hedging, sans-IO),
  ``masterslave`` (``Master`` and the split/merge strategies) and ``slave``;
- ``gather`` (scatter/gather to a group or a service's servers, by name);
- ``state`` (a queue's items, leases and the scaling rule, sans-IO),
  ``protocol`` (the queue's requests: one ``OpTable`` for the queue and its
  clients), ``queue`` (``WorkQueue``, the queue manager), ``worker``
  (``Worker``, ``Item``), ``sources`` and ``channelsource`` (where items come
  from), ``client`` (``submit``), ``progress`` (progress as text) and
  ``autoscale`` (worker processes started and stopped from the backlog);
- ``aio`` (the work patterns for asyncio);
- ``pipeline`` (``Pipeline``: stages joined by work queues).
"""
