# twophase: `make run` opens the app on the embedded demo; `make test` runs every test.
# Both set up .venv first (nothing to install by hand).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed before the project so pip never pulls a second build; override for another
# release or index, e.g. make run TORCH='torch torchvision' PIP_TORCH_FLAGS='--index-url URL'
TORCH ?= torch==2.14.1 torchvision==0.29.1
PIP_TORCH_FLAGS ?=
PORT ?= 8501
# make test runs the tests in this many processes (pytest-xdist; auto: one per core, as on CI's 2 cores; 0: in one
# process). --dist loadfile runs each test file whole in one of them (one Ray head, one browser; tests/conftest.py
# hands out the longest files first)
TEST_WORKERS ?= auto
# make run listens on this machine only; HOST=0.0.0.0 opens it to the network, with no login: anyone
# who can reach the port can start jobs (README, "Exposing the app")
HOST ?= 127.0.0.1

.PHONY: run test bench lint clean-cache browser-deps docker docker-base test-docker

$(VENV)/.installed: pyproject.toml examples/twophase-example-plugin/pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_TORCH_FLAGS) $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test,ray,s3]'
	$(BIN)/python -m pip install -q -e examples/twophase-example-plugin  # its entry points: tests of plugins
	touch $@

.venv: $(VENV)/.installed

# headless: no first-run e-mail prompt; the browser is opened (where there is one) once the server is up
run: $(VENV)/.installed
	@echo "twophase: serving on http://$(RUN_URL_HOST):$(PORT) (listening on $(HOST))"
	@case "$(HOST)" in 127.*|localhost|::1) echo "twophase: this machine only; to open it to the network: make run HOST=0.0.0.0 (no login: anyone who can reach it can start jobs)";; \
	  *) echo "twophase: open to the network on $(HOST):$(PORT) with no login: anyone who can reach it can start jobs";; esac
	@(sleep 4; $(BIN)/python -m webbrowser -t http://$(RUN_URL_HOST):$(PORT) >/dev/null 2>&1 || true) &
	$(BIN)/streamlit run app.py --server.address $(HOST) --server.port $(PORT) --server.headless true

test: $(VENV)/.installed
	$(BIN)/ruff check twophase_core pages tests app.py app_common
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -m "not docker" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20

bench: $(VENV)/.installed
	$(BIN)/twophase bench --json bench.json

lint: $(VENV)/.installed
	$(BIN)/ruff check twophase_core pages tests app.py app_common
	$(BIN)/mypy

clean-cache:
	rm -rf cache/index cache/runs

RUN_URL_HOST = $(if $(filter 0.0.0.0 :: 127.0.0.1,$(HOST)),localhost,$(HOST))

# Docker (README, "Docker"): `make docker` builds $(IMAGE) with BuildKit. The base image defaults to
# one made here from Debian's packages (debootstrap) when it is missing, since Docker Hub may be out of
# reach; BASE_IMAGE=python:3.11-slim uses Docker Hub's instead. TORCH_VARIANT=cpu|cuda, TORCH_INDEX=URL,
# EXTRAS=ray,s3 (optional dependencies, for a Ray cluster's image): see the Dockerfile. A CPU torch wheel on this disk (TORCH_WHEEL) is handed to the build as an image.
IMAGE ?= twophase
BASE_IMAGE ?= twophase-base:bookworm
LOCAL_BASE_IMAGE := twophase-base:bookworm
DEBIAN_SUITE ?= bookworm
DEBIAN_MIRROR ?= http://deb.debian.org/debian
TORCH_VARIANT ?= cpu
EXTRAS ?=
TORCH_INDEX ?=
TORCH_WHEEL ?= $(if $(filter cpu,$(TORCH_VARIANT)),$(if $(TORCH_INDEX),,$(lastword $(sort $(wildcard /opt/wheels/torch-*+cpu-cp311-*.whl)))))
TORCH_WHEELS_IMAGE ?= $(if $(TORCH_WHEEL),twophase-torch-wheels:$(subst +,-,$(word 2,$(subst -, ,$(notdir $(TORCH_WHEEL))))),scratch)
# where TLS is intercepted, pip in the build trusts this bundle (a BuildKit secret, never in a layer)
CA_BUNDLE ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
DOCKER_BUILD_FLAGS ?=
# a client that can build with BuildKit: `docker` with buildx, else Debian's docker.io client
DOCKER ?= $(shell docker buildx version >/dev/null 2>&1 || ! test -x /usr/bin/docker && echo docker || echo /usr/bin/docker)
comma := ,

docker-base:
	@if $(DOCKER) image inspect $(BASE_IMAGE) >/dev/null 2>&1; then echo "twophase: base image $(BASE_IMAGE) is there"; \
	elif [ "$(BASE_IMAGE)" != "$(LOCAL_BASE_IMAGE)" ]; then echo "twophase: $(BASE_IMAGE) will be pulled by the build"; \
	elif ! command -v debootstrap >/dev/null; then \
	  echo "twophase: making $(BASE_IMAGE) needs debootstrap (apt-get install debootstrap), or use BASE_IMAGE=python:3.11-slim" >&2; exit 1; \
	else set -e; root=$$(mktemp -d /tmp/twophase-base.XXXXXX); trap 'rm -rf "$$root" "$$root.log"' EXIT; \
	  echo "twophase: making $(BASE_IMAGE) from Debian's packages (debootstrap --variant=minbase $(DEBIAN_SUITE))"; \
	  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates $(DEBIAN_SUITE) "$$root" \
	    $(DEBIAN_MIRROR) >"$$root.log" 2>&1 || { tail -n 30 "$$root.log" >&2; exit 1; }; \
	  rm -rf "$$root"/var/cache/apt/archives/*.deb "$$root"/var/cache/apt/*.bin "$$root"/var/lib/apt/lists/* \
	    "$$root"/usr/share/man/* "$$root"/usr/share/locale/*; \
	  tar -C "$$root" -c . | $(DOCKER) import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - $(BASE_IMAGE); \
	fi

docker: docker-base
	@if [ -n "$(TORCH_WHEEL)" ] && ! $(DOCKER) image inspect $(TORCH_WHEELS_IMAGE) >/dev/null 2>&1; then \
	  echo "twophase: handing $(TORCH_WHEEL) to the build as $(TORCH_WHEELS_IMAGE)"; \
	  tar -C $(dir $(TORCH_WHEEL)) -c $(notdir $(TORCH_WHEEL)) | $(DOCKER) import - $(TORCH_WHEELS_IMAGE); fi
	DOCKER_BUILDKIT=1 $(DOCKER) build -t $(IMAGE) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  --build-arg TORCH_VARIANT=$(TORCH_VARIANT) --build-arg TORCH_INDEX=$(TORCH_INDEX) --build-arg EXTRAS=$(EXTRAS) \
	  --build-arg TORCH_WHEELS_IMAGE=$(TORCH_WHEELS_IMAGE) $(if $(CA_BUNDLE),--secret id=ca$(comma)src=$(CA_BUNDLE)) \
	  $(DOCKER_BUILD_FLAGS) .
	@$(DOCKER) image inspect -f 'twophase: built $(IMAGE), {{.Size}} bytes' $(IMAGE)

# builds the image (make docker), runs it with a volume, waits for healthy, runs a job, restarts it
test-docker: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m docker tests/test_docker.py
