"""A small, bounded load on one Herald, so that every series the dashboards show exists.

- readers: WebSocket clients (JSON protocol) that subscribe to a room, publish into it,
  ask for history and presence, answer pings, and make a few commands that fail
  (permission denied), so herald_commands_total has error results;
- a backend: server API calls of every kind, including failing ones (method error,
  400, 401, 404);
- a slow client that subscribes to a firehose and stops reading, until Herald cuts it
  off with 3008 (herald_outbound_queue_full_total, herald_disconnects_total{code="3008"});
- a user disconnected through the server API (3503);
- chat: a conversation (persisted `chat` namespace: store appends, Kafka egress) whose
  offline member has devices, so publications cause fallback pushes; direct
  send_push_notification calls; devices whose tokens the fake providers (see
  examples/push_fakes.rs) answer with "unregistered" (removed, registered again) or
  503 (retried until given up).

With several nodes (one --ws and one --api for each, in the same order) the readers,
API calls and pushes are spread over them, so rooms have members on every node and a
user is disconnected through another node's API; the slow client stays on the first.

Usage: python load.py --ws ws://127.0.0.1:PORT/connection/websocket
                      --api http://127.0.0.1:PORT [--ws ... --api ...]
                      --key KEY --secret SECRET [--duration 120]
Traffic goes only to the given (loopback) addresses and stops after --duration seconds.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
import urllib.error
import urllib.request

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

ROOMS = 3
READERS = 9
stats = {"pubs_received": 0, "api_calls": 0, "slow_closes": [], "kick_closes": []}


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token(user, secret):
    """An HS256 connection JWT with `sub` = user and no expiry."""
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps({"sub": user}).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def api_call(base, method, body, key):
    """POST /api/<method>; returns (HTTP status, parsed body or None)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}/api/{method}", data=data, method="POST",
                                 headers={"X-API-Key": key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    stats["api_calls"] += 1
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def pick(urls, node):
    return urls[node % len(urls)]


async def api(args, method, body, key=None, node=0):
    return await asyncio.to_thread(api_call, pick(args.api, node), method, body, key or args.key)


class Session:
    """One JSON-protocol connection: commands with ids, pings answered by the reader."""

    def __init__(self, ws):
        self.ws, self.ids = ws, itertools.count(1)

    async def send(self, **cmd):
        await self.ws.send(json.dumps({"id": next(self.ids), **cmd}))

    async def reply(self, **cmd):
        """Sends a command and waits for its reply (only before a reader task runs)."""
        cid = next(self.ids)
        await self.ws.send(json.dumps({"id": cid, **cmd}))
        while True:
            for line in str(await self.ws.recv()).split("\n"):
                msg = json.loads(line) if line.strip() else {}
                if msg.get("id") == cid:
                    return msg

    async def read_forever(self):
        async for frame in self.ws:
            for line in str(frame).split("\n"):
                if line.strip() == "{}":
                    await self.ws.send("{}")  # pong
                elif '"push"' in line:
                    stats["pubs_received"] += 1


async def open_session(args, user, node=0, **kw):
    ws = await connect(pick(args.ws, node), open_timeout=10, **kw)
    s = Session(ws)
    r = await s.reply(connect={"token": token(user, args.secret), "name": "ops-load"})
    if "error" in r:
        raise RuntimeError(f"connect {user}: {r['error']}")
    return s


async def reader(args, n, stop):
    room = f"room{n % ROOMS}"
    while not stop.is_set():
        try:
            s = await open_session(args, f"u{n}", node=n)
            await s.reply(subscribe={"channel": room, "recoverable": True})
            task = asyncio.create_task(s.read_forever())
            for i in itertools.count():
                if stop.is_set() or task.done():
                    break
                await s.send(publish={"channel": room, "data": {"from": n, "i": i}})
                if i % 10 == 0:
                    await s.send(history={"channel": room, "limit": 5})
                    await s.send(presence={"channel": room})
                    await s.send(subscribe={"channel": "personal:other"})  # 103
                    await s.send(publish={"channel": "elsewhere", "data": {}})  # 103
                await asyncio.sleep(0.2)
            task.cancel()
            await s.ws.close()
        except (OSError, ConnectionClosed, RuntimeError, asyncio.TimeoutError) as e:
            print(f"reader {n}: {e!r}; reconnecting", flush=True)
            await asyncio.sleep(1)


async def backend(args, stop):
    for i in itertools.count():
        if stop.is_set():
            return
        await api(args, "publish", {"channel": f"room{i % ROOMS}", "data": {"api": i}}, node=i)
        if i % 10 == 0:
            n = i // 10  # every node in turn gets the rarer calls
            await api(args, "broadcast", {"channels": ["room0", "room1"], "data": {"b": i}}, node=n)
            await api(args, "info", {}, node=n)
            await api(args, "presence_stats", {"channel": "room0"}, node=n)
            await api(args, "history", {"channel": "room1", "limit": 10}, node=n)
            await api(args, "channels", {"pattern": "room*"}, node=n)
            await api(args, "publish", {"data": {}}, node=n)  # method error: channel required
            await api(args, "publish", b"not json", node=n)  # 400
            await api(args, "info", {}, key="wrong-key", node=n)  # 401
            await asyncio.to_thread(api_call, pick(args.api, n), "no_such_method", {}, args.key)  # 404
        await asyncio.sleep(0.1)


async def slow_client(args, stop):
    """Subscribes to a firehose and reads nothing while 300 x 64 KB are published."""
    filler = "x" * 65536
    while not stop.is_set():
        try:
            # max_queue=1: websockets stops reading the socket once one frame waits.
            s = await open_session(args, "slow", max_queue=1, max_size=None)
            await s.reply(subscribe={"channel": "firehose"})
            for i in range(300):
                await api(args, "publish", {"channel": "firehose", "data": {"i": i, "pad": filler}})
            code = None
            try:
                while True:
                    await asyncio.wait_for(s.ws.recv(), timeout=30)
            except ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd else None
            except asyncio.TimeoutError:
                await s.ws.close()
            stats["slow_closes"].append(code)
            print(f"slow client closed with {code}", flush=True)
        except (OSError, ConnectionClosed, RuntimeError) as e:
            print(f"slow client: {e!r}", flush=True)
        await asyncio.sleep(20)


async def kicked_user(args, stop):
    """Connects as `kick` and is disconnected through the server API (3503), of the
    other node when there are two."""
    for r in itertools.count():
        if stop.is_set():
            return
        try:
            s = await open_session(args, "kick", node=r)
            await api(args, "disconnect", {"user": "kick"}, node=r + 1)
            try:
                await asyncio.wait_for(s.read_forever(), timeout=10)
            except ConnectionClosed as e:
                stats["kick_closes"].append(e.rcvd.code if e.rcvd else None)
        except (OSError, ConnectionClosed, RuntimeError, asyncio.TimeoutError) as e:
            print(f"kick: {e!r}", flush=True)
        await asyncio.sleep(5)


# Tokens examples/push_fakes.rs answers specially (the others get 200).
APNS_OK = "a0" * 32
APNS_DEAD = "dead" + "0" * 60
APNS_BUSY = "b0b0" + "0" * 60
FCM_OK, FCM_DEAD, FCM_BUSY = "ops-fcm-ok", "ops-fcm-dead", "ops-fcm-busy"
DEVICES = [("ios", APNS_OK), ("ios", APNS_DEAD), ("ios", APNS_BUSY),
           ("android", FCM_OK), ("android", FCM_DEAD), ("android", FCM_BUSY)]


async def chat_and_push(args, stop):
    """Chat publications with an offline member, and direct pushes."""
    await api(args, "conversation_create", {"channel": "chat:ops", "users": ["talker", "phone"]})
    for i in itertools.count():
        if stop.is_set():
            return
        if i % 10 == 0:  # dead tokens were removed by then: register them again
            for platform, tok in DEVICES:
                await api(args, "device_register", {"user": "phone", "platform": platform, "token": tok})
        await api(args, "publish", {"channel": "chat:ops", "data": {"text": f"hi {i}"}}, node=i)
        if i % 5 == 0:
            await api(args, "send_push_notification", {
                "recipient": {"filter": {"users": ["phone"]}},
                "notification": {"title": "ops", "body": f"direct {i}"}}, node=i // 5)
        await asyncio.sleep(0.5)


async def main():
    p = argparse.ArgumentParser()
    # One --ws and --api per node, in the same order; the load is spread over them.
    p.add_argument("--ws", required=True, action="append")
    p.add_argument("--api", required=True, action="append")
    p.add_argument("--key", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--duration", type=float, default=120)
    args = p.parse_args()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(reader(args, n, stop)) for n in range(READERS)]
    tasks += [asyncio.create_task(f(args, stop)) for f in (backend, slow_client, kicked_user, chat_and_push)]
    started = time.monotonic()
    while time.monotonic() - started < args.duration:
        await asyncio.sleep(5)
        print(f"load: {stats['pubs_received']} pushes received, {stats['api_calls']} API calls, "
              f"slow closes {stats['slow_closes']}, kick closes {stats['kick_closes'][-3:]}", flush=True)
    stop.set()
    await asyncio.wait(tasks, timeout=15)


if __name__ == "__main__":
    asyncio.run(main())
