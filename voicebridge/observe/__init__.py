"""What the daemon tells operators: log conventions (masking, escaping) and ``/metrics``."""
