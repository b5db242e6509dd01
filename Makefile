VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BACKENDS := tensorflow jax torch

.PHONY: install demo test lint bench bench-text bench-text-gpt2 bench-text-quick gpu-check clean

$(STAMP): pyproject.toml .ci/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c .ci/constraints.txt -e ".[tensorflow,jax,torch,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	KERAS_BACKEND=jax $(PY) examples/demo.py

test: $(STAMP) lint
	@status=0; for b in $(BACKENDS); do \
	  echo "=== KERAS_BACKEND=$$b"; \
	  KERAS_BACKEND=$$b $(PY) -m pytest -q -n 2 --dist loadfile tests || status=1; \
	done; exit $$status

# ruff (pyproject.toml [tool.ruff]): lint rules and the formatter, the tree clean.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	KERAS_BACKEND=jax $(PY) benchmarks/run_all.py --short

# Real text (issue 15): parts 1 and 2, ~1.3 hours on 2 cores.
# Needs `apt-get install linux-doc-6.1`, or CORPUS=any folder of .txt files.
CORPUS ?= /usr/share/doc/linux-doc-6.1/html/_sources
bench-text: $(STAMP)
	KERAS_BACKEND=jax $(PY) benchmarks/text_lm.py --corpus $(CORPUS) --logdir logs/text_lm

# Part 2 alone (~20 min), merged into an existing results/text_lm.json.
bench-text-gpt2: $(STAMP)
	KERAS_BACKEND=jax $(PY) benchmarks/text_lm.py --parts 2 --corpus $(CORPUS) --logdir logs/text_lm

bench-text-quick: $(STAMP)
	KERAS_BACKEND=jax $(PY) benchmarks/text_lm.py --quick --max-files 40 --corpus $(CORPUS) \
	  --out /tmp/text_lm_quick.json --logdir /tmp/text_lm_quick_logs

# Training throughput and MFU on a GPU, JAX and TensorFlow (refuses without
# a GPU; `$(PY) benchmarks/gpu_check.py --quick` is the CPU smoke test).
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) build *.egg-info
