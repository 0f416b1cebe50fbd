# twophase app image. `make docker` builds it (see the README's Docker section); by hand:
#   DOCKER_BUILDKIT=1 docker build -t twophase --build-arg BASE_IMAGE=python:3.11-slim .
#   docker run -p 127.0.0.1:8501:8501 -v twophase-cache:/app/cache twophase
# Needs BuildKit (Docker >= 23, or DOCKER_BUILDKIT=1 on 20.10): secret and bind mounts below.
#
# BASE_IMAGE: any Debian-like image with python3 >= 3.11 (its venv module) or apt-get. The default is
#   the image `make docker` makes from Debian's packages (debootstrap) where Docker Hub is out of
#   reach; with Docker Hub, python:3.11-slim or debian:bookworm-slim should do as they are (untried here).
# TORCH_VARIANT: cpu (default) or cuda. cpu takes torch from TORCH_INDEX, default PyTorch's CPU index;
#   cuda takes it from PyPI, whose Linux x86_64 torch is the CUDA build (several GB of nvidia wheels),
#   or from TORCH_INDEX (e.g. https://download.pytorch.org/whl/cu126).
# TORCH_WHEELS_IMAGE: an image holding wheels at its root (torch, optionally torchvision) to install
#   instead of any index; `make docker` passes this host's CPU wheel that way (made with docker import).
#   Without a torchvision wheel there, PyPI's is tried, and uninstalled if it does not load (see below).
# TLS interception: pass the CA bundle as a secret (`--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt`);
#   pip uses it during the build and it never lands in a layer.
ARG BASE_IMAGE=twophase-base:bookworm
ARG TORCH_WHEELS_IMAGE=scratch

FROM ${TORCH_WHEELS_IMAGE} AS torch-wheels

FROM ${BASE_IMAGE}

ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX=
ARG TORCH_PACKAGES="torch torchvision"
# optional extras from pyproject.toml, comma-separated: EXTRAS=ray,s3 for a Ray cluster's image whose
# checkpoints live in S3 (README, "Scale-out on Ray"); none by default (the app and the CLI need none)
ARG EXTRAS=
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=120 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TWOPHASE_CACHE_DIR=/app/cache \
    STREAMLIT_SERVER_ADDRESS=0.0.0.0 \
    STREAMLIT_SERVER_PORT=8501 \
    STREAMLIT_SERVER_HEADLESS=true \
    STREAMLIT_BROWSER_SERVER_ADDRESS=localhost \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

