"""How rows are shared out, everywhere rows are shared out (rollout workers, reward workers, learner ranks)."""


def split_evenly(count: int, parts: int) -> list[range]:
    """Contiguous ranges covering 0..count-1 in order, sizes differing by at most one (the first ones larger)."""
    if parts < 1:
        raise ValueError(f"cannot split into {parts} parts")
    base, extra = divmod(count, parts)
    bounds, start = [], 0
    for part in range(parts):
        size = base + (1 if part < extra else 0)
        bounds.append(range(start, start + size))
        start += size
    return bounds
