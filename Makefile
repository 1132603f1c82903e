# Everything needed on a fresh Debian 12 (bookworm) machine, as root.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CHROOT := build/trixie
APT_PACKAGES := opensmtpd opensmtpd-extras debootstrap openssl python3-venv ca-certificates \
  python3-httpx prometheus python3-prometheus-client
# table-consul's tests run Debian bullseye's consul 1.8.7, unpacked from its .deb (no install)
CONSUL := build/consul/usr/bin/consul
BULLSEYE := build/apt
BULLSEYE_APT := -o Dir::Etc::sourcelist=$(CURDIR)/$(BULLSEYE)/sources.list \
  -o Dir::Etc::sourceparts=- -o Dir::Etc::preferences=/dev/null \
  -o Dir::Etc::preferencesparts=$(CURDIR)/$(BULLSEYE)/preferences.d \
  -o Dir::State::Lists=$(CURDIR)/$(BULLSEYE)/lists -o Dir::Cache=$(CURDIR)/$(BULLSEYE)/cache \
  -o Dir::State::status=/dev/null -o APT::Sandbox::User=root

.PHONY: demo test deps venv chroot consul lint bench clean fuzz

demo: deps venv
	$(PY) examples/demo.py

test: deps venv chroot consul lint
	$(PY) -m pytest -q -p no:cacheprovider tests

# The long fuzz run (docs/testing.md, "Fuzzing"): 100,000 inputs per process target.
fuzz: venv
	FUZZ_BUDGET=long FUZZ_CORPUS_OUT=$(CURDIR)/build/fuzz-found \
	  $(PY) -m pytest -q -p no:cacheprovider tests/fuzz

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

chroot: $(CHROOT)/.installed $(CHROOT)/.httpx $(CHROOT)/.prometheus-client
$(CHROOT)/.installed:
	rm -rf $(CHROOT) && mkdir -p build
	debootstrap --variant=minbase \
	  --include=opensmtpd,opensmtpd-table-passwd,python3,python3-httpx,python3-prometheus-client,ca-certificates \
	  trixie $(CHROOT) http://deb.debian.org/debian
	touch $@

# table-consul runs under the chroot's python3 and needs httpx (chroots built before it)
$(CHROOT)/.httpx: $(CHROOT)/.installed
	chroot $(CHROOT) /usr/bin/python3 -c 'import httpx' 2>/dev/null || { \
	  chroot $(CHROOT) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive chroot $(CHROOT) apt-get install -y -q python3-httpx; }
	touch $@

# filter-prometheus runs under the chroot's python3 and needs prometheus_client
$(CHROOT)/.prometheus-client: $(CHROOT)/.installed
	chroot $(CHROOT) /usr/bin/python3 -c 'import prometheus_client' 2>/dev/null || { \
	  chroot $(CHROOT) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive chroot $(CHROOT) apt-get install -y -q python3-prometheus-client; }
	touch $@

consul: $(CONSUL)
$(CONSUL):
	rm -rf $(BULLSEYE) build/consul
	mkdir -p $(BULLSEYE)/lists/partial $(BULLSEYE)/cache/archives/partial $(BULLSEYE)/preferences.d
	echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main' \
	  > $(BULLSEYE)/sources.list
	apt-get $(BULLSEYE_APT) update -q
	cd $(BULLSEYE) && apt-get $(BULLSEYE_APT) download consul
	dpkg -x $(BULLSEYE)/consul_*.deb build/consul
	$(CONSUL) version

bench: deps venv chroot consul
	$(PY) bench/table_lookups.py
	$(PY) bench/filter_prometheus.py
	$(PY) bench/consul_lookups.py

clean:
	rm -rf $(VENV) build
