"""FrontDoorContract on the line door (the smallest door on the core machinery), and proof
that the contract fails a door that breaks one of its rules."""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from ogelkit.model import Reject
from ogelkit.testing.frontdoor import FrontDoorContract

_spec = importlib.util.spec_from_file_location("linegate", Path(__file__).with_name("linegate.py"))
assert _spec is not None and _spec.loader is not None
linegate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(linegate)


def _exchange(port: int, *lines: str, timeout: float = 5.0) -> tuple[socket.socket, list[str]]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    out: list[str] = []
    buf = b""
    for line in lines:
        sock.sendall(line.encode() + b"\n")
        while b"\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                return sock, [*out, buf.decode()] if buf else out
            buf += chunk
        first, buf = buf.split(b"\n", 1)
        out.append(first.decode())
        if first.startswith(b"ERR"):
            break
    return sock, out


class TestLineDoorContract(FrontDoorContract):
    protocol = "line"
    backend = 'type = "line"'
    shutdown_marker = "ERR shutdown"
    extra_plugins = (("line", linegate),)
    entry_points = False

    @staticmethod
    def encode_reject(reject: Reject) -> str:
        return linegate.encode_reject(reject)

    def attempt(self, port: int, user: str, password: str, database: str) -> str:
        sock, out = _exchange(port, f"AUTH {user} {password} {database}", "PING")
        sock.close()
        return "ok" if out == ["OK", "PONG"] else " | ".join(out)

    def hold_idle(self, port: int, user: str, password: str, database: str) -> Callable[[], str]:
        sock, out = _exchange(port, f"AUTH {user} {password} {database}")
        assert out == ["OK"], out

        def told() -> str:
            sock.settimeout(10)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            sock.close()
            return data.decode()

        return told


class _LeakyDoor(linegate.LineFrontDoor):
    """Answers an unknown tenant differently from a wrong password (the bug the contract
    exists to catch)."""

    def bad_credentials(self, login, user):
        if login.entry is None:
            return login.bad_credentials(f'no tenant called "{user}"')
        return super().bad_credentials(login, user)


class _LeakyPlugin:
    import ogelkit as _ogelkit

    @staticmethod
    @_ogelkit.hookimpl
    def ogelkit_register_backends(register):
        register.backend(linegate.LineBackend)
        register.frontdoor(_LeakyDoor)


class _LeakyContract(TestLineDoorContract):
    __test__ = False
    extra_plugins = (("line", _LeakyPlugin),)


def test_the_contract_fails_a_door_that_tells_unknown_tenants_apart():
    contract = _LeakyContract()
    fixture = _LeakyContract.gw.__wrapped__  # the fixture's generator function
    gen = fixture(contract)
    gw = next(gen)
    try:
        with pytest.raises(AssertionError, match="unknown tenant must look like a wrong password"):
            contract.test_unknown_tenant_and_wrong_password_are_indistinguishable(gw)
        # the same gateway passes the rules the leaky door keeps
        contract.test_good_login_is_accepted_and_counted_once(gw)
    finally:
        gen.close()
