"""The lab: the DigitalOcean simulator (``sim/``: API, metadata, reserved-IP proxy) and the
failover drill (``drill``, ``nodes``).

Nothing here imports the daemon's side (doapi, metadata, controller, config...): a fake that
shares code with what it tests hides the bugs both would share. ``tests/unit/test_public_api``
enforces it.
"""
