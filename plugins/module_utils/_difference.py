# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Before and after, facet by facet: the one place a module's `diff` is assembled.

A plan records each facet it compares (the attached interfaces, the config, the rules...)
with what the host holds and what the run leaves. `diff`, the predicted `after` of check
mode and "what differs" all read the same record, so they cannot disagree.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import copy


class DifferenceTracker:
    """Ordered facets, each with a before and an after value."""

    def __init__(self):
        self._facets = []
        self._index = {}

    def add(self, name, before, after):
        """Record a facet (again: replace it)."""
        if name in self._index:
            self._facets[self._index[name]] = (name, before, after)
        else:
            self._index[name] = len(self._facets)
            self._facets.append((name, before, after))

    def set_after(self, name, after):
        self.add(name, self._facets[self._index[name]][1], after)

    def __contains__(self, name):
        return name in self._index

    def differing(self):
        """The facets that end other than they start, in order."""
        return [name for name, before, after in self._facets if before != after]

    @property
    def before(self):
        return dict((name, before) for name, before, _after in self._facets)

    @property
    def after(self):
        return dict((name, after) for name, _before, after in self._facets)

    def diff(self):
        """What a module returns as `diff` (copies: the caller may change them)."""
        return {"before": copy.deepcopy(self.before), "after": copy.deepcopy(self.after)}
