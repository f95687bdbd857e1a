"""Twilio's protocols as data: Media Streams messages, TwiML, request signatures. Pure: no Twisted, no I/O."""
