# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the unit tests, the functional tests and bench/ share: the real-kernel datapath,
the container lab, packets, the probe, the ansible runner and the monitor process.

Nothing here is a test. Tests and bench import from here, never from each other.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type
