"""One call: the Media Streams WebSocket protocol, the ``Call`` it hands each stream to, its bounds and the registry."""
