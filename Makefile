# Two entry points for a newcomer: `make demo` (the main job on a clip it makes itself) and `make test`.
# Both create or reuse .venv and install what they need; re-running installs nothing new.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	# torch 2.13.0: a CPU build that the dev machines install from local disk in seconds
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p outputs
	$(PYTHON) run_pipeline.py --random-weights vits --config configs/cpu.yaml -o outputs/demo_depth.mp4

test: $(STAMP)
	$(PYTHON) -m pytest -q

bench: $(STAMP)
	$(PYTHON) benchmarks/model_speed.py

clean:
	rm -rf $(VENV) outputs
