# ebpf.microseg: run as root. `make test` installs what it needs (scripts/install-deps.sh).
SHELL := /bin/bash
.DEFAULT_GOAL := help

ROOT := $(CURDIR)
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
BUILD := $(ROOT)/build
# The collection is importable as ansible_collections.ebpf.microseg through this link.
COLL := $(BUILD)/ansible_collections/ebpf/microseg
# Only for pytest, demo and bench: ansible-test must see nothing but its own copy.
WITH_COLL := ANSIBLE_COLLECTIONS_PATH=$(BUILD) PYTHONPATH=$(BUILD)
# ansible-test resolves symlinks, so sanity runs on a copy of the tracked and new files.
SANITY_ROOT := $(BUILD)/sanity
SANITY_COLL := $(SANITY_ROOT)/ansible_collections/ebpf/microseg
LAB_HOSTS ?= 3
VM_HOSTS ?= 1
LAB_ANSIBLE := $(WITH_COLL) ANSIBLE_FORKS=20 ANSIBLE_HOST_KEY_CHECKING=False
PYTEST := $(WITH_COLL) $(PY) -m pytest -p no:cacheprovider -q -ra

.PHONY: help deps collection copy sanity lint integration molecule molecule-vm demo-vm demo-vm-clean unit functional test demo demo-clean bench bench-flood bench-floods bench-explain build clean

help:
	@echo "make demo        build the lab fleet (LAB_HOSTS=3), run site.yml over SSH, print the matrix"
	@echo "make demo-clean  remove the lab fleet"
	@echo "make demo-vm     the same story on a qemu guest with podman (VM_HOSTS=1; minutes under TCG)"
	@echo "make demo-vm-clean  stop the guests"
	@echo "make molecule-vm the vm scenario alone (image cached under /var/cache/ebpf-microseg/vm)"
	@echo "make test        install deps; sanity, lint, integration, molecule, unit and real-kernel tests"
	@echo "make lint        ansible-lint --profile production (config: .ansible-lint), 0 findings"
	@echo "make bench       data plane ns/packet and control plane timings (bench/results.md)"
	@echo "make bench-flood a denied flood: shipped (no deny sessions) vs deny entries"
	@echo "make bench-floods real floods from one container: the others' connections"
	@echo "make bench-explain microseg_explain latency, 1 and 100 flows against 10,000 rules"
	@echo "make build       ansible-galaxy collection build into build/dist"

deps:
	@bash scripts/install-deps.sh

collection:
	@mkdir -p $(BUILD)/ansible_collections/ebpf
	@ln -sfn $(ROOT) $(COLL)

copy: deps
	@rm -rf $(SANITY_ROOT) && mkdir -p $(SANITY_COLL)
	@git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C $(SANITY_COLL)
	@# Inside our ignored build/ the outer repo would hide every file from ansible-test.
	@cd $(SANITY_COLL) && git init -q && git add -A

sanity: copy
	cd $(SANITY_COLL) && env -u ANSIBLE_COLLECTIONS_PATH -u PYTHONPATH $(VENV)/bin/ansible-test sanity --venv --python 3.11 --color no

# As root, on this machine: the targets build namespaces and attach real programs.
# --local keeps the system site packages (BCC comes from the distro, not PyPI).
integration: copy
	cd $(SANITY_COLL) && env -u ANSIBLE_COLLECTIONS_PATH -u PYTHONPATH $(VENV)/bin/ansible-test integration --local --python 3.11 --allow-destructive --allow-root --color no $(TARGETS)

# Through the build/ link, like the tests: ebpf.microseg.* resolves to this tree, and
# .ansible-lint's offline keeps ansible-lint from installing a copy of it into ~/.ansible.
lint: deps collection
	cd $(COLL) && $(WITH_COLL) PATH=$(VENV)/bin:$$PATH $(VENV)/bin/ansible-lint --profile production

unit: deps collection
	cd $(COLL) && $(PYTEST) tests/unit

functional: deps collection
	cd $(COLL) && $(PYTEST) tests/functional

test: deps collection sanity lint integration molecule
	cd $(COLL) && $(PYTEST) tests/unit tests/functional

# The lab fleet: LAB_HOSTS hosts (network namespace + mount namespace + sshd each) on a
# management bridge, converged over SSH by site.yml, then the measured allow/deny matrix.
demo: deps collection
	$(PY) lab/fleet.py up --hosts $(LAB_HOSTS)
	$(LAB_ANSIBLE) $(VENV)/bin/ansible-playbook -i lab/inventory site.yml
	$(LAB_ANSIBLE) $(VENV)/bin/ansible-playbook -i lab/inventory lab/verify.yml

demo-clean: deps
	$(PY) lab/fleet.py down

# Every scenario builds and destroys its platform itself (stop a demo lab or demo-vm first).
molecule: deps collection
	$(LAB_ANSIBLE) PATH=$(VENV)/bin:$$PATH $(VENV)/bin/molecule test --all

molecule-vm: deps collection
	$(LAB_ANSIBLE) PATH=$(VENV)/bin:$$PATH $(VENV)/bin/molecule test -s vm

# Real hosts: VM_HOSTS qemu guests (own kernel, systemd, podman containers), site.yml over
# SSH, then the matrix measured between the podman containers inside each guest.
demo-vm: deps collection
	$(PY) lab/vm.py up --hosts $(VM_HOSTS)
	$(LAB_ANSIBLE) $(VENV)/bin/ansible-playbook -i lab/inventory-vm site.yml
	$(LAB_ANSIBLE) $(VENV)/bin/ansible-playbook -i lab/inventory-vm lab/verify.yml

demo-vm-clean: deps
	$(PY) lab/vm.py down

# Data plane (PROG_TEST_RUN and real traffic vs iptables/nftables), control plane, lab fleet.
bench: deps collection
	$(PY) -m pip install -q --disable-pip-version-check -r bench/requirements.txt
	cd $(COLL) && $(WITH_COLL) ANSIBLE_FORKS=20 $(PY) bench/run.py --full

# One table in about a minute: the cost of a denied flood and the sessions it leaves.
bench-flood: deps collection
	cd $(COLL) && $(WITH_COLL) $(PY) bench/denied_flood.py

# Floods from one container on real traffic: what the other containers see (issue 24).
bench-floods: deps collection
	cd $(COLL) && $(WITH_COLL) $(PY) bench/floods.py

# microseg_explain against 10,000 rules: 1 and 100 flows, module code path and ad hoc.
bench-explain: deps collection
	cd $(COLL) && $(WITH_COLL) $(PY) bench/explain.py

build: deps
	@mkdir -p $(BUILD)/dist
	$(VENV)/bin/ansible-galaxy collection build --force --output-path $(BUILD)/dist

clean:
	rm -rf $(BUILD)
