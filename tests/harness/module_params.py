# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A module's parameters as a task that sets none of them would get (the argument_spec
defaults; environment fallbacks are not applied), for code that calls module_utils the way
the module does without running the module."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

from ansible_collections.ebpf.microseg.plugins.modules import microseg_program


def program_defaults():
    """microseg_program's parameters, every one at its default."""
    return dict((key, spec.get("default"))
                for key, spec in microseg_program.argument_spec().items())
