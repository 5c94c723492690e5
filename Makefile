# Two entry points (README): `make demo` and `make test`. Each sets up its own virtual environment.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO   ?= demo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE ?= offline

.PHONY: install demo test bench clean

install: $(VENV)/.installed

# torch and torchvision first, pinned together (laion-clap imports torchvision; see pyproject.toml).
# --no-compile: pip would byte-compile all ~17,500 modules of the environment (~45 s on one core); Python
# compiles the few hundred a command imports on first use (442 for make demo) and keeps them in __pycache__.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet --no-compile -e ".[dev]"
	touch $@

# Render the embedded demo, train the demo config on it, evaluate on its test split (README).
RUN    ?= runs/demo
demo: install
	$(VENV)/bin/disse-synth demo --out $(DEMO)
	$(VENV)/bin/disse-train --config configs/demo.yaml data.train=$(DEMO)/train data.val=$(DEMO)/val \
		train.out_dir=$(RUN)
	$(VENV)/bin/disse-eval --checkpoint $(RUN)/checkpoints/best.pt --shards $(DEMO)/test --out $(RUN)/eval

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO) runs
