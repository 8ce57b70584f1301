"""Over-the-air model updates (docs/ota.md).

* :mod:`agent.ota.signing`   Ed25519 keys; bundle signatures (``signature.json`` over the exact
  ``manifest.json`` bytes) and signed JSON documents (update announcements, rollback commands).
* :mod:`agent.ota.archive`   the transfer format: a deterministic tar.gz of a signed bundle, and
  an unpacker that refuses links, absolute paths, ``..``, devices and oversized content.
* :mod:`agent.ota.announce`  the signed update announcement and rollback command (their target
  signed too: ``chorus.cmd.update/3``), and chunking.
* :mod:`agent.ota.transfer`  chunk assembly on disk (out of order, repeated, resumable) and HTTP
  download with resume.
* :mod:`agent.ota.store`     the on-device model store: ``models/<name>-<version>/``, atomic
  ``current``/``previous`` links, crash-safe state file, crash-loop rollback.
* :mod:`agent.ota.smoke`     the smoke test, run in a fresh interpreter.
* :mod:`agent.ota.install`   receive -> verify -> smoke test, as plain functions.
* :mod:`agent.ota.updater`   the agent side: MQTT subscriptions, the state machine, the switch
  between two windows, confirmation and automatic rollback.

Nothing here imports TensorFlow or modeltools; importing the package does no I/O.
"""
