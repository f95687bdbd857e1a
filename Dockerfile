# voicebridge for Fly.io, Render, Railway or any container host. TLS is the platform's job:
# the daemon serves plain HTTP and WebSocket on $PORT (8080 unless the platform sets PORT).
#
#   docker build -t voicebridge .
#   docker run -p 8080:8080 -e TWILIO_AUTH_TOKEN=... voicebridge \
#       twist voicebridge --public-url https://voice.example.com
#
# BASE_IMAGE is any Debian-like image with python3 (3.11+) and its venv module; the tests build
# this file on a Debian bookworm base made with mmdebstrap (tests/test_container.py).
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8080 \
    PATH=/opt/voicebridge/bin:$PATH

# A virtualenv: Debian's own python3 refuses pip installs into the system (PEP 668), and the
# same line works on python:3.12-slim. PATH puts its pip, python and twist first.
RUN python3 -m venv /opt/voicebridge

WORKDIR /app
COPY setup.py pyproject.toml README.md constraints.txt ./
COPY voicebridge ./voicebridge
COPY twisted ./twisted

# Install, then write Twisted's plugin cache now: the unprivileged user cannot write it later,
# and Twisted would log a permission error on every start.
RUN pip install --no-cache-dir -c constraints.txt . \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && groupadd --system --gid 10001 voicebridge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin voicebridge

USER 10001:10001
EXPOSE 8080

# /healthz answers while the process runs; the platform's own checks can use /readyz too.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=4)"]

# SIGTERM drains (live calls go on, new ones get 503), then the process exits 0.
STOPSIGNAL SIGTERM
# `twist voicebridge` on tcp:$PORT, 8080 here. Platforms replace this command to add
# --public-url (fly.toml, render.yaml, railway.toml), so there is no ENTRYPOINT to combine with.
CMD ["twist", "voicebridge", "--log-format", "json"]
