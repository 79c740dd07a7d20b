"""Pure translation from legacy formats to canonical events (no I/O, no NATS).

Entry point for HL7 v2: :mod:`canonical.translate`. This package never imports
``router``, ``wrappers`` or ``legacy``.
"""
