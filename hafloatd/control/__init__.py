"""The control socket: how the OCF agent and ``hafloatd status`` talk to the daemon.

One JSON object per line each way over a Unix ``SOCK_STREAM`` socket
(docs/control-protocol.md). Modules, lowest first:

- ``protocol``: the wire vocabulary (``ControlRequest``, ``ControlReply``, ``parse_request``,
  limits); a leaf the controller builds its replies from.
- ``unixsock``: the socket file: directory, private bind and publish, removal, liveness of an
  existing socket, resolution of allowed users and groups.
- ``warnlimit``: ``WarningLimiter``: the per-peer limit on warnings a client can cause.
- ``exchange``: one request's answer under its deadline, and writing replies.
- ``server``: ``ControlServer``: connections, peer credentials, limits, reload, close.
- ``client``: ``request``/``request_sync``/``ControlConnection`` for tools and tests.

Nothing is re-exported here, so importing ``hafloatd.control.protocol`` stays light.
"""
