# Two commands for a newcomer: `make demo` and `make test`. Everything else is plumbing.
PYTHON ?= python3
UV_VERSION := 0.9.30
UV := .uv/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install demo test lint format clean messages pot

# gettext catalogs (README, "Languages"): one .po per language, in git; .mo compiled from it.
PYBABEL := $(VENV)/bin/pybabel
CATALOGS := camvoice/translations
MO := $(patsubst %.po,%.mo,$(wildcard $(CATALOGS)/*/LC_MESSAGES/messages.po))

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

install: $(VENV)/.synced $(MO)

%.mo: %.po | $(VENV)/.synced
	$(PYBABEL) compile --statistics -i $< -o $@

# After changing a sentence in the code or a template: the .pot, then every .po gains it.
POT ?= $(CATALOGS)/messages.pot
pot:
	$(PYBABEL) extract -F babel.cfg -k N_ -k NP_:1,2 -c TRANSLATORS: --no-location \
		--sort-output --project camvoice -o $(POT) .

messages: install pot
	$(PYBABEL) update -i $(POT) -d $(CATALOGS) -w 100 --ignore-obsolete

demo: install
	$(VENV)/bin/camvoice demo --host 127.0.0.1 --port 8080

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf .uv $(VENV) .pytest_cache .ruff_cache
