VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BACKENDS := tensorflow jax torch

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml .ci/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c .ci/constraints.txt -e ".[tensorflow,jax,torch,hub,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	KERAS_BACKEND=jax $(PY) examples/demo.py

test: $(STAMP)
	@status=0; for b in $(BACKENDS); do \
	  echo "=== KERAS_BACKEND=$$b"; \
	  KERAS_BACKEND=$$b $(PY) -m pytest -q tests || status=1; \
	done; exit $$status

bench: $(STAMP)
	KERAS_BACKEND=jax $(PY) benchmarks/run_all.py --short

clean:
	rm -rf $(VENV) build *.egg-info
