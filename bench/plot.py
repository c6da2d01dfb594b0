# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plot the short-connection rate against the policy size N for every contender.

Reads the raw samples bench/traffic.py wrote (bench/traffic.json) and draws the median over
rounds with the min-max spread as error bars, log x axis; `none` does not depend on N and is
drawn as a horizontal band. Writes bench/traffic.png.

    plot.py [traffic.json [traffic.png]]
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv):
    source = argv[0] if argv else os.path.join(HERE, "traffic.json")
    target = argv[1] if len(argv) > 1 else os.path.join(HERE, "traffic.png")
    try:
        import matplotlib
        matplotlib.use("Agg")   # no display on a benchmark host
        import matplotlib.pyplot as plt
    except ImportError:
        sys.stderr.write("plot.py: matplotlib is missing (pip install matplotlib)\n")
        return 1
    with open(source) as handle:
        data = json.load(handle)
    samples = data["samples"]
    counts = sorted(data["counts"])

    fig, ax = plt.subplots(figsize=(8, 5))
    none = [s["conn_per_s"] for s in samples if s["contender"] == "none"]
    if none:
        ax.axhspan(min(none), max(none), color="grey", alpha=0.15)
        ax.axhline(statistics.median(none), color="black", linestyle="--",
                   label="none (no filter)")
    for name in data["contenders"]:
        if name == "none":
            continue
        xs, medians, low, high = [], [], [], []
        for count in counts:
            values = [s["conn_per_s"] for s in samples
                      if s["contender"] == name and s["n"] == count]
            if not values:
                continue
            med = statistics.median(values)
            xs.append(count)
            medians.append(med)
            low.append(med - min(values))
            high.append(max(values) - med)
        if xs:
            ax.errorbar(xs, medians, yerr=[low, high], marker="o", capsize=4, label=name)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(counts)
    ax.set_xticklabels(["{:,}".format(c) for c in counts])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("rules in the policy (N), log scale")
    ax.set_ylabel("short TCP connections per second")
    ax.set_title("Connection rate against policy size, %d round(s), median and min-max\n"
                 "(kernel %s, %s CPUs)" % (data.get("rounds", 0), data.get("kernel", "?"),
                                           data.get("cpus", "?")))
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    sys.stderr.write("plot.py: wrote %s\n" % target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
