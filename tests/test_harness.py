"""The shared harness itself: certificates verify as real clients verify them, nginx really serves."""

import ssl

import pytest

from tests.http import request
from tests.nginx import free_port


def _verify(pki, cert_file, trust, hostname="voice.example.test"):
    import socket
    import threading

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, pki.directory / "leaf-privkey.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(trust))
    try:
        with socket.create_connection(("127.0.0.1", port)) as raw, client_ctx.wrap_socket(raw, server_hostname=hostname):
            return None
    except ssl.SSLCertVerificationError as e:
        return e.verify_message
    finally:
        thread.join(5)
        listener.close()


def test_full_chain_verifies_and_a_bare_leaf_does_not(pki):
    leaf = pki.leaf()
    assert _verify(pki, leaf.fullchain, pki.root_pem) is None
    assert _verify(pki, leaf.cert, pki.root_pem) == "unable to get local issuer certificate"
    assert _verify(pki, leaf.fullchain, pki.root_pem, hostname="other.example.test").startswith("Hostname mismatch")


def test_expired_leaf_is_expired(pki):
    pki.leaf(expired=True)
    assert _verify(pki, pki.directory / "leaf-fullchain.pem", pki.root_pem) == "certificate has expired"


@pytest.mark.nginx
def test_nginx_serves(start_nginx):
    port = free_port()
    start_nginx(f"server {{ listen 127.0.0.1:{port}; location / {{ return 200 'hello'; }} }}", [port])
    status, _, body = request(port, "GET", "/")
    assert (status, body) == (200, b"hello")
