"""The in-sandbox agent: an envd-compatible daemon on the stdlib only.

Run as ``python3 -m hutch.agent --socket /run/hutch/agent.sock``. It serves the process and
filesystem Connect-RPC services, ``/files``, ``/health``, ``/envs`` and ``/init`` over HTTP/1.1.
"""
