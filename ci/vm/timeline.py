"""ci/vm-bench --trace: where each microsecond of a QD 1 I/O goes, from QEMU's own trace.

One boot (the guest kernel's vIOMMU translating), the null-co controller, nvme-dio at QD 1 in
every mode of MODES, QEMU run with `-msg timestamp=on` and the nvme trace events of EVENTS
(QEMU 7.2's hw/nvme/trace-events). With timestamps on, QEMU's log backend writes each event as
`TID@SECONDS.MICROSECONDS:event args` (gettimeofday, the host's wall clock). The host notes
its own wall-clock time when the guest prints each step's VM-BEGIN/VM-END marker, so every
event is assigned to the step that ran then.

Per I/O (only I/O queues; QD 1, so one command is in flight at a time) the timeline is

    SQ tail doorbell -> command fetched (pci_nvme_io_cmd) -> block layer done (pci_nvme_rw_cb)
    -> completion queued (pci_nvme_enqueue_req_completion) [-> MSI-X sent (pci_nvme_irq_msix)]
    -> the guest's first doorbell after it (CQ head, or the next SQ tail) -> next SQ tail

and the table prints the median (and p90) of each step, their sum, and the median period
(doorbell to next doorbell, which at QD 1 is 1 / IOPS). QEMU posts the CQE itself in a
bottom half after "completion queued" and traces nothing there unless it raises an interrupt,
so in poll mode the step after "completion queued" includes that bottom half.

The trace slows QEMU down (every event is a formatted write to a file): the absolute figures
are the traced run's; the shares are what to read.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from pathlib import Path

import bench

MODES = ["poll", "irq"]  # a new nvme-dio mode (hybrid) is one more entry
EVENTS = [
    "pci_nvme_mmio_doorbell_sq",
    "pci_nvme_mmio_doorbell_cq",
    "pci_nvme_io_cmd",
    "pci_nvme_rw_cb",
    "pci_nvme_enqueue_req_completion",
    "pci_nvme_irq_msix",
    "pci_nvme_irq_pin",
    # Shadow doorbells (Doorbell Buffer Config): QEMU read the shadow value / wrote EventIdx.
    "pci_nvme_shadow_doorbell_sq",
    "pci_nvme_shadow_doorbell_cq",
    "pci_nvme_eventidx_sq",
    "pci_nvme_eventidx_cq",
    "pci_nvme_dbbuf_config",
]
SECONDS = 3  # measured, per mode
WARMUP = 1
# The first I/Os of a step's window are dropped (the run's warm-up second is inside it).
SKIP_FRACTION = 0.4

LINE = re.compile(r"^(\d+)@(\d+)\.(\d{6}):(pci_nvme_\w+) ?(.*)$")
QID = re.compile(r"\b(?:sqid|cqid) (\d+)")
VECTOR = re.compile(r"\bvector (\d+)")


@dataclasses.dataclass(frozen=True)
class Event:
    t: float  # host wall clock, seconds
    tid: int  # QEMU thread that logged it
    name: str  # without the pci_nvme_ prefix
    args: str

    @property
    def qid(self) -> int | None:
        m = QID.search(self.args)
        return int(m.group(1)) if m else None


def parse_trace(text: str) -> list[Event]:
    out = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            out.append(Event(int(m.group(2)) + int(m.group(3)) / 1e6, int(m.group(1)),
                             m.group(4)[len("pci_nvme_"):], m.group(5)))
    return out


@dataclasses.dataclass
class Io:
    doorbell: float
    cmd: float | None = None
    blk: float | None = None
    queued: float | None = None
    irq: float | None = None
    reap: float | None = None  # the guest's first doorbell write after `queued`
    next_doorbell: float | None = None


# (label, from, to): attributes of Io; rows whose ends are missing are left out.
STEPS = [
    ("SQ doorbell -> command fetched (QEMU's SQ bottom half)", "doorbell", "cmd"),
    ("command -> block layer done (null-co read)", "cmd", "blk"),
    ("block done -> completion queued", "blk", "queued"),
    ("completion queued -> MSI-X sent (CQ bottom half)", "queued", "irq"),
    ("MSI-X sent -> guest's first doorbell (interrupt, wake-up, reap)", "irq", "reap"),
    ("completion queued -> guest's first doorbell (CQ bottom half, then the poll finds it)",
     "queued", "reap"),
    ("guest's first doorbell -> next SQ doorbell (guest submits)", "reap", "next_doorbell"),
]


def timeline(events: list[Event]) -> list[Io]:
    """Completed I/Os, in order, from the events of one QD 1 run on I/O queues."""
    done, cur = [], None
    for e in events:
        if e.qid == 0 or (e.name == "irq_msix" and VECTOR.search(e.args)
                          and VECTOR.search(e.args).group(1) == "0"):
            continue  # the admin queue and its vector
        if e.name == "mmio_doorbell_sq":
            if cur is not None and cur.queued is not None:
                cur.next_doorbell = e.t
                if cur.reap is None:
                    cur.reap = e.t
                done.append(cur)
            cur = Io(e.t)
        elif cur is None:
            continue
        elif e.name == "io_cmd" and cur.cmd is None:
            cur.cmd = e.t
        elif e.name == "rw_cb" and cur.cmd is not None and cur.blk is None:
            cur.blk = e.t
        elif e.name == "enqueue_req_completion" and cur.cmd is not None and cur.queued is None:
            cur.queued = e.t
        elif e.name in ("irq_msix", "irq_pin") and cur.queued is not None and cur.irq is None:
            cur.irq = e.t
        elif e.name == "mmio_doorbell_cq" and cur.queued is not None and cur.reap is None:
            cur.reap = e.t
    return done


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def step_rows(ios: list[Io]) -> list[tuple[str, float, float, int]]:
    """(label, median us, p90 us, I/Os) per step that has data, then the period."""
    rows = []
    irq = any(io.irq is not None for io in ios)
    for label, a, b in STEPS:
        if irq and (a, b) == ("queued", "reap"):
            continue  # the two interrupt-mode rows above split it
        d = [(getattr(io, b) - getattr(io, a)) * 1e6 for io in ios
             if getattr(io, a) is not None and getattr(io, b) is not None]
        if d:
            rows.append((label, statistics.median(d), percentile(d, 0.9), len(d)))
    period = [(io.next_doorbell - io.doorbell) * 1e6 for io in ios]
    if period:
        rows.append(("period: SQ doorbell -> next SQ doorbell (= 1 / IOPS)",
                     statistics.median(period), percentile(period, 0.9), len(period)))
    return rows


def in_window(events: list[Event], begin: float, end: float) -> list[Event]:
    return [e for e in events if begin <= e.t <= end]


def report(mode: str, ios: list[Io], figures: bench.Figures | None) -> list[str]:
    kept = ios[int(len(ios) * SKIP_FRACTION):]
    rows = step_rows(kept)
    head = f"nvme-dio --mode {mode}, QD 1: {len(kept)} traced I/Os"
    if figures:
        head += f"; the bench itself: {figures.iops / 1e3:.1f}k IOPS, p50 {bench.fmt_us(figures.p50_us)} us"
    lines = [head]
    if not rows:
        return lines + ["  no complete I/O in the trace"]
    table = [["step", "median us", "p90 us", "I/Os"]]
    table += [[label, f"{med:.1f}", f"{p90:.1f}", str(n)] for label, med, p90, n in rows]
    lines += ["  " + l for l in bench.table(table)]
    # The chain that adds up to the period in this mode.
    chain = ["doorbell", "cmd", "blk", "queued"] + (["irq"] if any(r[0].startswith(
        "completion queued -> MSI-X") for r in rows) else []) + ["reap", "next_doorbell"]
    total = 0.0
    for a, b in zip(chain, chain[1:]):
        d = [(getattr(io, b) - getattr(io, a)) * 1e6 for io in kept
             if getattr(io, a) is not None and getattr(io, b) is not None]
        total += statistics.median(d) if d else 0.0
    mean = statistics.fmean((io.next_doorbell - io.doorbell) * 1e6 for io in kept)
    lines.append(f"  sum of the step medians along {' -> '.join(chain)}: {total:.1f} us "
                 f"(median period {rows[-1][1]:.1f} us, mean {mean:.1f} us)")
    return lines


def run(args, kdir: Path, out: Path, bdf: str, files, bench_boot, guest_failures) -> int:
    steps = [f"trace-{m}" for m in MODES]
    script = "".join(
        f"run_step trace-{m} "
        + bench.nvme_dio_cmd(m)(1, SECONDS, WARMUP).replace("@BDF@", bdf) + "\n"
        for m in MODES)
    extra = ["-msg", "timestamp=on"]
    for ev in EVENTS:
        extra += ["-trace", ev]
    b, sampler = bench_boot(args, kdir, out, "trace", "", script, files, extra)
    problems = guest_failures(b, steps)
    events = parse_trace((out / "trace-trace.log").read_text(errors="replace"))
    secs = bench.step_sections("\n".join(b.console))
    print()
    print("vm-bench --trace: QEMU's nvme trace events, per I/O, QD 1 (vIOMMU translating)")
    for m, name in zip(MODES, steps):
        times = sampler.steps.get(name, [])
        if len(times) != 2:
            problems.append(f"{name}: no begin/end markers")
            continue
        ios = timeline(in_window(events, times[0], times[1]))
        rc, text = secs.get(name, (None, ""))
        figs = bench.parse_nvme_dio(text, WARMUP) if rc == 0 else None
        if figs is None:
            problems.append(f"{name}: the bench printed no figure")
        for line in report(m, ios, figs):
            print(f"vm-bench: {line}")
        if len(ios) < 100:
            problems.append(f"{name}: only {len(ios)} complete I/Os in the trace")
    for p in problems:
        print(f"vm-bench: {p}")
    print(f"vm-bench: trace {out / 'trace-trace.log'}")
    return 1 if problems else 0
