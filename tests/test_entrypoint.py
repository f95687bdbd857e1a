"""A third-party handler, installed as its own distribution, is found through the entry point and used."""

import os
import textwrap

import pytest_twisted

from tests.daemon import REPO
from voicebridge.tools.twiliosim import CallScript, play_call

HANDLER = '''
from voicebridge.handlers import Handler


class Reverse(Handler):
    """Plays each 20 ms frame back to front, louder by nothing: proof it ran, not echo."""

    @classmethod
    def check_options(cls, options):
        unknown = set(options) - {"greeting"}
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)}")
        return {"greeting": options.get("greeting", "")}

    def on_start(self, start):
        if self.options["greeting"]:
            self.call.send_mark(self.options["greeting"])

    def on_media(self, audio, timestamp):
        self.call.send_audio(audio[::-1])
'''


def install_distribution(root):
    """What pip leaves behind: the package and a dist-info declaring the entry point."""
    (root / "vbreverse").mkdir()
    (root / "vbreverse" / "__init__.py").write_text(HANDLER)
    info = root / "vbreverse-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vbreverse\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("[voicebridge.handlers]\nreverse = vbreverse:Reverse\n"))
    return {"PYTHONPATH": os.pathsep.join([str(REPO), str(root)])}


@pytest_twisted.inlineCallbacks
def test_a_third_party_handler_registers_through_the_entry_point(start_daemon, tmp_path):
    from twisted.internet import reactor

    env = install_distribution(tmp_path)
    config = tmp_path / "vb.toml"
    config.write_text('[tenants.b1]\nhandler = "reverse"\n[tenants.b1.handler_options]\ngreeting = "hi"\n')
    daemon = start_daemon("--config", str(config), env=env)
    script = CallScript(frames=10, custom_parameters={"businessId": "b1"})
    outcome = yield play_call(reactor, daemon.url("/twilio-media", "ws"), script)
    assert outcome.received == [frame[::-1] for frame in outcome.sent]
    assert outcome.marks == ["hi"], "its options came from the tenant"
    started = yield daemon.wait_for_async(reactor, lambda e: e.get("event_name") == "call.started")
    assert (started["handler"], started["tenant"]) == ("reverse", "b1")


def test_its_options_are_checked_at_start_up_and_it_is_listed_when_a_name_is_wrong(start_daemon, tmp_path):
    from tests.daemon import Daemon

    env = install_distribution(tmp_path)
    config = tmp_path / "vb.toml"
    config.write_text("[handlers.reverse]\nvolume = 11\n")
    bad = Daemon(["--handler", "reverse", "--config", str(config)], env=env).start(wait=False)
    assert bad.wait_exit(30) != 0
    assert "handler 'reverse' for calls without a tenant: unknown option(s) ['volume']" in bad.output
    typo = Daemon(["--handler", "revers"], env=env).start(wait=False)
    assert typo.wait_exit(30) != 0
    assert "no handler named 'revers' (available: echo, openai-realtime, record, relay, reverse)" in typo.output
