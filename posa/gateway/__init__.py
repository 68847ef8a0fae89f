"""The gateway: posa for programs and people over HTTP (docs/gateway.md, docs/web.md).

``posa.gateway.view`` is the live web view of a running system: names, services,
channels, queues and the migrations and failovers as they happen.
"""
