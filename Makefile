# Two commands on a fresh machine; each installs what it needs (a virtual environment, pinned torch).
#   make demo   top-9 sheets for every conv layer of the embedded default -> runs/default/
#   make test   ruff's format and lint checks, then the test suite (torch 2.14.1 + torchvision, to test real
#               VGG/AlexNet architectures)
PYTHON ?= python3
VENV := .venv
TEST_VENV := .venv-test

.PHONY: demo test bench clean

demo: $(VENV)/.installed
	$(VENV)/bin/deconv top9 --config configs/default.toml --out runs/default --overwrite

test: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/ruff format --check .
	$(TEST_VENV)/bin/ruff check .
	$(TEST_VENV)/bin/python -m pytest

bench: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python benchmarks/run.py
	$(TEST_VENV)/bin/python benchmarks/serve.py

# The CPU build of torch is pinned and installed first: an unpinned torch is a multi-GB CUDA build.
$(VENV)/.installed: setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e .
	touch $@

# torchvision imports beside torch 2.14.1 (not beside the 2.13.0 CPU wheel).
$(TEST_VENV)/.installed: setup.cfg scripts/system-packages.sh
	sh scripts/system-packages.sh
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(TEST_VENV)/bin/pip install -q -e '.[test,bench]'
# timm's and Hugging Face's CNNs (tests/builders/test_timm.py): the small packages they import, then timm and
# transformers without their dependencies (which would move torch)
	$(TEST_VENV)/bin/pip install -q pyyaml==6.0.4 huggingface_hub==2.4.0 safetensors==0.8.0 tokenizers==0.23.3 regex==2026.11.19
	$(TEST_VENV)/bin/pip install -q --no-deps timm==1.0.31 transformers==5.25.0
	touch $@

clean:
	rm -rf $(VENV) $(TEST_VENV) runs
