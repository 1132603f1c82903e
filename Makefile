# Everything needed on a fresh Debian 12 (bookworm) machine, as root.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := opensmtpd opensmtpd-extras rsyslog debootstrap openssl python3-venv ca-certificates \
  python3-httpx prometheus python3-prometheus-client
# table-consul's tests run Debian bullseye's consul 1.8.7, unpacked from its .deb (no install)
CONSUL := build/consul/usr/bin/consul
BULLSEYE := build/apt
BULLSEYE_APT := -o Dir::Etc::sourcelist=$(CURDIR)/$(BULLSEYE)/sources.list \
  -o Dir::Etc::sourceparts=- -o Dir::Etc::preferences=/dev/null \
  -o Dir::Etc::preferencesparts=$(CURDIR)/$(BULLSEYE)/preferences.d \
  -o Dir::State::Lists=$(CURDIR)/$(BULLSEYE)/lists -o Dir::Cache=$(CURDIR)/$(BULLSEYE)/cache \
  -o Dir::State::status=/dev/null -o APT::Sandbox::User=root

# Debian packages (make deb): built with Debian's own tooling, into build/deb
DEB_DIR := build/deb
DEB_BUILD_DEPS := debhelper dh-python pybuild-plugin-pyproject python3-all python3-hatchling \
  lintian
DIST_DIR := build/dist

.PHONY: demo test deps venv chroot consul lint bench clean deb deb-deps dist fuzz

demo: deps venv
	$(PY) examples/demo.py

# tests/artifacts checks build/deb and build/dist; tests/e2e/deb installs the .debs in
# fresh Debian 12, 13 and sid chroots, under each one's own smtpd
# The docs tier (tests/docs: its own fresh chroots, one walk at a time, the pages' fixed
# ports 25/13742/8500 that no other test uses) runs beside the rest, its output after it.
test: deps venv chroot consul lint deb dist
	@mkdir -p build; \
	$(PY) -m pytest -q -p no:cacheprovider tests/docs > build/docs-tier.log 2>&1 & docs=$$!; \
	$(PY) -m pytest -q -p no:cacheprovider tests --ignore=tests/docs; rest=$$?; \
	wait $$docs; docs_status=$$?; \
	echo "== tests/docs (ran beside the rest; exit status $$docs_status)"; cat build/docs-tier.log; \
	test $$rest -eq 0 && test $$docs_status -eq 0

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

# smtpd 7.6 (Debian 13 trixie) and 7.9 (sid) each run in a debootstrap chroot.
# python3-typing-extensions: debootstrap takes the first of "A | B" dependencies, and sid's
# python3-anyio (for httpx) wants python3-supported-min (>= 3.15) | python3-typing-extensions.
CHROOTS := build/trixie build/sid
CHROOT_PACKAGES := opensmtpd,opensmtpd-table-passwd,python3,python3-httpx,python3-prometheus-client,python3-typing-extensions,ca-certificates
chroot: $(foreach c,$(CHROOTS),$(c)/.installed $(c)/.httpx $(c)/.prometheus-client)

# Never rm -rf a chroot with something mounted in it (a bound /dev would take the host's
# device nodes with it): the e2e fixtures unmount when their last user ends.
build/%/.installed:
	@if awk -v d="$$(realpath -m build/$*)/" 'index($$2 "/", d) == 1 {found=1} END {exit !found}' /proc/mounts; then \
	  echo "build/$* has mounts (a test session running?): not rebuilding it"; exit 1; fi
	rm -rf build/$* && mkdir -p build
	debootstrap --variant=minbase --include=$(CHROOT_PACKAGES) \
	  $* build/$* http://deb.debian.org/debian
	touch $@

# table-consul runs under the chroot's python3 and needs httpx (chroots built before it)
build/%/.httpx: build/%/.installed
	chroot build/$* /usr/bin/python3 -c 'import httpx' 2>/dev/null || { \
	  chroot build/$* apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive chroot build/$* apt-get install -y -q python3-httpx; }
	touch $@

# filter-prometheus runs under the chroot's python3 and needs prometheus_client
build/%/.prometheus-client: build/%/.installed
	chroot build/$* /usr/bin/python3 -c 'import prometheus_client' 2>/dev/null || { \
	  chroot build/$* apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive chroot build/$* apt-get install -y -q python3-prometheus-client; }
	touch $@

deb-deps:
	@dpkg -s $(DEB_BUILD_DEPS) >/dev/null 2>&1 || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(DEB_BUILD_DEPS); }

# dpkg-buildpackage writes next to the source tree: build a copy of the checkout
deb: deb-deps
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/src/py-opensmtpd
	tar -c --exclude-vcs --exclude=./build --exclude=./.venv --exclude=./dist \
	  --exclude=__pycache__ --exclude='*.egg-info' --exclude=.mypy_cache --exclude=.ruff_cache \
	  --exclude=.pytest_cache --exclude=.hypothesis . | tar -x -C $(DEB_DIR)/src/py-opensmtpd
	@# the system python3 only (not one from a pyenv or virtualenv earlier in PATH)
	cd $(DEB_DIR)/src/py-opensmtpd && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b
	mv $(DEB_DIR)/src/*.deb $(DEB_DIR)/src/*.changes $(DEB_DIR)/src/*.buildinfo $(DEB_DIR)/
	rm -rf $(DEB_DIR)/src
	lintian --fail-on error --info $(DEB_DIR)/*.changes

# The wheel and sdist PyPI would get, checked by twine
dist: venv
	rm -rf $(DIST_DIR)
	$(PY) -m build --outdir $(DIST_DIR) .
	$(PY) -m twine check --strict $(DIST_DIR)/*

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
	$(PY) bench/smtpd_tables.py

clean:
	@if awk -v d="$$(realpath -m build)/" 'index($$2 "/", d) == 1 {found=1} END {exit !found}' /proc/mounts; then \
	  echo "something is mounted under build/ (a test session running?): not removing it"; exit 1; fi
	rm -rf $(VENV) build
