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

.PHONY: run test bench lint clean-cache browser-deps

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_TORCH_FLAGS) $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

.venv: $(VENV)/.installed

# headless: no first-run e-mail prompt; the browser is opened (where there is one) once the server is up
run: $(VENV)/.installed
	@echo "twophase: serving on http://localhost:$(PORT)"
	@(sleep 4; $(BIN)/python -m webbrowser -t http://localhost:$(PORT) >/dev/null 2>&1 || true) &
	$(BIN)/streamlit run app.py --server.port $(PORT) --server.headless true

test: $(VENV)/.installed
	$(BIN)/ruff check twophase_core pages tests app.py app_common.py
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/twophase bench --json bench.json

lint: $(VENV)/.installed
	$(BIN)/ruff check twophase_core pages tests app.py app_common.py

clean-cache:
	rm -rf cache/index cache/runs
