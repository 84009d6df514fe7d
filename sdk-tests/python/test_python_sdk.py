"""A second judge: the official Python SDK (centrifuge-python, from PyPI)
against a live Herald, in both formats of the protocol. Run by .ci/run in a
virtual environment with the pinned SDK (requirements.txt):

    HERALD_BIN=target/debug/herald python -m unittest discover sdk-tests/python
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import tempfile
import time
import unittest
import urllib.request

from centrifuge import (
    Client,
    ClientEventHandler,
    PublicationContext,
    ServerPublicationContext,
    SubscriptionEventHandler,
)

SECRET = "python-sdk-secret"
API_KEY = "python-sdk-api-key"
HERE = os.path.dirname(os.path.abspath(__file__))
HERALD_BIN = os.environ.get("HERALD_BIN") or os.path.join(HERE, "..", "..", "target", "debug", "herald")
WAIT = 10.0

CONFIG = {
    "client": {"token": {"hmac_secret_key": SECRET}},
    "http_api": {"key": API_KEY},
    "log": {"level": "info"},
    "channel": {
        "namespaces": [
            {
                "name": "hist",
                "history_size": 100,
                "history_ttl": "300s",
                "force_recovery": True,
                "allow_subscribe_for_client": True,
                "allow_publish_for_subscriber": True,
                "allow_history_for_subscriber": True,
            }
        ]
    },
}


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token(claims: dict) -> str:
    """An HS256 JWT signed with the test secret."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(signature)}"


class Herald:
    """A Herald process on a free port of 127.0.0.1."""

    def __init__(self):
        self.dir = tempfile.TemporaryDirectory()
        config = os.path.join(self.dir.name, "config.json")
        with open(config, "w") as f:
            json.dump(CONFIG, f)
        self.log_path = os.path.join(self.dir.name, "herald.log")
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [HERALD_BIN, "serve", "-c", config, "--port", "0", "--address", "127.0.0.1",
             "--data-dir", os.path.join(self.dir.name, "data")],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env={**os.environ, "NO_COLOR": "1"},
        )
        deadline = time.monotonic() + WAIT
        self.port = None
        while self.port is None:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("Herald did not start: " + self.log_text())
            found = re.search(r"listening.*addr=127\.0\.0\.1:(\d+)", self.log_text())
            if found:
                self.port = int(found.group(1))
            else:
                time.sleep(0.05)

    def log_text(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    def api(self, method: str, body: dict) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/{method}",
            data=json.dumps(body).encode(),
            headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            reply = json.loads(response.read())
        if "error" in reply:
            raise AssertionError(f"{method}: {reply}")
        return reply.get("result", {})

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=WAIT)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.log.close()
            self.dir.cleanup()


class Publications(SubscriptionEventHandler, ClientEventHandler):
    """Collects publications, of a subscription or of server-side ones."""

    def __init__(self, protobuf: bool):
        self.protobuf = protobuf
        self.items: asyncio.Queue = asyncio.Queue()

    def payload(self, data):
        # Protobuf hands bytes; JSON the decoded value.
        return json.loads(data) if self.protobuf else data

    async def on_publication(self, ctx):
        if isinstance(ctx, (PublicationContext, ServerPublicationContext)):
            await self.items.put(self.payload(ctx.pub.data))

    async def next(self):
        return await asyncio.wait_for(self.items.get(), WAIT)


class PythonSdk(unittest.IsolatedAsyncioTestCase):
    def setUp(self):
        self.herald = Herald()

    def tearDown(self):
        self.herald.stop()

    async def client(self, user: str, protobuf: bool, events=None, claims=None) -> Client:
        client = Client(
            self.herald.url,
            events=events,
            token=token({"sub": user, **(claims or {})}),
            use_protobuf=protobuf,
            min_reconnect_delay=0.05,
            max_reconnect_delay=0.2,
        )
        await client.connect()
        await client.ready(timeout=WAIT)
        return client

    async def publish_and_receive(self, protobuf: bool):
        channel = f"hist:pubs-{protobuf}"
        client = await self.client("alice", protobuf)
        pubs = Publications(protobuf)
        sub = client.new_subscription(channel, events=pubs)
        await sub.subscribe()
        await sub.ready(timeout=WAIT)
        self.herald.api("publish", {"channel": channel, "data": {"from": "api"}})
        self.assertEqual(await pubs.next(), {"from": "api"})
        mine = {"from": "python"}
        await sub.publish(json.dumps(mine).encode() if protobuf else mine)
        self.assertEqual(await pubs.next(), mine)
        history = await sub.history(limit=10)
        self.assertEqual([p.offset for p in history.publications], [1, 2])
        await client.disconnect()

    async def test_json_publish_and_receive(self):
        await self.publish_and_receive(False)

    async def test_protobuf_publish_and_receive(self):
        await self.publish_and_receive(True)

    async def server_side_recovery(self, protobuf: bool):
        """The issue's reproduction: a token's channel in a force_recovery
        namespace; a forced reconnect; what was published meanwhile arrives
        after the SDK reconnects, once and in order."""
        channel = f"hist:server-side-{protobuf}"
        pubs = Publications(protobuf)
        client = await self.client("bob", protobuf, events=pubs, claims={"channels": [channel]})
        self.herald.api("publish", {"channel": channel, "data": {"n": 1}})
        self.assertEqual(await pubs.next(), {"n": 1})
        self.herald.api("disconnect", {"user": "bob", "disconnect": {"code": 4000, "reason": "come back"}})
        self.herald.api("publish", {"channel": channel, "data": {"n": 2}})
        self.herald.api("publish", {"channel": channel, "data": {"n": 3}})
        self.assertEqual([await pubs.next(), await pubs.next()], [{"n": 2}, {"n": 3}])
        self.herald.api("publish", {"channel": channel, "data": {"n": 4}})
        self.assertEqual(await pubs.next(), {"n": 4})
        # Nothing repeated: a duplicate would follow within moments.
        await asyncio.sleep(0.3)
        self.assertTrue(pubs.items.empty(), "a publication arrived twice")
        await client.disconnect()

    async def test_json_server_side_subscriptions_recover(self):
        await self.server_side_recovery(False)

    async def test_protobuf_server_side_subscriptions_recover(self):
        await self.server_side_recovery(True)


if __name__ == "__main__":
    unittest.main()
