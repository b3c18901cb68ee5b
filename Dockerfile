# qwen-fluent container image: ghcr.io/qwen-fluent/qwen-fluent:<version>
#
#   docker build -t ghcr.io/qwen-fluent/qwen-fluent:0.1.0 .
#
# python:3.12-slim: the smallest official image with a full CPython. Two
# stages: the first has a C compiler and builds the package's wheel, with its
# C payload scanner (qwen_fluent/forward/_scan.c: several times faster intake,
# docs/performance.md); the second installs that wheel and nothing of the
# compiler. No NVIDIA libraries are installed: the NVIDIA container runtime
# mounts the node driver's libnvidia-ml.so into the container
# (NVIDIA_VISIBLE_DEVICES, see examples/kubernetes/base/daemonset.yaml), which
# is the library that must match the driver anyway.
FROM python:3.12-slim AS build

RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
# Only what the wheel needs: a change elsewhere does not invalidate this layer, and nothing else
# (tests, .git) ends up inside.
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY qwen_fluent ./qwen_fluent
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.12-slim

# No .pyc writes at run time (the root filesystem is read-only in the DaemonSet; pip compiled
# them at install), and logs leave unbuffered.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

# The wheel with the web extra (--web-config-file). The extension is optional for `pip install`
# on a machine without a compiler, not for the image: the build fails if it is missing.
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(echo /wheels/qwen_fluent-*.whl)[web]" && rm -rf /wheels \
    && python -c "import qwen_fluent.forward._scan"

# Non-root, the uid distroless images use ("nonroot"); the DaemonSet's
# securityContext runs as the same uid with a read-only root filesystem.
USER 65532:65532
WORKDIR /

# Forward (Fluent Bit's forward output) and /metrics, /healthz, /readyz.
EXPOSE 24224 8000

ENTRYPOINT ["qwen-fluent"]
CMD ["serve"]
