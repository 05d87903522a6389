"""An Engine that closes every file descriptor above 2 but its sockets (the connection to
the host is one), the lifeline's among them, then sleeps: its worker must still die with
the host."""

from __future__ import annotations

import os
import time


class CloseFdsEngine:
    def initialize(self, config, **kwargs):
        self.marker = config["marker"]

    def run(self, float_features, str_features, int_feature):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                if fd > 2 and not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                    os.close(fd)
            except OSError:
                pass
        with open(self.marker, "w"):
            pass
        time.sleep(60)
        return 1, ""
