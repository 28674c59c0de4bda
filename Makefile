# synthmix: `make demo` sets up and runs the default study, `make test` the tests.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup dev demo test ui server serve mlproject clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed  ## create .venv and install the runtime dependencies

dev: $(VENV)/.installed-dev  ## add the test tools

demo: setup  ## the default study on the embedded mnist5k digits, tracked in ./mlflow.db
	$(VENV)/bin/mlflow run . --env-manager local --experiment-name synthmix

test: dev  ## the whole test suite
	$(PY) -m pytest -q

ui: setup  ## browse the runs at http://127.0.0.1:5000
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000

server: setup  ## an MLflow tracking server on 127.0.0.1:5000 (sqlite:///mlflow.db, ./mlartifacts); python -m tracking.server --help for PostgreSQL
	$(PY) -m tracking.server

MODEL ?= mnist5k-classifier
PORT ?= 5001
serve: setup  ## serve models:/$(MODEL)@champion (the study's best, registered by make demo) at http://127.0.0.1:$(PORT)/invocations
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} $(VENV)/bin/mlflow models serve -m "models:/$(MODEL)@champion" --env-manager local -h 127.0.0.1 -p $(PORT)

mlproject: setup  ## rewrite MLproject from the stages' declared parameters
	$(PY) -m pipelines.__main__ --mlproject > MLproject

clean:
	rm -rf $(VENV) .pytest_cache
