from twisted.application.service import ServiceMaker

voicebridge = ServiceMaker(
    "voicebridge",
    "voicebridge.daemon.tap",
    "Twilio voice webhook and Media Streams bridge",
    "voicebridge",
)
