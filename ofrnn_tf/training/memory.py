"""What training may keep in memory (`--train.cache_records_mib`, capped by the memory
the process may use), and memory handed back to the system once let go."""

from __future__ import annotations

import ctypes
from typing import Optional


# The share of the memory this process may use that `--train.cache_records_mib` is capped
# at. The rest is the process's own: TensorFlow and the model (1.3 GB in the main job
# besides what it keeps), and the allocator, which holds on to each pass's peak.
_MEMORY_SHARE = 1 / 3


def memory_budget_mib(cache_records_mib: int, limit: Optional[tuple[float, str]] = None
                      ) -> tuple[float, Optional[str]]:
    """``(MiB, why capped)``: what training may keep in memory at once, the training
    records and stage 2's M_map outputs together: `cache_records_mib`, capped at a third of
    `limit` (`host_limits.memory_limit_mib`); the reason is None where the flag's value stands."""
    if limit is None:
        return float(cache_records_mib), None
    available, source = limit
    cap = available * _MEMORY_SHARE
    if cap >= cache_records_mib:
        return float(cache_records_mib), None
    return cap, f"a third of the {available:.0f} MiB this process may use ({source})"


def give_back_freed_memory() -> None:
    """Hands the memory this process has freed back to the system, where the C library
    can (glibc's ``malloc_trim``; elsewhere nothing). Records let go otherwise stay in
    its heaps, counted against a memory limit, and the large arrays made next do not
    reuse them: the main job's pass of M_map's outputs, its records let go, peaked at
    1.8-2.0 GB without this and 1.55 GB with it (2.0 GB with the records kept)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
