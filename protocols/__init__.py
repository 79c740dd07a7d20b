"""Protocol code shared by the intake adapters (``wrappers``) and legacy delivery (``legacy``).

The lowest layer: it imports nothing of ``wrappers``, ``legacy``, ``canonical`` or
``router`` (``tests/test_layering.py`` enforces it). One MLLP codec
(:mod:`protocols.mllp`), one SFTP session with its timeouts (:mod:`protocols.sftp`),
one backoff with full jitter (:mod:`protocols.backoff`). Errors here are protocol
errors; each caller turns them into its own (``SourceUnavailable``, ``LegacyError``,
``DeliveryUnavailable``...).
"""
