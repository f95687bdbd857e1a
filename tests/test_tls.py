"""TLS on the daemon itself: certbot's files as they are, the whole chain, TLS 1.2+, reload on SIGHUP."""

from __future__ import annotations

import datetime
import shutil
import signal
import ssl

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import threads

from tests.daemon import usage_error
from tests.tlsclient import handshake, trust_root
from voicebridge.tls import listen as tls
from voicebridge.tools.twiliosim import CallScript, play_call

# The description Twisted's parser understands, pinned: the private tokenizer is used in one place.


def test_split_description_follows_twisted_quoting():
    args, kwargs = tls.split_description(r"ssl:443:interface=\:\::privateKey=/etc/a\:b/privkey.pem:certKey=full.pem")
    assert args == ["ssl", "443"]
    assert kwargs == {"interface": "::", "privateKey": "/etc/a:b/privkey.pem", "certKey": "full.pem"}


def test_parse_ssl_reads_every_key():
    spec = tls.parse_ssl(
        "ssl:443:privateKey=k.pem:certKey=c.pem:extraCertChain=chain.pem:interface=127.0.0.1:backlog=100:dhParameters=dh.pem"
    )
    assert spec == tls.TLSListen(443, "k.pem", "c.pem", "chain.pem", "dh.pem", "127.0.0.1", 100)
    assert tls.parse_ssl("ssl:port=8443:privateKey=both.pem").cert_key == "both.pem", "certKey defaults to privateKey"


@pytest.mark.parametrize(
    "description, message",
    [
        ("ssl:443:privateKey=k.pem:certkey=c.pem", "unknown key(s) certkey"),
        ("ssl:443:privateKey=k.pem:sslmethod=TLSv1_METHOD", "sslmethod is not supported"),
        ("ssl:443:certKey=c.pem", "privateKey= is required"),
        ("ssl:https:privateKey=k.pem", "'https' is not a TCP port number"),
        ("ssl:443:8443:privateKey=k.pem", "expected ssl:PORT"),
        ("ssl:443:privateKey=k.pem:backlog=0", "backlog '0'"),
    ],
)
def test_parse_ssl_names_the_mistake(description, message):
    with pytest.raises(tls.TLSConfigError, match="--listen ssl:") as raised:
        tls.parse_ssl(description)
    assert message in str(raised.value)


# Loading and checking the files.


def test_fullchain_loads_leaf_first_without_warnings(pki):
    leaf = pki.leaf()
    material = tls.load_material(str(leaf.key), str(leaf.fullchain))
    assert [c.subject for c in material.chain] == [leaf.certificate.subject, pki.intermediate.cert.subject]
    assert material.warnings == () and not material.expired
    assert material.summary()["names"] == ["voice.example.test", "localhost", "127.0.0.1", "::1"]


def test_leaf_alone_is_served_with_a_warning_about_the_chain(pki):
    leaf = pki.leaf()
    material = tls.load_material(str(leaf.key), str(leaf.cert))
    assert len(material.chain) == 1
    (warning,) = material.warnings
    assert "not the intermediate" in warning and "31910" in warning and "fullchain.pem" in warning
    with_chain = tls.load_material(str(leaf.key), str(leaf.cert), str(leaf.chain))
    assert len(with_chain.chain) == 2 and with_chain.warnings == ()


def test_fullchain_plus_extra_chain_sends_the_intermediate_once(pki):
    leaf = pki.leaf()
    assert len(tls.load_material(str(leaf.key), str(leaf.fullchain), str(leaf.chain)).chain) == 2


def test_combined_key_and_chain_file(pki, tmp_path):
    leaf = pki.leaf()
    combined = tmp_path / "combined.pem"
    combined.write_bytes(leaf.key.read_bytes() + leaf.fullchain.read_bytes())
    spec = tls.parse_ssl(f"ssl:443:privateKey={combined}")
    assert len(tls.load_material(spec.private_key, spec.cert_key).chain) == 2


def test_key_of_another_certificate_is_refused(pki):
    first, second = pki.leaf("first"), pki.leaf("second")
    with pytest.raises(tls.TLSConfigError, match="does not belong to the certificate"):
        tls.load_material(str(second.key), str(first.fullchain))


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "No such file or directory"),
        (b"", "no PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "does not parse"),
    ],
)
def test_unreadable_certificate_files_are_named(pki, tmp_path, content, message):
    leaf = pki.leaf()
    path = tmp_path / "fullchain.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(tls.TLSConfigError, match=message) as raised:
        tls.load_material(str(leaf.key), str(path))
    assert str(path) in str(raised.value)


def test_bad_keys_are_named(pki, tmp_path):
    leaf = pki.leaf()
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    with pytest.raises(tls.TLSConfigError, match="no PEM private key"):
        tls.load_material(str(empty), str(leaf.fullchain))
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(leaf.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
        )
    )
    with pytest.raises(tls.TLSConfigError, match="encrypted"):
        tls.load_material(str(encrypted), str(leaf.fullchain))


