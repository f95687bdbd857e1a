from twisted.application.service import ServiceMaker

voicebridge = ServiceMaker(
    "voicebridge",
    "voicebridge.tap",
    "Twilio voice webhook and Media Streams bridge",
    "voicebridge",
)
