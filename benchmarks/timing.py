"""Timing shared by the benchmarks: the median of repeated runs, after one warm-up run."""

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """`clock=time.thread_time` counts this thread's CPU seconds: a shared machine's waits left out."""
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)
