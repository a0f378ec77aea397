# The two quick-start commands:  `make demo` (maps for the sample photos)  and  `make test`.
# Both create .venv and install what they need; nothing else has to be set up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint browser bench figure clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $@

demo: $(STAMP)
	$(PY) scripts/sample_images.py samples
	$(VENV)/bin/guided-backprop samples -o out --methods guided_backprop,gradcam,guided_gradcam,saliency --panel --report
	@echo "Explore them interactively (maps computed on demand in your browser; Ctrl-C stops it):"
	@echo "    $(VENV)/bin/guided-backprop explore samples"

browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/mypy src

test: $(STAMP) browser lint
	$(PY) -m pytest -q

# The inner loop while editing: every test but those marked slow or browser (no lint, no Chromium);
# `make test` (what CI runs) stays the whole suite.
test-fast: $(STAMP)
	$(PY) -m pytest -q -x -m "not slow and not browser"

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/bench_attribution.py
	$(PY) benchmarks/bench_floor.py
	$(PY) benchmarks/bench_cli.py --model efficientnet_lite0 --weights ''
	$(PY) benchmarks/bench_evaluate.py --malloc no-mmap

figure: $(STAMP)
	$(PY) scripts/make_readme_figure.py docs/figures/readme.png  # and docs/figures/topk.png beside it

clean:
	rm -rf $(VENV) out samples .pytest_cache
