"""[listen] port: one listener, the protocol told by the first bytes (here the line door;
the real doors' own tests cover psql, redis-py and pymongo on one port)."""

from __future__ import annotations

import datetime
import importlib.util
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ogelkit.testing import gateway_thread, isolated_plugins, minimal_config

_spec = importlib.util.spec_from_file_location("linegate", Path(__file__).with_name("linegate.py"))
assert _spec is not None and _spec.loader is not None
linegate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(linegate)


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def _config(listen_extra: str = "") -> str:
    return minimal_config().replace(
        "http = 0", f"http = 0\nport = 0\nsniff_timeout = \"500ms\"\n{listen_extra}"
        "ports = { line = 0 }") + '''
[backends.lines]
type = "line"

[tenants.acme]
tier = "pro"
password = "acme-pass"

[tenants.acme.databases.main]
backend = "lines"
'''


def _closed_by_peer(sock: socket.socket) -> bool:
    """Closed by the gateway: EOF, or a reset (it had unread bytes of ours)."""
    try:
        return sock.recv(10) == b""
    except ConnectionResetError:
        return True


def _talk(sock: socket.socket, *lines: str) -> list[str]:
    out, buf = [], b""
    for line in lines:
        sock.sendall(line.encode() + b"\n")
        while b"\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                return out
            buf += chunk
        first, buf = buf.split(b"\n", 1)
        out.append(first.decode())
    return out


@pytest.fixture
def plugins():
    return isolated_plugins(("line", linegate))


def test_the_one_port_serves_the_protocol_its_first_bytes_name(plugins):
    with gateway_thread(_config(), plugins=plugins) as gw:
        port = gw.port("port")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert _talk(sock, "AUTH acme acme-pass main", "PING") == ["OK", "PONG"]
        # a head split over several packets is still recognised
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"AU")
            time.sleep(0.05)
            assert _talk(sock, "TH acme acme-pass main", "PING") == ["OK", "PONG"]
        assert gw.metric("ogelkit_oneport_connections_total", protocol="line") == 2


def test_garbage_and_silence_are_closed_without_hurting_others(plugins):
    with gateway_thread(_config(), plugins=plugins) as gw:
        port = gw.port("port")
        good = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert _talk(good, "AUTH acme acme-pass main") == ["OK"]
        garbage = socket.create_connection(("127.0.0.1", port), timeout=5)
        garbage.sendall(b"\x00\x01GARBAGE-THAT-NO-DOOR-CLAIMS")
        assert _closed_by_peer(garbage)  # at once
        silent = socket.create_connection(("127.0.0.1", port), timeout=5)
        started = time.monotonic()
        assert _closed_by_peer(silent)  # after sniff_timeout
        assert 0.3 < time.monotonic() - started < 3
        assert _talk(good, "PING") == ["PONG"]
        assert gw.metric("ogelkit_oneport_connections_total", protocol="none") == 2
        for s in (good, garbage, silent):
            s.close()


def test_tls_is_terminated_and_the_protocol_sniffed_inside(plugins, tmp_path):
    cert, key = _self_signed(tmp_path)
    with gateway_thread(_config(f'tls_cert = "{cert}"\ntls_key = "{key}"\n'),
                        plugins=plugins) as gw:
        ctx = ssl.create_default_context(cafile=cert)
        raw = socket.create_connection(("127.0.0.1", gw.port("port")), timeout=5)
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            assert _talk(sock, "AUTH acme acme-pass main", "PING") == ["OK", "PONG"]
        assert gw.metric("ogelkit_oneport_connections_total", protocol="tls") == 1
