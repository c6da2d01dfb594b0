# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""100,000 and 200,000 rules of random names converge with distinct, stable policy ids
(issue 17: before, most such policies were refused for a crc32 collision). The converge
times are printed (-s) and in bench/converge.py --random-names."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import pytest

from ansible_collections.ebpf.microseg.tests.harness import policy_scale


@pytest.mark.parametrize("count", [100000, 200000])
def test_random_names_converge_with_distinct_stable_ids(count):
    rows = policy_scale.random_name_rows(count)
    for row in rows:
        print(dict(zip(policy_scale.HEADERS, row)))
    assert len(rows) == 3
    assert rows[-1][3] >= policy_scale.CRAFTED      # the crafted names had to probe
