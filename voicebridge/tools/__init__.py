"""The commands around the daemon: probe (with its diagnosis), loadtest, check-config, sign, and the Twilio simulator."""
