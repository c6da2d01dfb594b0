# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The files an AWX execution environment is built from say what the collection needs:
controller packages in requirements.txt, target packages (never PyPI's "bcc") in bindep.txt
under the target profile, and the EE definitions point at them."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def lines(name):
    with open(os.path.join(ROOT, name)) as handle:
        return [line.strip() for line in handle if line.strip() and not line.startswith("#")]


def test_requirements_are_the_controllers_and_never_pypi_bcc():
    names = [re.split(r"[<>=!\[ ]", line)[0].lower() for line in lines("requirements.txt")]
    assert names == ["ansible-core", "jinja2", "netaddr"]
    assert "bcc" not in names and "pyroute2" not in names


def test_bindep_lists_target_packages_for_both_families_under_the_target_profile():
    entries = lines("bindep.txt")
    assert all("target" in re.search(r"\[(.*)\]", entry).group(1).split() for entry in entries)
    dpkg = [e.split()[0] for e in entries if "platform:dpkg" in e]
    rpm = [e.split()[0] for e in entries if "platform:rpm" in e]
    assert "python3-bpfcc" in dpkg and "python3-bcc" in rpm
    assert "python3-pyroute2" in dpkg and "python3-pyroute2" in rpm


def test_the_ee_definitions_point_at_those_files():
    with open(os.path.join(ROOT, "meta", "execution-environment.yml")) as handle:
        meta = yaml.safe_load(handle)
    assert meta["dependencies"] == {"python": "requirements.txt", "system": "bindep.txt"}
    with open(os.path.join(ROOT, "execution-environment.yml")) as handle:
        ee = yaml.safe_load(handle)
    assert ee["version"] == 3
    assert ee["dependencies"]["python"] == "requirements.txt"
    assert ee["dependencies"]["ansible_core"]["package_pip"].startswith("ansible-core")
    assert ee["additional_build_files"][0]["src"] == "build/dist"
