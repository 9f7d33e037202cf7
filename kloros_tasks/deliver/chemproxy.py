"""``kloros-tasks chem-proxy``: a ZeroMQ XSUB/XPUB proxy for hosts without KLoROS's own.

Publishers (the bridge) connect to the XSUB side (``KLOROS_CHEM_XSUB``), subscribers
(CuriosityCore) to the XPUB side (``KLOROS_CHEM_XPUB``).  The proxy runs steerable in
a thread so that SIGTERM/SIGINT stop it cleanly with a TERMINATE command.
"""

from __future__ import annotations

import logging
import threading

import zmq

log = logging.getLogger(__name__)


class ChemProxy:
    def __init__(self, xsub_endpoint: str, xpub_endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.xsub = self.ctx.socket(zmq.XSUB)
        self.xpub = self.ctx.socket(zmq.XPUB)
        for sock in (self.xsub, self.xpub):
            sock.setsockopt(zmq.LINGER, 0)
        self.xsub.bind(xsub_endpoint)
        self.xpub.bind(xpub_endpoint)
        self._control_addr = f"inproc://chem-proxy-control-{id(self)}"
        self._control = self.ctx.socket(zmq.PAIR)
        self._control.bind(self._control_addr)
        self._thread = threading.Thread(target=self._run, name="chem-proxy", daemon=True)

    def _run(self) -> None:
        control = self.ctx.socket(zmq.PAIR)
        control.connect(self._control_addr)
        try:
            zmq.proxy_steerable(self.xsub, self.xpub, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
            control.close(0)

    def start(self) -> ChemProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._control.send(b"TERMINATE")
        self._thread.join(5)
        for sock in (self._control, self.xsub, self.xpub):
            sock.close(0)
        self.ctx.term()


def run_proxy(xsub_endpoint: str, xpub_endpoint: str, stop: threading.Event) -> int:
    try:
        proxy = ChemProxy(xsub_endpoint, xpub_endpoint).start()
    except zmq.ZMQError as exc:
        log.error("cannot bind the proxy (%s, %s): %s", xsub_endpoint, xpub_endpoint, exc)
        return 1
    log.info("ChemBus proxy: publishers -> %s, subscribers -> %s", xsub_endpoint, xpub_endpoint)
    stop.wait()
    proxy.stop()
    log.info("ChemBus proxy stopped")
    return 0
