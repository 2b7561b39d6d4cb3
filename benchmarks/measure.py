"""What the benchmark scripts share: the peak memory of a timed block, and writing a report.

The scripts run as files, not as a package: each puts this folder on ``sys.path``
and imports ``from measure import PeakMemory``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import threading

MIB = 2**20
STATM = "/proc/self/statm"


class PeakMemory:
    """The peak memory a block used, in MiB: ``.peak_mib`` once the block has ended.

        with PeakMemory() as memory:
            run()
        memory.peak_mib

    ``device="cpu"`` (the default): the highest resident set size (RSS) of the
    whole process during the block, minus its RSS at the block's start. A daemon
    thread reads ``/proc/self/statm`` every ``interval`` seconds (2 ms), and one
    reading is taken at enter and at exit. Its limits:

    - It is the process's RSS, not what the block allocated. At enter, glibc's
      ``malloc_trim(0)`` hands the free heap pages back to the system, so that
      memory glibc kept from earlier blocks is counted again when this block
      reuses it; caches other allocators keep (XLA's) are still reused unseen,
      so compare blocks run in comparable states (each after the same warm-up).
    - Everything in the process counts: JAX/XLA buffers and compiled programs
      (they live in this process), lazy imports, other threads.
    - A spike shorter than the interval can be missed; the sampler also waits
      for the GIL, so readings can be several ms apart.
    - Linux only: without ``/proc/self/statm``, ``peak_mib`` is NaN.

    ``device="cuda"`` (or ``"cuda:N"``): torch's ``max_memory_allocated`` over the
    block (its peak statistics are reset at enter) minus the bytes allocated at
    enter: tensors torch allocates on that device, not the allocator's cached
    reserve, nor JAX's or cuBLAS's own memory.
    """

    def __init__(self, device="cpu", interval=0.002):
        self.device, self.interval = device, interval
        self.cuda = str(device).startswith("cuda")
        self.peak_mib = None

    def __enter__(self):
        if self.cuda:
            import torch  # only here: the CPU path serves JAX-only scripts too

            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        try:
            self.fd = os.open(STATM, os.O_RDONLY)  # one descriptor re-read with pread: ~1 us a reading
        except OSError:
            self.fd = None
            return self
        self.page = os.sysconf("SC_PAGE_SIZE")
        release_free_heap()
        self.start = self.peak = self.resident()
        self.stop = threading.Event()
        self.sampler = threading.Thread(target=self.sample, daemon=True, name="PeakMemory")
        self.sampler.start()
        return self

    def __exit__(self, *exc_info):
        if self.cuda:
            import torch

            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self.start) / MIB
            return False
        if self.fd is None:
            self.peak_mib = float("nan")
            return False
        self.stop.set()
        self.sampler.join()
        self.peak = max(self.peak, self.resident())
        os.close(self.fd)
        self.peak_mib = (self.peak - self.start) / MIB
        return False

    def resident(self):
        """The process's RSS now, in bytes (statm's second field, in pages)."""
        return int(os.pread(self.fd, 128, 0).split()[1]) * self.page

    def sample(self):
        while not self.stop.wait(self.interval):  # wait, not sleep: exit stops it at once
            self.peak = max(self.peak, self.resident())


def release_free_heap():
    """glibc's ``malloc_trim(0)``: return freed heap memory to the system (a no-op where glibc is absent)."""
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # no libc found, or a libc without malloc_trim (musl, macOS)
        pass


def write_report(out, stem, title, command, table, report):
    """``out/stem.json`` (the whole ``report``) and ``out/stem.md``: the title, the command, the table, and the
    report's settings and versions."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (out / f"{stem}.md").write_text(
        f"# {title}\n\nCommand: `{command}`\n\n{table}\n\nSettings: {json.dumps(report['settings'])}\n\n"
        f"Versions: {json.dumps(report['versions'])}\n")
