"""The HTTP site on the daemon's port: the webhook, ``<Connect action>``, health, admission and the public URL."""
