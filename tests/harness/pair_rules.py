# -*- coding: utf-8 -*-
# Copyright: ebpf.microseg contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Map entries that allow one flow between two lab containers, written straight into a
Datapath's pinned maps (no rule compiler)."""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

TCP = 6


def allow_pair(dp, client, server, port, proto=TCP):
    """Both programs a flow crosses: the client's egress and the server's ingress.

    Class ids are derived from the addresses so several ports can share a pair.
    """
    c_octet = int(client.address.rsplit(".", 1)[1])
    s_octet = int(server.address.rsplit(".", 1)[1])
    egress_remote, egress_local = 100000 + s_octet, 200000 + c_octet * 256 + s_octet
    ingress_remote, ingress_local = 300000 + c_octet, 400000 + s_octet * 256 + c_octet
    dp.add_remote_cidr(server.address + "/32", "egress", next_class=egress_remote)
    dp.add_local_cidr(egress_remote, client.address + "/32", next_class=egress_local)
    dp.add_port_block(egress_local, proto, port, 16, "allow", policy_id=port)
    dp.add_remote_cidr(client.address + "/32", "ingress", next_class=ingress_remote)
    dp.add_local_cidr(ingress_remote, server.address + "/32", next_class=ingress_local)
    dp.add_port_block(ingress_local, proto, port, 16, "allow", policy_id=port)
