"""The Event Channel pattern: publish-subscribe between processes through a named channel.

Internal; the public names are ``posa.EventChannel``, ``posa.Publisher``,
``posa.Subscriber``, ``posa.Event``, ``posa.Gap`` and ``posa.InvalidFilter``
(and the awaitable proxies under ``posa.aio``). One module per concept:

    service       EventChannel: ingest, control requests, block-policy park, chaining
    delivery      the channel's delivery thread: one for every subscription's lane
    lane          Lane, a subscription's delivery state (sans-IO): what to send, credit
    framing       Framer: what a subscription took, as delivery bodies
    publisher     Publisher, the publishing proxy (batched, fire and forget)
    subscriber    Subscriber, the subscribing proxy (leases, re-subscription)
    aio           AsyncPublisher, AsyncSubscriber
    protocol      the wire protocol: op table, publish and delivery bodies, limits
    core          ChannelCore, the sans-IO state machine (seqs, history, buffers)
    run           Run: the events of one publication as they travel
    subscription  Subscription: selection, bounded buffer, policy
    events        Event, Gap and SubscriberState (deliveries -> events, holes)
    predicate     content filters as data, compiled to a Predicate
"""
