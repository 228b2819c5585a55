"""Import this first in a subprocess: every network attempt is refused and recorded.

At exit it prints ``NETWORK_ATTEMPTS=<n>`` and the targets, so a test can assert zero.
"""
import atexit
import socket
import sys

ATTEMPTS: list[str] = []


def _refuse(kind):
    def guard(*args, **kwargs):
        target = args[1] if kind == "connect" and len(args) > 1 else (args[0] if args else kwargs)
        if kind == "connect" and isinstance(target, (str, bytes)):  # AF_UNIX sockets are local
            return _orig_connect(*args, **kwargs)
        ATTEMPTS.append(f"{kind}:{target!r}")
        raise OSError(f"network disabled by test guard ({kind} {target!r})")
    return guard


_orig_connect = socket.socket.connect
socket.socket.connect = _refuse("connect")
socket.socket.connect_ex = _refuse("connect")
socket.create_connection = _refuse("create_connection")
socket.getaddrinfo = _refuse("getaddrinfo")
socket.gethostbyname = _refuse("gethostbyname")


@atexit.register
def _report():
    sys.stdout.write(f"\nNETWORK_ATTEMPTS={len(ATTEMPTS)}\n" + "".join(f"  {a}\n" for a in ATTEMPTS))
    sys.stdout.flush()
