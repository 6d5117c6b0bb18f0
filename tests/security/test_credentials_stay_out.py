"""hutch's API credentials never reach a sandbox through the data plane.

Whatever answers on a sandbox's agent socket is under the control of root inside, which can put
its own server there. A client that sends its API key with every request (a default header
on its HTTP client) must not hand that key to the sandbox: with it, the sandbox could list the
tenant's other sandboxes and read their access tokens.
"""

from __future__ import annotations

import concurrent.futures

import httpx

FAKE_AGENT = r'''
import os, socket
path = "/run/hutch/agent.sock"
s = socket.socket(socket.AF_UNIX)
s.bind(path + ".fake")
s.listen(64)
os.replace(path + ".fake", path)
while True:
    c, _ = s.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        data = c.recv(65536)
        if not data:
            break
        head += data
    body = b"FAKE\n" + head
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
              + body)
    c.close()
'''


def test_api_key_and_bearer_token_are_not_forwarded_to_the_agent(hutch_server, sbx):
    sbx.files.write("/tmp/fake.py", FAKE_AGENT)
    sbx.commands.run("python3 /tmp/fake.py", background=True, user="root")
    key = hutch_server.api_key
    headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "X-API-KEY": key,
               "Authorization": f"Bearer {key}", "X-Access-Token": sbx._envd_access_token or ""}

    def ask(_):
        try:
            return httpx.get(hutch_server.url + "/envs", headers=headers, timeout=30).content
        except httpx.HTTPError:
            return b""

    seen = []
    for _ in range(20):
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            seen += [a for a in pool.map(ask, range(32)) if a.startswith(b"FAKE")]
        if seen:
            break
    assert seen, "the sandbox's own server never answered"
    for answer in seen:
        assert key.encode() not in answer, answer
        assert b"x-access-token" in answer.lower()   # what the agent does need still arrives
