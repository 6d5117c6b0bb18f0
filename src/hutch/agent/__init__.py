"""The in-sandbox agent: an envd-compatible daemon on the stdlib only.

Contract with whoever starts it (the hutch runtime/server):

* Command line: ``python3 -S -m hutch.agent --socket /run/hutch/agent.sock`` with
  ``PYTHONPATH`` pointing at a read-only copy of the ``hutch`` package. ``--listen HOST:PORT``
  serves TCP as well (or instead); ``--ready-fd N`` writes ``ready\\n`` to fd N once serving.
  The socket is created mode 0600 and appears only when it already accepts connections.
  Start-up is dominated by imports: ship the package with ``__pycache__`` compiled for the
  template's Python minor version (``python3 -m compileall``), as a read-only mount cannot
  cache them and every start would compile again (about 25 ms); ``-S`` skips ``site``.
* Environment: every process the agent starts inherits the agent's own environment (the
  template's variables), minus ``PYTHONPATH`` and the other interpreter settings in
  :data:`hutch.agent.state.PRIVATE_ENV`.
* ``POST /init`` with ``{"envVars": {..}, "accessToken": str|null, "defaultUser": str,
  "defaultWorkdir"?: str}`` sets the sandbox env merged into every process, the token every
  route but ``/health`` then requires (``X-Access-Token``, or a signed ``/files`` URL), the
  default user (204; 400 if the user does not exist) and where commands naming no directory
  start (a template's WORKDIR; else the user's home). Once a token is set, ``/init`` itself needs it. Re-sending it is harmless.
* ``GET /health`` answers 204 without auth. SIGTERM ends the agent at once, killing the process
  groups it started.

Routes: ``process.Process/*`` and ``filesystem.Filesystem/*`` (Connect-RPC, JSON codec),
``GET/POST /files``, ``GET /envs``, ``POST /init``, ``GET /health``, over HTTP/1.1, and
``CONNECT 127.0.0.1:<port>`` (a tunnel to a port on the sandbox's loopback: how the server
reaches the ports of a sandbox without a network).
"""
