# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""lab/fleet.py loaded as a module (it is a script, not a package member), and whether a
lab fleet is up on this machine (its names and addresses are fixed)."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import importlib.util
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_fleet():
    spec = importlib.util.spec_from_file_location("microseg_lab_fleet",
                                                  os.path.join(ROOT, "lab", "fleet.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fleet_mod = _load_fleet()


def lab_is_up():
    netns = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE,
                           universal_newlines=True, check=False).stdout
    link = subprocess.run(["ip", "link", "show", fleet_mod.MGMT_BRIDGE], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=False)
    return link.returncode == 0 or "msl-h" in netns
