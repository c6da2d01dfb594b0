# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stand-in for the pip bootstrap script ansible-test downloads for `--venv` runs.

ansible-test fetches get-pip from its own CI file host, which closed networks (this
project's CI among them) cannot reach, although PyPI is reachable. It runs the script with
pip-install arguments (for example `--disable-pip-version-check pip==24.2`); we do the
same job with the interpreter's bundled pip (ensurepip) and then pip itself.
scripts/install-deps.sh puts this file where ansible-test caches the real one.
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import ensurepip
import subprocess
import sys


def main():
    ensurepip.bootstrap(upgrade=True)
    args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
    sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + args))


if __name__ == "__main__":
    main()
