"""benchmarks/measure.py: PeakMemory sees a block's peak above the memory already in use, freed or not."""

import torch
from conftest import load_benchmark


def test_peak_memory_sees_a_tensor_freed_inside_the_block():
    measure = load_benchmark("measure.py")
    with measure.PeakMemory() as memory:
        x = torch.ones(50_000_000)  # 200 MB (191 MiB), every page written
        del x  # freed before exit: only the sampling thread saw it
    assert memory.peak_mib >= 150


def test_peak_memory_of_an_empty_block_is_small():
    measure = load_benchmark("measure.py")
    kept = torch.ones(50_000_000)  # in use before the block: not counted
    with measure.PeakMemory() as memory:
        pass
    del kept
    assert 0 <= memory.peak_mib < 50
