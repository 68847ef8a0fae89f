"""Who may speak for a name, and to whom: the public face of admission.

The pieces a user configures, each plugged into a ``Gatekeeper`` (and the
authenticator into ``Peer`` as well):

``Keyring``            the keys a process knows, read from a key file or from
                       ``POSA_KEY_*`` environment variables, never from code.
``HmacAuthenticator``  every frame carries an HMAC-SHA256 trailer made with a
                       shared key; receivers check it, the key's right to the
                       sender name, the clock, and replays.
``Acl``                which senders may send to which recipients, and which
                       keys may register which names (for the registry).
``RateLimiter``, ``Rate``, ``Quotas``, ``InFlight``
                       rates per connection and per sender, requests in flight.

The switch: ``from_env(name)`` returns an authenticator when ``POSA_KEYS`` or a
``POSA_KEY_*`` variable is set, else ``None``; pass it as
``Peer(..., authenticator=...)``.  ``acl_from_env()`` reads ``POSA_ACL``.  A
custom step implements the ``Authenticator``, ``Authorizer`` or ``Limiter``
protocol.  An authentication failure is said on both sides: a refused frame's
sender gets an unsealed, rate-limited refusal (``Gatekeeper(refusal_rate=...)``)
and a requester that cannot verify an answer raises ``Unauthorized`` naming the
key it lacks (``posa.admission.unverified``).  See docs/security.md.

The code lives in ``posa.admission`` (internal: ``keys``, ``authenticator``
with the trailer's byte layout, ``acl``, ``quotas``, ``gatekeeper``); this
module only names what is public.
"""
from __future__ import annotations

from posa.admission.acl import Acl, acl_from_env
from posa.admission.authenticator import HmacAuthenticator, authenticated_key, from_env
from posa.admission.gatekeeper import Authenticator, Authorizer, Gatekeeper, Limiter
from posa.admission.keys import Keyring
from posa.admission.quotas import InFlight, Quotas, Rate, RateLimiter

__all__ = ["Keyring", "HmacAuthenticator", "Acl", "from_env", "acl_from_env",
           "authenticated_key", "Gatekeeper", "Authenticator", "Authorizer", "Limiter",
           "RateLimiter", "Rate", "Quotas", "InFlight"]
