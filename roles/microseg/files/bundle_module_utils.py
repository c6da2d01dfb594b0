# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side: pack the collection's module_utils into one importable zip for the
monitor (one file to copy instead of one task item per module). The zip is byte-for-byte
reproducible - fixed timestamps, sorted names - so an unchanged tree copies as unchanged.

  python bundle_module_utils.py MODULE_UTILS_DIR OUTPUT_ZIP
"""

import os
import sys
import zipfile

PREFIX = "ansible_collections/ebpf/microseg/plugins/module_utils/"


def _info(path):
    info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def main(source, output):
    names = sorted(n for n in os.listdir(source) if n.endswith(".py"))
    tmp = output + ".tmp"
    # zipimport has no namespace packages: every level gets an empty __init__.py.
    parts = PREFIX.rstrip("/").split("/")
    packages = ["/".join(parts[:depth]) + "/__init__.py" for depth in range(1, len(parts) + 1)]
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in packages:
            bundle.writestr(_info(path), b"")
        for name in names:
            with open(os.path.join(source, name), "rb") as handle:
                bundle.writestr(_info(PREFIX + name), handle.read())
    os.replace(tmp, output)
    print(output)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
