"""The daemon's settings: the TOML file, the flags, and every bound they set."""
