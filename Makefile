# Two commands: `make demo` runs the main job, `make test` runs the test suite (`make app` serves the web app).
# Each creates .venv inside the checkout and installs the project into it on first use.
PYTHON ?= python3
VENV ?= .venv
# CPU/CUDA build of PyTorch is chosen by pip; pin it so that machines with a local wheel use it.
TORCH ?= torch==2.13.0
# Extras installed into .venv: everything the test suite uses, so that CI runs every test instead of
# skipping it (tests may skip only for what a user's machine may lack: a GPU, ../shared).
EXTRAS ?= dev,eval,app,ray
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo app test test-slow lint format bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lmk2video.demo

# The web app (README "Web app"): http://127.0.0.1:7860; GRADIO_SERVER_NAME / GRADIO_SERVER_PORT move it.
app: $(STAMP)
	$(PY) -m lmk2video.app

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Benchmarks of the landmark library (see README "Figures"); stage benchmarks live in bench/ too.
bench: $(STAMP)
	$(PY) bench/bench_draw.py
	$(PY) bench/geometry_accuracy.py
	$(PY) bench/bench_extract.py
	$(PY) bench/bench_audio2mesh.py
	$(PY) bench/bench_audio2pose.py
	$(PY) bench/bench_generate.py

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
