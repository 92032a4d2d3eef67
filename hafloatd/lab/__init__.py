"""The lab: a DigitalOcean simulator (API, metadata, reserved-IP proxy) and the failover drill.

Nothing here imports the daemon's side (doapi, metadata, controller, config): a fake that
shares code with what it tests hides the bugs both would share.
"""
