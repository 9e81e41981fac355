"""A TCP proxy of the suite's own on 127.0.0.1 that can delay everything it forwards: the
`slow-link` fault (this kernel has no netem, and no toxiproxy is to be had). The robots reach
each coordinator through one, so their link can be slowed without touching the cluster."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

CHUNK = 65536


class DelayProxy:
    """Listens on 127.0.0.1:<free port> and forwards every connection to `target`
    (host:port), holding each chunk `delay_s` (0 by default) before passing it on."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = target
        self._target = (host, int(port))
        self.delay_s = 0.0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name=f"proxy-{self.address}", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                _close(sock)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                _close(client)  # the target is down: the client sees the connection refused
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK):
                if self.delay_s > 0:
                    time.sleep(self.delay_s)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)
            with self._lock:
                self._sockets = [s for s in self._sockets if s not in (source, sink)]


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
