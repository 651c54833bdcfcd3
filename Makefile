# Two commands set everything up: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)
DEMO_DATA := demo_data
DEMO_RUN := runs/demo
export FLASK_APP := wsgi
# Where Debian installs the browser and the proxy the tests drive (tests/helpers.py reads CHROMIUM too).
CHROMIUM ?= /usr/bin/chromium
NGINX ?= /usr/sbin/nginx
# Debian's PostgreSQL server programs, which tests/postgres.py starts (it reads PG_BIN too).
PG_BIN ?= /usr/lib/postgresql/15/bin

.PHONY: venv run serve serve-proxy demo test test-fast lint browser proxy postgres bench bench-serve bench-train clean

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, torchvision, fastai, timm, flask, gunicorn"
	rm -f $(VENV)/.installed-* && touch $@

$(DEMO_DATA)/.complete: | $(STAMP)
	$(PY) -m training dataset demo --out $(DEMO_DATA) --per-class 80
	touch $@

$(DEMO_RUN)/export.pkl: $(DEMO_DATA)/.complete
	$(PY) -m training train --data $(DEMO_DATA) --recipe demo --out $(DEMO_RUN) --resume

demo: $(DEMO_RUN)/export.pkl

## The main job: build the demo data, train the demo model once, serve it on 127.0.0.1:8000.
run: $(STAMP) $(DEMO_RUN)/export.pkl
	GUITARS_MODEL=$${GUITARS_MODEL:-$(DEMO_RUN)} $(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app

serve: $(STAMP)
	$(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app

## Production: nginx (buffers slow clients) in front of gunicorn; see deploy/.
serve-proxy: $(STAMP) proxy
	deploy/serve.sh

# A tool that cannot be installed: locally its tests are skipped with the reason; under CI (CI=true) the job fails,
# as a skipped browser or deployment test would otherwise let it pass.
tool_missing = if [ "$$CI" = true ]; then echo "$(1) could not be installed, and CI runs $(2): failing" >&2; exit 1; \
	else echo "$(1) could not be installed: $(2) will be skipped"; fi

browser:
	@test -x $(CHROMIUM) || (apt-get update -q && apt-get install -y -q chromium) || \
		{ $(call tool_missing,chromium,the browser test); }

proxy:
	@command -v nginx >/dev/null || test -x $(NGINX) || (apt-get update -q && apt-get install -y -q nginx-light) || \
		{ $(call tool_missing,nginx,the deployment tests); }

postgres:
	@test -x $(PG_BIN)/initdb || (apt-get update -q && apt-get install -y -q postgresql) || \
		{ $(call tool_missing,postgresql,the PostgreSQL tests); }

test: $(STAMP) browser proxy postgres
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not browser"

## Benchmarks (not tests): each prints its figures and ratios; `bench` also writes bench/RESULTS.md.
bench: $(STAMP) $(DEMO_RUN)/export.pkl
	$(PY) -m bench.report

bench-serve: $(STAMP) $(DEMO_RUN)/export.pkl
	$(PY) -m bench.serve

bench-train: $(STAMP)
	$(PY) -m bench.train

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(DEMO_DATA) $(DEMO_RUN) .pytest_cache
