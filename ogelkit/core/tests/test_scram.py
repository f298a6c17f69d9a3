"""SCRAM-SHA-256 against the RFC 7677 test vector and a client written from the RFC."""

import base64
import hashlib
import hmac

import pytest

from ogelkit.scram import (
    ScramError,
    ScramServer,
    make_verifier,
    mock_verifier,
    parse_verifier,
    saslprep,
    verify_password,
)

RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")


def test_rfc7677_vector():
    verifier = make_verifier("pencil", salt=RFC_SALT, iterations=4096)
    server = ScramServer(verifier)
    server.first("n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    # The RFC's server nonce is fixed; ours is random, so replay the exchange with theirs.
    server._nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    server._server_first = (f"r={server._nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    final = server.final("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                         "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert final == "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def _client(password: str, server: ScramServer, nonce: str = "clientnonce123") -> str:
    first_bare = f"n=acme,r={nonce}"
    server_first = server.first(f"n,,{first_bare}")
    fields = dict(p.split("=", 1) for p in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(fields["s"]),
                                 int(fields["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = f"c=biws,r={fields['r']}"
    auth = f"{first_bare},{server_first},{without_proof}".encode()
    sig = hmac.digest(hashlib.sha256(client_key).digest(), auth, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, sig, strict=True))
    return server.final(f"{without_proof},p={base64.b64encode(proof).decode()}")


def test_exchange_accepts_right_password_and_refuses_wrong_one():
    verifier = make_verifier("s3cret")
    assert _client("s3cret", ScramServer(verifier)).startswith("v=")
    with pytest.raises(ScramError):
        _client("wrong", ScramServer(verifier))


def test_verifier_roundtrip_and_plain_password_check():
    v = make_verifier("hunter2")
    text = str(v)
    assert text.startswith("SCRAM-SHA-256$4096:") and "hunter2" not in text
    assert parse_verifier(text) == v
    assert verify_password(text, "hunter2")
    assert not verify_password(text, "hunter3")


def test_mock_verifier_is_stable_and_refuses_everything():
    secret = b"x" * 32
    assert mock_verifier("ghost", secret) == mock_verifier("ghost", secret)
    with pytest.raises(ScramError):
        _client("anything", ScramServer(mock_verifier("ghost", secret)))


@pytest.mark.parametrize("bad", ["", "n,,", "x,,n=a,r=b", "n,,n=a", "n,,n=a,r=b,m=ext"])
def test_malformed_client_first(bad):
    with pytest.raises(ScramError):
        ScramServer(make_verifier("p")).first(bad)


def test_channel_binding_required_but_not_offered():
    with pytest.raises(ScramError):
        ScramServer(make_verifier("p")).first("p=tls-server-end-point,,n=a,r=b")


def test_saslprep_maps_and_normalises():
    assert saslprep("I\u00adX") == "IX"  # soft hyphen is mapped to nothing
    assert saslprep("\u2168") == "IX"  # NFKC
    with pytest.raises(ValueError):
        saslprep("a\u0007b")  # control character is prohibited
