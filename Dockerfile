# smpp-bridge: SMPP 3.4 SMSC in front of HTTP SMS providers.
#
#   docker build -t smpp-bridge .
#   docker run -e SMPP_DEMO_PASSWORD=demopass -p 2775:2775 -p 8080:8080 -p 127.0.0.1:8081:8081 smpp-bridge
#
# The image runs `smpp-bridge run --config /etc/smpp-bridge/bridge.toml`; it ships config/docker.toml
# there (SMPP, HTTP and admin on 0.0.0.0, data in /var/lib/smpp-bridge). Mount your own file
# over it. Publish the admin port (8081) to trusted addresses only.

# --------------------------------------------------------------------------- build
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel is built from: pyproject.toml, its readme and the package.
COPY pyproject.toml README.md ./
COPY bridge ./bridge

# pip builds a wheel of the package and installs it, with uvloop (the [fast] extra), into a
# venv that the final stage copies whole: no source tree, build tools or pip cache in the image.
# Every dependency has manylinux wheels: no compiler needed.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ".[fast]"

# --------------------------------------------------------------------------- run
FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="smpp-bridge" \
      org.opencontainers.image.description="SMPP 3.4 SMSC that forwards to HTTP SMS providers" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A fixed uid/gid, so file ownership on the data volume is the same across rebuilds.
RUN groupadd --system --gid 10001 bridge \
    && useradd --system --no-log-init --uid 10001 --gid bridge --home-dir /var/lib/smpp-bridge \
       --shell /usr/sbin/nologin bridge \
    && mkdir -p /etc/smpp-bridge /var/lib/smpp-bridge \
    && chown bridge:bridge /var/lib/smpp-bridge

COPY --from=builder /opt/venv /opt/venv
COPY config/docker.toml /etc/smpp-bridge/bridge.toml

USER 10001:10001
WORKDIR /var/lib/smpp-bridge
VOLUME ["/etc/smpp-bridge", "/var/lib/smpp-bridge"]

# 2775: SMPP; 8080: HTTP (provider callbacks); 8081: admin (API, status page, /metrics,
# /healthz, /readyz).
EXPOSE 2775 8080 8081

# /healthz (admin port) answers 200 while the bridge's event loop runs; urlopen raises (exit 1)
# otherwise.
# slim images have no curl: python's urllib does the request.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=4)"]

# SIGTERM (docker stop) shuts down gracefully: in-flight responses are sent, sessions unbound.
ENTRYPOINT ["smpp-bridge"]
CMD ["run", "--config", "/etc/smpp-bridge/bridge.toml"]
