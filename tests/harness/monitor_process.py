# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""files/microseg-monitor run as the role runs it, for the functional tests."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import os
import signal
import subprocess
import sys
import threading
import time

from ansible_collections.ebpf.microseg.tests.harness.ansible_runner import collections_path

MONITOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "files",
                       "microseg-monitor")
# Short timeouts so that the tests see sessions expire.
TIMEOUTS = {"udp": 2, "tcp-syn": 2, "tcp-closed": 1, "tcp-established": 30, "icmp": 2}


class MonitorProcess:
    """The real executable, as the role starts it; stdout (events) and stderr collected."""

    def __init__(self, pin, *extra):
        self.tmp = "/tmp/%s" % os.path.basename(pin)
        os.makedirs(self.tmp, exist_ok=True)
        self.log_file = os.path.join(self.tmp, "events.jsonl")
        self.pid_file = os.path.join(self.tmp, "monitor.pid")
        argv = [sys.executable, MONITOR, "--pin-path", pin, "--interval", "0.25",
                "--metrics-port", "0", "--log-file", self.log_file, "--pid-file", self.pid_file]
        for name, seconds in TIMEOUTS.items():
            argv += ["--timeout-" + name, str(seconds)]
        env = dict(os.environ, PYTHONPATH=collections_path())
        self.proc = subprocess.Popen(argv + list(extra), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, universal_newlines=True, env=env)
        self.stdout = []
        self.stderr = []
        self.readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout)),
                        threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr))]
        for reader in self.readers:
            reader.daemon = True
            reader.start()

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for(self, text, timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in list(self.stderr):
                if text in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("monitor never said %r; stderr:\n%s" % (text, "\n".join(self.stderr)))

    @property
    def metrics_url(self):
        line = self.wait_for("metrics on ")
        return line.split("metrics on ", 1)[1].strip()

    def stop(self, sig=signal.SIGTERM, timeout=5.0):
        """Send sig and reap the process (SIGKILL after timeout); its files stay, as a
        killed monitor leaves them."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for reader in self.readers:
            reader.join(2)
        return self.proc.returncode

    def terminate(self, timeout=5.0):
        """Stop (SIGTERM) and remove the event log, pid file and directory."""
        self.stop(signal.SIGTERM, timeout)
        for name in (self.log_file, self.pid_file):
            if os.path.exists(name):
                os.unlink(name)
        if os.path.isdir(self.tmp):
            os.rmdir(self.tmp)
        return self.proc.returncode
