# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The modules need root on the target: say so at once, before a lock or a pin is opened.

Without it the first thing to fail is whatever the module touches first ("[Errno 13]
Permission denied: '/run/lock/microseg-policy-....lock'", "BPF_OBJ_GET failed"), which
names neither the cause nor the fix.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os

try:
    import pwd
except ImportError:  # pragma: no cover - not on Linux
    pwd = None


def _user(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except (AttributeError, KeyError):
        return "?"


def root_problem(module_name, why):
    """The message when this process is not root, None when it is.

    why: what the module would have done that needs root ("it opens the pinned maps").
    """
    uid = os.geteuid()
    if uid == 0:
        return None
    return ("%s needs root (become: true): it runs as user %s (uid %d) here, and %s; set "
            "become: true on the task or play, or connect as root"
            % (module_name, _user(uid), uid, why))


def require_root(module, module_name, why):
    """fail_json at once unless the module runs as root."""
    problem = root_problem(module_name, why)
    if problem is not None:
        module.fail_json(msg=problem, changed=False)
