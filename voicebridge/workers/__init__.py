"""``--workers``: a supervisor that binds the ports and the worker processes that serve them."""
