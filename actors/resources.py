"""Resident memory of an actor's process tree, for the `memory/*` metrics."""

import psutil


def process_tree_rss_mb(include_children: bool = True) -> float:
    """RSS of this process plus (optionally) its children (a reward worker's scoring child, for example), in MiB."""
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True) if include_children else []:
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:  # a child that exited between listing and reading holds no memory
            continue
    return total / 2**20
