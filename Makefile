# Two commands for a fresh machine (see README):
#   make demo   sets everything up and segments the bundled sample with the default model
#   make test   sets everything up and runs the test suite (what .ci/run calls)

VENV      ?= .venv
PYTHON    ?= python3
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip
STAMP     := $(VENV)/.nucseg-installed
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Qt/napari under a virtual X server (offscreen Qt cannot draw layers)
APT_PKGS  := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0 \
             libxcb-xkb1 libxcb-shape0 libxcb-randr0 libxcb-cursor0 libxkbcommon-x11-0 libegl1 libgl1 libglib2.0-0 \
             libfontconfig1 libdbus-1-3
PYTEST_ARGS ?=

.PHONY: setup system-deps demo test test-fast lint benchmarks clean

setup: $(STAMP)

system-deps:
	@if ! command -v Xvfb >/dev/null 2>&1 || ! ldconfig -p | grep -q libxcb-cursor.so.0; then \
	  echo "installing Xvfb and Qt's X11 libraries (apt)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	fi

$(STAMP): pyproject.toml | system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: the only pair that works with segmentation-models-pytorch here
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e ".[testing]"
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/nucseg demo --out demo_output

test: setup
	QT_API=pyqt6 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	QT_API=pyqt6 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts

benchmarks: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf build dist demo_output .pytest_cache