def test_expired_and_expiring_certificates_are_warned_about(pki):
    leaf = pki.leaf(expired=True)
    material = tls.load_material(str(leaf.key), str(leaf.fullchain))
    assert material.expired and "expired on" in material.warnings[0]
    fresh = pki.leaf("fresh")
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=25)
    warning = tls.load_material(str(fresh.key), str(fresh.fullchain), now=soon).warnings[0]
    assert "expires in" in warning and "SIGHUP" in warning


def test_chain_out_of_order_is_warned_about(pki, tmp_path):
    leaf = pki.leaf()
    reversed_chain = tmp_path / "reversed.pem"
    reversed_chain.write_bytes(leaf.chain.read_bytes() + leaf.cert.read_bytes())
    with pytest.raises(tls.TLSConfigError, match="does not belong"):
        tls.load_material(str(leaf.key), str(reversed_chain))  # the first certificate is the one served
    other = pki.leaf("other")
    mixed = tmp_path / "mixed.pem"
    mixed.write_bytes(leaf.cert.read_bytes() + other.cert.read_bytes() + leaf.chain.read_bytes())
    assert any("out of order" in w for w in tls.load_material(str(leaf.key), str(mixed)).warnings)


def test_context_refuses_tls_1_0_and_1_1(pki):
    leaf = pki.leaf()
    context = tls.certificate_options(tls.load_material(str(leaf.key), str(leaf.fullchain))).getContext()
    options = context.set_options(0)  # returns the options in force
    assert options & SSL.OP_NO_TLSv1 and options & SSL.OP_NO_TLSv1_1 and options & SSL.OP_NO_SSLv3


# The daemon, for real.


def ssl_listen(leaf_key, cert_key, extra=""):
    return f"ssl:0:interface=127.0.0.1:privateKey={leaf_key}:certKey={cert_key}{extra}"


@pytest.fixture
def certbot_files(pki, tmp_path):
    """A certbot-style live/ directory whose files the test can replace, as a renewal does."""
    live = tmp_path / "live"
    live.mkdir()
    leaf = pki.leaf()
    shutil.copy(leaf.key, live / "privkey.pem")
    shutil.copy(leaf.fullchain, live / "fullchain.pem")
    return live, leaf


def test_daemon_serves_the_whole_chain_from_fullchain(start_daemon, pki, certbot_files):
    live, leaf = certbot_files
    daemon = start_daemon("--listen", ssl_listen(live / "privkey.pem", live / "fullchain.pem"))
    seen = handshake(daemon.port, pki.root_pem)  # the client trusts the root only: it needs the intermediate
    assert seen.leaf == leaf.certificate
    loaded = daemon.named("tls.loaded")[0]
    assert loaded["chain_length"] == 2 and loaded["sha256"] == tls.load_material(str(leaf.key), str(leaf.fullchain)).fingerprint
    assert daemon.named("service.listening")[0]["addresses"].startswith("ssl 127.0.0.1:")
    assert not daemon.named("tls.warning")


def test_daemon_with_the_leaf_alone_says_why_clients_fail(start_daemon, pki):
    leaf = pki.leaf()
    daemon = start_daemon("--listen", ssl_listen(leaf.key, leaf.cert))
    warning = daemon.wait_for(lambda e: e.get("event_name") == "tls.warning")
    assert "31910" in warning["warning"]
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
        handshake(daemon.port, pki.root_pem)
    fixed = start_daemon("--listen", ssl_listen(leaf.key, leaf.cert, f":extraCertChain={leaf.chain}"))
    assert handshake(fixed.port, pki.root_pem).leaf == leaf.certificate


def test_daemon_speaks_tls_1_2_and_1_3_and_refuses_1_1(start_daemon, pki, certbot_files):
    live, _ = certbot_files
    daemon = start_daemon("--listen", ssl_listen(live / "privkey.pem", live / "fullchain.pem"))
    assert handshake(daemon.port, pki.root_pem, version=ssl.TLSVersion.TLSv1_2).version == "TLSv1.2"
    assert handshake(daemon.port, pki.root_pem, version=ssl.TLSVersion.TLSv1_3).version == "TLSv1.3"
    for old in (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1):
        with pytest.raises(ssl.SSLError):
            handshake(daemon.port, pki.root_pem, version=old)


def test_daemon_refuses_to_start_with_unusable_files(pki, tmp_path):
    leaf = pki.leaf()
    other = pki.leaf("other")
    for args, expected in [
        ([ssl_listen(tmp_path / "missing.pem", leaf.fullchain)], f"privateKey {tmp_path / 'missing.pem'}: No such file"),
        ([ssl_listen(other.key, leaf.fullchain)], "does not belong to the certificate"),
        (["ssl:0:privateKey=k.pem:sslmethod=TLSv1_METHOD"], "sslmethod is not supported"),
    ]:
        assert expected in usage_error(["--listen", *args])


