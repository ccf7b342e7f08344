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

# Real depth with Depth-Anything small from the Hugging Face Hub (downloaded once, then from the cache); without a
# network and without a cached copy, the same run with random weights, after a note that says so
demo: $(STAMP)
	mkdir -p outputs
	@if $(PYTHON) -m model.hub small > /dev/null; then \
		$(PYTHON) run_pipeline.py --model small --config cpu -o outputs/demo_depth.mp4; \
	else \
		echo "note: no Depth-Anything weights here (see above): running with random weights instead, so the output shows the pipeline working, not real depth"; \
		$(PYTHON) run_pipeline.py --random-weights vits --config cpu -o outputs/demo_depth.mp4; \
	fi

test: $(STAMP)
	$(PYTHON) -m pytest -q

bench: $(STAMP)
	$(PYTHON) benchmarks/model_speed.py

clean:
	rm -rf $(VENV) outputs
