"""The registry on a NATS JetStream key-value bucket (``NatsRegistry``); needs the
``nats`` extra: ``pip install 'posa-messaging[nats]'``."""
