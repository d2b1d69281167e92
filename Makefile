# llavakd: the two commands a fresh machine needs are `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := results/demo

export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast lint bench clean-demo

install: $(STAMP)  ## create .venv and install the pinned dependency set (no-op when up to date)

# torch/torchvision first and exactly pinned: an unpinned torch would pull a multi-GB build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import torch, torchvision"
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import llavakd, transformers, lmms_eval, deepspeed, snakemake"
	touch $(STAMP)

demo: install  ## the main job: the whole tiny DAG (= snakemake --cores all reproduce_table1), reports in reports/demo/
	$(BIN)/snakemake --cores all reproduce_table1

# Two pytest workers (pytest-xdist) on the 2-core machine, the slow tests handed out first; the micro
# tree is built once for both (tests/conftest.py). `make test` prints the 15 slowest tests.
PYTEST := $(BIN)/pytest -q -p no:cacheprovider -n 2

test: install  ## the whole test suite (what CI runs), about 20 minutes on 2 cores
	rc=0; $(PYTEST) --durations=15 || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: install  ## the unit tests only (no test marked slow), under 2 minutes
	rc=0; $(PYTEST) -m "not slow" || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: install  ## ruff, snakefmt and Snakemake's linter
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/python scripts/lint_workflow.py

BENCH_STORE := benchmarks/measured/micro

bench: install  ## micro-benchmarks (pytest-benchmark: saved, compared with the last run), then the paper-shape memory benchmark
	$(BIN)/pytest benchmarks/micro -q -p no:cacheprovider --benchmark-only --benchmark-storage=$(BENCH_STORE) \
	  --benchmark-autosave --benchmark-columns=min,median,mean,rounds \
	  $$(ls $(BENCH_STORE)/*/*.json >/dev/null 2>&1 && echo --benchmark-compare)
	$(BIN)/python -m benchmarks.micro.ratios $(BENCH_STORE)
	$(BIN)/python -m benchmarks.distill_memory

clean-demo:
	rm -rf $(DEMO) reports/demo
