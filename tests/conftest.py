import pytest

from tests.daemon import Daemon

TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC = "https://voice.example.test"


@pytest.fixture
def start_daemon():
    """Start real ``twist voicebridge`` processes on free loopback ports; all are stopped after the test."""
    daemons = []

    def start(*args, env=None, wait=True, **kwargs):
        args = list(args)
        if not any(a.startswith("--listen") for a in args):
            args += ["--listen", "tcp:0:interface=127.0.0.1"]
        daemon = Daemon(args, env=env, **kwargs)
        daemons.append(daemon)
        return daemon.start(wait=wait)

    yield start
    for daemon in daemons:
        daemon.stop()


@pytest.fixture
def pki(tmp_path):
    """A fresh root CA and intermediate for this test (see tests/pki.py)."""
    from tests.pki import PKI

    return PKI(tmp_path / "pki")


from tests.nginx import start_nginx  # noqa: E402,F401  (a fixture, shared by every test module)
