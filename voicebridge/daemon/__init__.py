"""The running daemon: options, the service tree, signals, the drain and systemd's readiness protocol."""
