"""Where a torch.distributed rendezvous is hosted: a node's address and a TCP port free on it.

No torch import here: `node_address_and_port` runs in a fresh Ray worker on the critical path of a run's start-up,
and a worker unpickling it imports only this module.
"""

from __future__ import annotations

import socket

import ray


def free_port() -> int:
    """A TCP port free on this host right now (the OS picks it; free it again before the store binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def address_and_free_port() -> tuple[str, int]:
    """This node's address and a port free on it."""
    return ray.util.get_node_ip_address(), free_port()


node_address_and_port = ray.remote(num_cpus=0)(address_and_free_port)
"""The same, as a 0-CPU task: schedule it onto the node that will host the rendezvous."""
