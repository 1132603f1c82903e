# Everything needed on a fresh Debian 12 (bookworm) machine, as root.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CHROOT := build/trixie
APT_PACKAGES := opensmtpd opensmtpd-extras debootstrap openssl python3-venv ca-certificates

.PHONY: demo test deps venv chroot lint bench clean

demo: deps venv
	$(PY) examples/demo.py

test: deps venv chroot lint
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy

deps:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PACKAGES); \
	fi
	@# policy-rc.d keeps apt from starting a system smtpd (it would hold /var/run/smtpd.sock)

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	/usr/bin/python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

chroot: $(CHROOT)/.installed
$(CHROOT)/.installed:
	rm -rf $(CHROOT) && mkdir -p build
	debootstrap --variant=minbase \
	  --include=opensmtpd,opensmtpd-table-passwd,python3,ca-certificates \
	  trixie $(CHROOT) http://deb.debian.org/debian
	touch $@

bench: deps venv chroot
	$(PY) bench/table_lookups.py

clean:
	rm -rf $(VENV) build
