"""TLS: the certificates voicebridge serves (reloadable), and what a TLS server presents to a client like Twilio."""
