"""Admission (internal): what a frame must pass before any handler sees it.

``gatekeeper`` (decode, validate, then the pluggable steps, counting each
refusal by reason), ``keys`` (the keyring), ``authenticator`` (HMAC-sealed
frames), ``acl`` (access rules), ``quotas`` (rates and requests in flight).
Users reach these through ``posa.security``; the package imports nothing.
"""