# python3 and its venv module (already in the debootstrap base and in python:*-slim), a venv, a user
RUN set -eu; \
    if ! python3 -m venv /opt/venv 2>/dev/null; then \
        rm -rf /opt/venv; \
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates && rm -rf /var/lib/apt/lists/*; \
        python3 -m venv /opt/venv; \
    fi; \
    useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin twophase

# torch and torchvision first, in one resolve so they match; then pinned by /opt/venv/torch-constraint.txt
# so that nothing below swaps the build. A torchvision that does not load beside this torch (a PyPI torchvision,
# built for PyPI's CUDA torch, beside a CPU torch from TORCH_WHEELS_IMAGE) is uninstalled, with a warning: then
# `import torchvision` fails with a plain ImportError, which twophase turns into one line for torchvision:NAME
# models and download=True, and the constraint file lists torch alone (tests/test_docker.py checks the image
# agrees with it).
RUN --mount=type=secret,id=ca,required=false \
    --mount=type=bind,from=torch-wheels,target=/tmp/torch-wheels \
    set -eu; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    case "$TORCH_VARIANT" in cpu|cuda) ;; *) echo "TORCH_VARIANT must be cpu or cuda, not '$TORCH_VARIANT'" >&2; exit 2;; esac; \
    index="$TORCH_INDEX"; \
    if [ -z "$index" ] && [ "$TORCH_VARIANT" = cpu ]; then index=https://download.pytorch.org/whl/cpu; fi; \
    wheels=$(ls /tmp/torch-wheels/*.whl 2>/dev/null || true); \
    if [ -n "$wheels" ]; then \
        echo "torch from the wheels given: $(cd /tmp/torch-wheels && ls *.whl)"; \
        vision=torchvision; if ls /tmp/torch-wheels/torchvision-*.whl >/dev/null 2>&1; then vision=; fi; \
        pip install --find-links /tmp/torch-wheels $wheels $vision; \
    elif [ -n "$index" ]; then \
        echo "torch from $index"; \
        pip install --index-url "$index" $TORCH_PACKAGES; \
    else \
        echo "torch from PyPI"; \
        pip install $TORCH_PACKAGES; \
    fi; \
    if pip show -q torchvision 2>/dev/null && ! why=$(python -c "import torchvision" 2>&1); then \
        echo "WARNING: torchvision $(pip show torchvision | sed -n 's/^Version: //p') does not load beside torch" \
            "$(pip show torch | sed -n 's/^Version: //p') ($(printf '%s' "$why" | tail -n 1)); a PyPI torchvision is" \
            "built for PyPI's CUDA torch. Uninstalled: --model torchvision:NAME and download=True say so in one line;" \
            "CIFAR-10, MNIST, CIFAR-100 and SVHN from a data_root folder, the demo and the MNIST-1D presets work" \
            "(twophase reads those files itself). TORCH_INDEX=<a CPU index> or TORCH_VARIANT=cuda gives a matching" \
            "pair." >&2; \
        pip uninstall -y torchvision; \
    fi; \
    python -c 'from importlib.metadata import distributions; names = {d.metadata["Name"].lower(): d.version for d in distributions()}; print("\n".join(f"{p}=={names[p]}" for p in ("torch", "torchvision") if p in names))' \
        > /opt/venv/torch-constraint.txt; \
    cat /opt/venv/torch-constraint.txt

# the project's dependencies (and its build backend), from pyproject.toml alone: code edits keep this layer.
# torchvision only where the step above kept it (else pip would bring back the one that does not load).
COPY pyproject.toml /tmp/pyproject.toml
RUN --mount=type=secret,id=ca,required=false \
    set -eu; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb')); \
extras = [e.strip() for e in '${EXTRAS}'.split(',') if e.strip()]; \
unknown = [e for e in extras if e not in p['project']['optional-dependencies']]; \
assert not unknown, f'EXTRAS: no such extra {unknown}; choose from {sorted(p[\"project\"][\"optional-dependencies\"])}'; \
deps = p['project']['dependencies'] + p['build-system']['requires']; \
deps += [d for e in extras for d in p['project']['optional-dependencies'][e]]; \
vision = 'torchvision==' in open('/opt/venv/torch-constraint.txt').read(); \
print('\n'.join(d for d in deps if vision or not d.startswith('torchvision')))" > /tmp/requirements.txt; \
    pip install -c /opt/venv/torch-constraint.txt -r /tmp/requirements.txt; \
    rm /tmp/requirements.txt /tmp/pyproject.toml

# the app and the engine, whole (.dockerignore leaves out tests, docs, the store, .venv, .git)
WORKDIR /app
COPY . /app
RUN set -eu; \
    pip install --no-deps --no-build-isolation -e /app; \
    mkdir -p /app/cache; \
    chown twophase:twophase /app/cache

USER twophase
VOLUME ["/app/cache"]
EXPOSE 8501

# Streamlit's own health endpoint; every 10 s, so a fresh container reports healthy within seconds of serving
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/_stcore/health' % os.environ.get('STREAMLIT_SERVER_PORT', '8501'), timeout=4)"]

# 0.0.0.0 inside the container (STREAMLIT_SERVER_ADDRESS), so that a published port reaches it; `-p` decides
# who can (README, "Exposing the app"). STREAMLIT_BROWSER_SERVER_ADDRESS: the URL it prints, and no lookup
# of this machine's external IP at start.
CMD ["streamlit", "run", "app.py"]
