# tdpdm image: the package on a pinned Ray image, for KubeRay head, worker and submitter pods.
#
#   GPU (default): docker build -t REGISTRY/tdpdm:0.1.0-gpu .
#   CPU:           docker build --build-arg VARIANT=cpu -t REGISTRY/tdpdm:0.1.0-cpu .
#
# The Ray and Python versions must match on every node of a cluster, so both variants share
# RAY_VERSION and PYTHON_TAG; only the base's CUDA userland and the torch build differ. Nothing
# secret is baked in: S3 credentials come from a Kubernetes Secret or workload identity at run
# time. docs/deploy.md describes the build and push.

ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
ARG VARIANT=gpu

# ---- build: a wheel of tdpdm, so the sources and build tools stay out of the runtime image ----
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${VARIANT} AS build
USER 1000:100
# COPY creates /tmp/src owned by uid 1000, so the unprivileged build can write build/ there.
COPY --chown=1000:100 pyproject.toml README.md /tmp/src/
COPY --chown=1000:100 tdpdm /tmp/src/tdpdm
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheels /tmp/src

# ---- runtime ----
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${VARIANT}
ARG VARIANT
ARG TORCH_VERSION=2.13.0
# CPU wheels come from the PyTorch CPU index (no CUDA libraries: a far smaller image); the GPU
# build is PyPI's default Linux torch wheel, which bundles its CUDA runtime.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
# Pins for what the Ray image does not already ship; numpy, pyarrow, pyyaml and friends keep
# the versions Ray was released with (pip only changes them if tdpdm's ranges demand it), and
# the resolved set is frozen into /app/requirements.lock.
ARG OPACUS_VERSION=1.6.0
ARG PRV_ACCOUNTANT_VERSION=0.2.0
ARG DP_ACCOUNTING_VERSION=0.6.0
ARG S3FS_VERSION=2026.9.0
ARG PROMETHEUS_CLIENT_VERSION=0.26.0

LABEL org.opencontainers.image.title="tdpdm" \
      org.opencontainers.image.description="Differentially private synthetic images on Ray" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    MPLCONFIGDIR=/tmp/matplotlib

# The Ray image's Python lives under /home/ray/anaconda3, owned by uid 1000: install as that user.
USER 1000:100
RUN if [ "$VARIANT" = "cpu" ]; then \
        pip install --no-cache-dir --index-url "$TORCH_CPU_INDEX" "torch==${TORCH_VERSION}+cpu"; \
    else \
        pip install --no-cache-dir "torch==${TORCH_VERSION}"; \
    fi

COPY --from=build --chown=1000:100 /tmp/wheels /tmp/wheels
RUN pip install --no-cache-dir \
        "$(ls /tmp/wheels/tdpdm-*.whl)[s3]" \
        "torch==${TORCH_VERSION}$([ "$VARIANT" = cpu ] && echo +cpu)" \
        "opacus==${OPACUS_VERSION}" \
        "prv-accountant==${PRV_ACCOUNTANT_VERSION}" \
        "dp-accounting==${DP_ACCOUNTING_VERSION}" \
        "s3fs==${S3FS_VERSION}" \
        "prometheus-client==${PROMETHEUS_CLIENT_VERSION}" \
    && rm -rf /tmp/wheels \
    && pip check \
    && command -v tdpdm \
    && tdpdm --help > /dev/null

# Job entrypoints and configs, read-only to the runtime user: code cannot be altered in a pod.
USER root
WORKDIR /app
COPY --chown=root:root jobs ./jobs
COPY --chown=root:root configs ./configs
RUN pip freeze > /app/requirements.lock

USER 1000:100
# Kubernetes ignores Docker health checks; KubeRay adds its own probes to the Ray containers.
HEALTHCHECK NONE
# No ENTRYPOINT: KubeRay starts `ray start ...` as the container command, and `docker run IMAGE
# tdpdm run ...` works too. Without arguments the image prints the CLI's help.
CMD ["tdpdm", "--help"]
