# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
WORKSPACE ?= workspace
PYTEST_ARGS ?=

.PHONY: demo test install clean-workspace

$(BIN)/consortia: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned to 2.13.0 in pyproject.toml: the CPU build on these machines' disk.
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/consortia

demo: install
	$(BIN)/consortia demo --workspace $(WORKSPACE)

# pytest's exit status is kept in .pytest-status so .ci/run can tell "no tests collected" (5) from a failure.
test: install
	@rm -f .pytest-status
	@$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; echo $$status > .pytest-status; exit $$status

clean-workspace:
	$(BIN)/consortia down --workspace $(WORKSPACE) || true
	rm -rf $(WORKSPACE)
