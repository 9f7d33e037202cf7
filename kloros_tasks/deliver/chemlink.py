"""The ZeroMQ side of the bridge: a publisher that knows when sending is safe.

The socket is an XPUB connected to the ChemBus proxy's XSUB endpoint.  On the wire it
is a publisher like any other, but unlike a plain PUB it *receives the subscriptions*
that the proxy forwards from its subscribers.  So the bridge sends a topic only when
(a) the socket monitor says the connection is up and (b) a subscription covering the
topic has arrived.  That removes the slow-joiner loss without sleeping and without
sending anything twice: until both hold, entries wait in Redis.

A topic is covered as soon as *one* subscriber asks for it, and a recorder that
subscribes to everything (``""``) covers every topic: the bridge cannot tell whether
CuriosityCore is among the subscribers.  Two waits narrow that gap where it is widest:
after connecting, nothing goes for SETTLE_S, while the proxy forwards the subscriptions
it holds; after the proxy comes back, nothing goes until every topic subscribed before
is subscribed again, or REJOIN_GRACE_S has passed (subscribers reconnect on their own
schedule, and the recorder may be first).

ZeroMQ contexts are created here, inside the bridge process, never before a fork.
"""

from __future__ import annotations

import logging
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger(__name__)
SNDHWM = 10_000
SETTLE_S = 0.2  # the proxy sends the subscriptions it holds at once on a new connection
REJOIN_GRACE_S = 10.0  # how long a reconnect waits for the topics subscribed before


class ChemLink:
    def __init__(self, endpoint: str, context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self.ctx = context or zmq.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.SNDHWM, SNDHWM)
        self.sock.setsockopt(zmq.LINGER, 1000)
        # Every subscribe *and* unsubscribe, including the unsubscriptions libzmq generates
        # when the proxy's connection dies: they reach us before a monitor event would.
        self.sock.setsockopt(zmq.XPUB_VERBOSER, 1)
        self.monitor = self.sock.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.connected = False  # one endpoint, so one connection at a time
        self.subscriptions: dict[bytes, int] = {}
        self.changes = 0  # counts connection and subscription changes: what may unblock a topic
        self.connected_at = 0.0  # monotonic time of the last connection
        self.seen: set[bytes] = set()  # every topic subscribed while this link lived
        self.sock.connect(endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)

    def pump(self, timeout_ms: int = 0) -> None:
        """Take in connection events and subscription messages, waiting up to ``timeout_ms``."""
        self.poller.poll(timeout_ms)
        # Monitor events travel on their own socket and may lag the data: never clear
        # subscriptions on CONNECTED (they may already have arrived), only on DISCONNECTED.
        while self.monitor.poll(0, zmq.POLLIN):
            self._on_monitor(recv_monitor_message(self.monitor))
        while self.sock.poll(0, zmq.POLLIN):
            self._on_subscription(self.sock.recv())

    def _on_monitor(self, event: dict) -> None:
        self.changes += 1
        if event["event"] == zmq.EVENT_CONNECTED:
            self.connected = True
            self.connected_at = time.monotonic()
            log.info("connected to ChemBus proxy at %s", self.endpoint)
        elif event["event"] == zmq.EVENT_DISCONNECTED and self.connected:
            self.connected = False
            # The proxy's subscriptions went with it; it resends them on reconnect.
            self.subscriptions.clear()
            log.warning("ChemBus proxy at %s went away; holding questions", self.endpoint)

    def _on_subscription(self, frame: bytes) -> None:
        if not frame:
            return
        topic = frame[1:]
        self.changes += 1
        if frame[0] == 1:
            self.subscriptions[topic] = self.subscriptions.get(topic, 0) + 1
            self.seen.add(topic)
        elif frame[0] == 0 and topic in self.subscriptions:
            self.subscriptions[topic] -= 1
            if self.subscriptions[topic] <= 0:
                del self.subscriptions[topic]

    def ready(self, topic: str) -> bool:
        """True when a send of ``topic`` would reach at least one subscriber.

        Checked right before each send: polling first makes libzmq process a pending
        disconnect, so a send never goes into a connection already known to be dead.
        """
        self.pump(0)
        if not self.connected or not self._settled():
            return False
        t = topic.encode()
        return any(t.startswith(prefix) for prefix in self.subscriptions)

    def settling(self) -> bool:
        """Connected, but still inside the waits after connecting: readiness may change
        with no event to announce it, so callers look again shortly."""
        return self.connected and not self._settled()

    def _settled(self) -> bool:
        """Long enough connected for the subscriptions to be back (see the module's doc)."""
        since = time.monotonic() - self.connected_at
        if since < SETTLE_S:
            return False
        if self.seen <= self.subscriptions.keys():
            return True
        if since < REJOIN_GRACE_S:
            return False
        # Whoever did not come back within the grace has left: the next reconnect
        # does not wait for them again.
        self.seen = set(self.subscriptions)
        return True

    def send(self, topic: str, envelope_json: str) -> None:
        """The 2-frame ChemBus message ``[signal, envelope-json]``."""
        self.sock.send_multipart([topic.encode(), envelope_json.encode()])

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close()
        self.ctx.term()
