# messenger: real-time messaging and attachments for marketplaces.
#
#   docker build -t messenger .
#   docker run --rm -p 8080:8080 messenger                  # the embedded default
#   docker run --rm --no-healthcheck messenger messenger worker
#
# Configuration is by environment variables (docs/configuration.md); running it in production is
# described in docs/operations.md. The embedded clamd has only the bundled test signatures: mount
# the official database (kept fresh by freshclam elsewhere) read-only at /var/lib/clamav, or set
# CLAMD_ADDRESS to a clamd fleet.

# --- web: the page's third-party browser code from the npm registry (what `make run` installs) -----
# The official socket.io client; without it the page falls back to polling over REST. Only the
# runtime dependencies (no axe-core, which is for the browser tests), exactly as locked. Node 24 is
# the LTS line (20 reached its end of life in April 2026); only this stage uses it.
FROM node:24-bookworm-slim AS web

WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --loglevel=error

# --- build: install the service and its dependencies into a virtualenv -------------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY . .
# No extras: `pip install .` is everything the service needs (test tools are in the [test] extra).
RUN pip install --no-cache-dir .

# --- runtime ---------------------------------------------------------------------------------------
FROM python:3.11-slim

# clamd for the embedded default's scanner (found at /usr/sbin/clamd).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends clamav-daemon \
 && rm -rf /var/lib/apt/lists/*

# An unprivileged user with a writable data directory (the embedded clamd's files live there).
RUN groupadd --system --gid 10001 messenger \
 && useradd --system --uid 10001 --gid messenger --home-dir /var/lib/messenger --no-create-home \
      --shell /usr/sbin/nologin messenger \
 && install -d -o messenger -g messenger -m 0750 /var/lib/messenger

COPY --from=build /opt/venv /opt/venv
# The one file the page loads (served at /static/socket.io.min.js), with its licence; the service is
# installed into site-packages, not run from a checkout, so MESSENGER_SOCKETIO_JS says where it is.
COPY --from=web /web/node_modules/socket.io-client/dist/socket.io.min.js \
     /web/node_modules/socket.io-client/LICENSE \
     /opt/messenger/socket.io-client/

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MESSENGER_DATA_DIR=/var/lib/messenger \
    MESSENGER_SOCKETIO_JS=/opt/messenger/socket.io-client/socket.io.min.js

WORKDIR /var/lib/messenger
USER messenger

EXPOSE 8080

# Liveness of `messenger serve` on the port of the CMD below (change both together). Workers have
# no HTTP port: run them with --no-healthcheck. The start period covers clamd loading signatures.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

CMD ["messenger", "serve", "--host", "0.0.0.0", "--port", "8080"]