@pytest_twisted.inlineCallbacks
def test_sighup_loads_a_renewed_certificate_without_dropping_a_call(start_daemon, pki, certbot_files):
    from twisted.internet import reactor

    live, old = certbot_files
    daemon = start_daemon("--listen", ssl_listen(live / "privkey.pem", live / "fullchain.pem"))
    url = f"wss://voice.example.test:{daemon.port}/twilio-media"
    # A call that lasts through the renewal: 150 frames of 20 ms.
    call = play_call(reactor, url, CallScript(frames=150), trust_root=trust_root(pki), connect_to=("127.0.0.1", daemon.port))
    yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "call.started")

    renewed = pki.leaf("renewed")
    shutil.copy(renewed.key, live / "privkey.pem")
    shutil.copy(renewed.fullchain, live / "fullchain.pem")
    daemon.signal(signal.SIGHUP)
    reloaded = yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "tls.reloaded")
    assert reloaded["sha256"] == tls.load_material(str(renewed.key), str(renewed.fullchain)).fingerprint
    seen = yield threads.deferToThread(handshake, daemon.port, pki.root_pem)
    assert seen.leaf == renewed.certificate != old.certificate

    outcome = yield call.addTimeout(30, reactor)
    assert len(outcome.sent) == 150 and outcome.received == outcome.sent, "the call begun before the reload went on"
    assert outcome.close_code == 1000
    assert daemon.proc.poll() is None


@pytest.mark.parametrize("breakage", ["garbage", "key-mismatch", "expired", "missing"])
def test_sighup_with_broken_files_keeps_the_old_certificate(start_daemon, pki, certbot_files, breakage):
    live, old = certbot_files
    daemon = start_daemon("--listen", ssl_listen(live / "privkey.pem", live / "fullchain.pem"))
    if breakage == "garbage":
        (live / "fullchain.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        reason = "does not parse"
    elif breakage == "key-mismatch":  # a renewal caught half-copied: new certificate, old key
        shutil.copy(pki.leaf("renewed").fullchain, live / "fullchain.pem")
        reason = "does not belong to the certificate"
    elif breakage == "expired":
        expired = pki.leaf("expired", expired=True)
        shutil.copy(expired.key, live / "privkey.pem")
        shutil.copy(expired.fullchain, live / "fullchain.pem")
        reason = "expired on"
    else:
        (live / "privkey.pem").unlink()
        reason = "No such file or directory"
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_for(lambda e: e.get("event_name") == "tls.reload_failed")
    assert reason in failed["reason"]
    assert failed["level"] == "error"
    assert handshake(daemon.port, pki.root_pem).leaf == old.certificate
    assert not daemon.named("tls.reloaded")
    assert daemon.proc.poll() is None


def test_sighup_without_tls_is_harmless(start_daemon):
    daemon = start_daemon()
    daemon.signal(signal.SIGHUP)
    assert "nothing to reload" in daemon.wait_for(lambda e: e.get("event_name") == "service.reload")["message"]
    from tests.http import request

    assert request(daemon.port, "GET", "/healthz")[0] == 200


def test_twisted_own_parser_would_drop_the_chain(pki):
    """Why voicebridge builds ssl: endpoints itself: Twisted's parser keeps the leaf of certKey only."""
    from twisted.internet.endpoints import _parseSSL

    leaf = pki.leaf()
    (_, _, options), _ = _parseSSL(None, "443", privateKey=str(leaf.key), certKey=str(leaf.fullchain))
    assert not options.extraCertChain


@pytest.mark.parametrize("dh", ["missing", "not-dh"])
def test_bad_dh_parameters_stop_start_up_naming_the_flag(pki, tmp_path, dh):
    """Every ssl: option OpenSSL would refuse is checked while the options are parsed: a usage error, no traceback."""

    leaf = pki.leaf()
    path = tmp_path / "dh.pem"
    if dh == "not-dh":
        path.write_bytes(leaf.cert.read_bytes())  # a PEM file, but a certificate
    listen = ssl_listen(leaf.key, leaf.fullchain, f":dhParameters={path}")
    assert f"--listen {listen}: dhParameters {path}" in usage_error(["--listen", listen])  # a UsageError: no traceback


# RFC 7919's ffdhe3072 group: standard parameters, so the test need not spend minutes generating its own.
FFDHE3072_PRIME = int(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695A9E13641146433FBCC939DCE249B3EF9"
    "7D2FE363630C75D8F681B202AEC4617AD3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935"
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797ABC0AB182B324FB61D108A94BB2C8E3FB"
    "B96ADAB760D7F4681D4F42A3DE394DF4AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61"
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005C58EF1837D1683B2C6F34A26C1B2EFFA"
    "886B4238611FCFDCDE355B3B6519035BBC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C"
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF5CAE82AB9C9DF69EE86D2BC522363A0D"
    "ABC521979B0DEADA1DBF9A42D5C4484E0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B66C62E37FFFFFFFFFFFFFFFF",
    16,
)


def test_good_dh_parameters_are_served(pki, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import dh

    path = tmp_path / "dh.pem"
    parameters = dh.DHParameterNumbers(FFDHE3072_PRIME, 2).parameters()
    path.write_bytes(parameters.parameter_bytes(serialization.Encoding.PEM, serialization.ParameterFormat.PKCS3))
    leaf = pki.leaf()
    built = tls.build(ssl_listen(leaf.key, leaf.fullchain, f":dhParameters={path}"))
    assert built.options.getContext() is not None and built.spec.dh_parameters == str(path)
