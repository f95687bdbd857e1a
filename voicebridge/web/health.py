"""``/healthz`` (the process answers) and ``/readyz`` (it takes new calls), for probes and load balancers."""

from twisted.web.resource import Resource


class Healthz(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return b"ok\n"

    render_HEAD = render_GET


class Readyz(Resource):
    """503 while draining, so a load balancer stops sending new calls before the process goes."""

    isLeaf = True

    def __init__(self, registry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        if self.registry.draining:
            request.setResponseCode(503)
            return b"draining\n"
        return b"ready\n"

    render_HEAD = render_GET
