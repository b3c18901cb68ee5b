# qwen-fluent container image: ghcr.io/qwen-fluent/qwen-fluent:<version>
#
#   docker build -t ghcr.io/qwen-fluent/qwen-fluent:0.1.0 .
#
# python:3.12-slim: the smallest official image with a full CPython; the
# package is pure Python plus msgpack's wheel. No NVIDIA libraries are
# installed: the NVIDIA container runtime mounts the node driver's
# libnvidia-ml.so into the container (NVIDIA_VISIBLE_DEVICES, see
# examples/kubernetes/base/daemonset.yaml), which is the library that must
# match the driver anyway.
FROM python:3.12-slim

# No .pyc writes at run time (the root filesystem is read-only in the
# DaemonSet; pip compiled them at install), and logs leave unbuffered.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

# Only what `pip install ".[web]"` needs (the web extra: --web-config-file): a change elsewhere does
# not invalidate this layer, and nothing else (tests, .git) ends up inside.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY qwen_fluent ./qwen_fluent
RUN pip install --no-cache-dir ".[web]" && rm -rf /src

# Non-root, the uid distroless images use ("nonroot"); the DaemonSet's
# securityContext runs as the same uid with a read-only root filesystem.
USER 65532:65532
WORKDIR /

# Forward (Fluent Bit's forward output) and /metrics, /healthz, /readyz.
EXPOSE 24224 8000

ENTRYPOINT ["qwen-fluent"]
CMD ["serve"]
