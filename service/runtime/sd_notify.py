"""systemd readiness notification (sd_notify), without a dependency: a unit of Type=notify
waits for READY=1 on the datagram socket systemd names in $NOTIFY_SOCKET. A no-op when not
started by systemd. $NOTIFY_SOCKET is systemd's protocol, not a setting: it is read here, not
in settings.py."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1\\nSTATUS=serving") to systemd; False when not under it."""
    path = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:  # systemd gone: nothing to tell, keep serving
        log.warning("sd_notify to %s failed: %s", path, exc)
        return False
    return True
