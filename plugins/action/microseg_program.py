# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hands the collection's BPF C source to microseg_program, so no copy step is needed."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

# Only the source listing is used here: _loader imports BCC inside the functions that
# compile, so this works on a controller without BCC.
from ansible_collections.ebpf.microseg.plugins.module_utils import _loader


def collection_bpf_dir():
    # plugins/action/<this file> -> <collection root>/files/bpf
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(os.path.dirname(os.path.dirname(here)), "files", "bpf")


def read_bpf_sources(directory=None):
    directory = directory or collection_bpf_dir()
    try:
        return _loader.read_sources(directory)
    except (IOError, OSError, _loader.LoaderError) as exc:
        raise AnsibleActionFail("cannot read the BPF sources under %s: %s" % (directory, exc))


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        module_args = dict(self._task.args)
        if module_args.get("state", "present") == "present" and not module_args.get("bpf_source"):
            module_args["bpf_source"] = read_bpf_sources()
        result.update(self._execute_module(module_name="ebpf.microseg.microseg_program",
                                           module_args=module_args, task_vars=task_vars))
        return result
