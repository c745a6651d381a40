"""ci/vm-bench: nvme-dio against the kernel's best paths, side by side in QEMU guests.

What one run does (ci/vm/README.md, "ci/vm-bench", has the reader's version):

- Two boots of the same guest and the same null-co controller: the guest kernel's vIOMMU
  translating (`intel_iommu=on`, the default) and `iommu.passthrough=1` (the kernel spares
  its own driver the per-I/O IOMMU mapping: the fair comparison for the kernel; VFIO still
  translates through its own domain). Both with `nvme.poll_queues=1`, so the kernel's polled
  path exists.
- In each boot, `--rounds N` measured rounds plus one discarded first round (TCG warms up).
  A round runs every case (CASES) at every queue depth once; cases alternate within a
  round (their order is reversed in every other round), so a slow minute hits all of them.
- Around every round the host samples its own load (/proc/loadavg, /proc/stat, and QEMU's
  own CPU time from /proc/PID/stat): CPU time the host spent outside QEMU during a round is
  "foreign load", and a round with more than FOREIGN_LOAD_LIMIT of a core of it is marked.
- Then medians per case and depth over the measured rounds, and the ratio table (RATIOS):
  the median over rounds of the per-round ratio, with its range.

Pure functions (parsers, medians, tables) are unit tested in ci/vm/test_bench.py.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import json
import time
from pathlib import Path
from typing import Callable

# ---------------------------------------------------------------------------------------------
# What is measured. A new mode (hybrid, say) is one more Case and, if it should be compared,
# one more entry in RATIOS; nothing else changes.

QDS = [1, 8, 32, 128]
QDS_QUICK = [1, 32]

# Guest command prefixes. @BDF@ is the controller's PCI address; the kernel cases run on
# the block device the kernel's nvme driver gives it.
NVME_DIO = ("nvme-dio bench --device @BDF@ --workload randread --io-size 4k --json "
            "--time {seconds} --warmup {warmup} --queue-depth {qd}")
KERNEL_DEV = "/dev/nvme0n1"


@dataclasses.dataclass(frozen=True)
class Figures:
    iops: float
    p50_us: float | None = None  # None where the tool does not measure latency
    p99_us: float | None = None


@dataclasses.dataclass(frozen=True)
class Case:
    name: str  # as printed: "<tool> <mode>"
    side: str  # "vfio" or "kernel": the driver the controller must be bound to
    # The guest command for one queue depth (seconds measured, seconds of warm-up before).
    command: Callable[[int, int, int], str]
    parse: Callable[[str, int], Figures | None]  # (step output, warm-up seconds)

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


def nvme_dio_cmd(mode: str) -> Callable[[int, int, int], str]:
    return lambda qd, seconds, warmup: (
        NVME_DIO.format(seconds=seconds, warmup=warmup, qd=qd) + f" --mode {mode}")


def t_io_uring_cmd(polled: bool) -> Callable[[int, int, int], str]:
    # fio's t/io_uring as its author runs it for the records: fixed buffers, registered
    # files and ring, O_DIRECT, random; batches as deep as the queue (at most its default 32).
    # It has no warm-up option: it runs warm-up + measured seconds + 1 (its per-second lines
    # stop one second before its run time ends) and the parser keeps the measured ones.
    def cmd(qd: int, seconds: int, warmup: int) -> str:
        b = min(qd, 32)
        return (f"t_io_uring -d {qd} -s {b} -c {b} -b 4096 -p {int(polled)} -B 1 -F 1 -X 1 "
                f"-n 1 -O 1 -R 1 -r {seconds + warmup + 1} {KERNEL_DEV}")
    return cmd


def fio_io_uring_cmd(qd: int, seconds: int, warmup: int) -> str:
    return ("fio --thread=1 --name=randread --rw=randread --bs=4k --time_based "
            f"--runtime={seconds} --ramp_time={warmup} --output-format=json "
            f"--ioengine=io_uring --direct=1 --filename={KERNEL_DEV} --iodepth={qd}")


def parse_nvme_dio(text: str, warmup: int) -> Figures | None:
    """`nvme-dio bench --json`: its top-level iops and latency percentiles."""
    obj = json_object(text)
    if not obj or not isinstance(obj.get("iops"), (int, float)) or obj.get("errors"):
        return None
    lat = obj.get("latency") or {}
    p50, p99 = lat.get("p50_ns"), lat.get("p99_ns")
    return Figures(float(obj["iops"]), p50 / 1e3 if p50 else None, p99 / 1e3 if p99 else None)


T_IOPS = re.compile(r"^IOPS=([0-9.]+)([KM]?), ", re.M)


def parse_t_io_uring(text: str, warmup: int) -> Figures | None:
    """t/io_uring prints one `IOPS=123.45K, BW=..., IOS/call=.../...` line per whole second
    (none for the last second of its run time): the mean of the lines after the first
    `warmup` ones."""
    if "unexpected ret" in text or "doesn't support" in text:
        return None
    per_s = [float(v) * {"K": 1e3, "M": 1e6}.get(u, 1) for v, u in T_IOPS.findall(text)]
    kept = per_s[warmup:]
    return Figures(statistics.fmean(kept)) if kept else None


def parse_fio(text: str, warmup: int) -> Figures | None:
    """fio --output-format=json: the first job's read IOPS and clat p50/p99."""
    obj = json_object(text)
    try:
        job = obj["jobs"][0]
        if job["error"] != 0:
            return None
        r = job["read"]
        pct = r["clat_ns"]["percentile"]
        return Figures(float(r["iops"]), pct["50.000000"] / 1e3, pct["99.000000"] / 1e3)
    except (KeyError, IndexError, TypeError):
        return None


def json_object(text: str) -> dict | None:
    """The first top-level JSON object printed as `{` ... `}` lines."""
    m = re.search(r"^\{$.*?^\}$", text, re.M | re.S)
    if not m:
        return None
    try:
        v = json.loads(m.group(0))
    except json.JSONDecodeError:
        return None
    return v if isinstance(v, dict) else None


CASES = [
    Case("nvme-dio poll", "vfio", nvme_dio_cmd("poll"), parse_nvme_dio),
    Case("nvme-dio irq", "vfio", nvme_dio_cmd("irq"), parse_nvme_dio),
    # Spin an adaptive while, then sleep on MSI-X (CompletionMode::Hybrid).
    Case("nvme-dio hybrid", "vfio", nvme_dio_cmd("hybrid"), parse_nvme_dio),
    # Shadow doorbells (Doorbell Buffer Config): the same runs with --shadow-doorbells.
    Case("nvme-dio poll shadow", "vfio", nvme_dio_cmd("poll --shadow-doorbells"), parse_nvme_dio),
    Case("nvme-dio irq shadow", "vfio", nvme_dio_cmd("irq --shadow-doorbells"), parse_nvme_dio),
    Case("t/io_uring poll", "kernel", t_io_uring_cmd(True), parse_t_io_uring),
    Case("t/io_uring irq", "kernel", t_io_uring_cmd(False), parse_t_io_uring),
    Case("fio io_uring irq", "kernel", fio_io_uring_cmd, parse_fio),
]
# (case, reference): printed as case / reference IOPS.
RATIOS = [
    ("nvme-dio poll", "t/io_uring poll"),
    ("nvme-dio irq", "t/io_uring irq"),
    ("nvme-dio irq", "fio io_uring irq"),
    ("nvme-dio hybrid", "t/io_uring irq"),
    ("nvme-dio hybrid", "nvme-dio irq"),
    ("nvme-dio poll shadow", "nvme-dio poll"),
    ("nvme-dio irq shadow", "nvme-dio irq"),
]

# The two boots: label, extra kernel command line.
BOOTS = [
    ("viommu", ""),
    ("passthrough", "iommu.passthrough=1"),
]
BOOT_CMDLINE = "nvme.poll_queues=1"

# A round with more than this share of one host core spent outside QEMU is marked.
FOREIGN_LOAD_LIMIT = 0.25


def select(cases: list[Case], only: str | None) -> list[Case]:
    """The cases whose name contains one of the comma-separated words of `only` (all if
    None, or if every word is an exclusion), and none of its `!word`s."""
    if not only:
        return list(cases)
    words = [w.strip() for w in only.split(",") if w.strip()]
    want = [w for w in words if not w.startswith("!")]
    skip = [w[1:] for w in words if w.startswith("!")]
    return [c for c in cases
            if (not want or any(w in c.name for w in want)) and not any(w in c.name for w in skip)]


def step_name(rnd: int, case: Case, qd: int) -> str:
    return f"r{rnd}-{case.slug}-qd{qd}"


def guest_script(cases: list[Case], qds: list[int], rounds: int, seconds: int, warmup: int,
                 bdf: str) -> tuple[str, list[str]]:
    """The guest's /vm/run for one boot, and the step names it runs. Round 0 is the
    discarded warm-up round. The controller starts bound to vfio-pci (/init binds it)."""
    lines, steps, bound = [], [], "vfio"
    for rnd in range(rounds + 1):
        lines.append(f"echo VM-ROUND-BEGIN {rnd}")
        order = cases if rnd % 2 == 0 else list(reversed(cases))
        for side in ("vfio", "kernel") if rnd % 2 == 0 else ("kernel", "vfio"):
            todo = [c for c in order if c.side == side]
            if not todo:
                continue
            if side != bound:
                lines.append(f"bind_{side} {bdf}")
                bound = side
            for qd in qds:
                for c in todo:
                    name = step_name(rnd, c, qd)
                    cmd = c.command(qd, seconds, warmup).replace("@BDF@", bdf)
                    lines.append(f"run_step {name} {cmd}")
                    steps.append(name)
        lines.append(f"echo VM-ROUND-END {rnd}")
    return "".join(l + "\n" for l in lines), steps


# ---------------------------------------------------------------------------------------------
# Host load


@dataclasses.dataclass(frozen=True)
class LoadSample:
    wall: float
    loadavg: str  # the first three fields of /proc/loadavg
    busy: tuple[int, ...]  # per host CPU: busy jiffies
    total: tuple[int, ...]  # per host CPU: all jiffies
    qemu: int  # QEMU's utime + stime, jiffies


def parse_proc_stat(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(busy, total) jiffies per CPU from /proc/stat (busy: everything but idle and iowait)."""
    busy, total = [], []
    for line in text.splitlines():
        if re.match(r"cpu\d+ ", line):
            f = [int(x) for x in line.split()[1:]]
            idle = f[3] + (f[4] if len(f) > 4 else 0)
            # guest and guest_nice (fields 9, 10) are already inside user and nice.
            all_ = sum(f[:8])
            busy.append(all_ - idle)
            total.append(all_)
    return tuple(busy), tuple(total)


def parse_pid_stat(text: str) -> int:
    """utime + stime of a /proc/PID/stat line (the command may contain spaces)."""
    rest = text[text.rindex(")") + 2:].split()
    return int(rest[11]) + int(rest[12])


def sample_load(qemu_pid: int | None) -> LoadSample:
    busy, total = parse_proc_stat(Path("/proc/stat").read_text())
    q = 0
    if qemu_pid:
        try:
            q = parse_pid_stat(Path(f"/proc/{qemu_pid}/stat").read_text())
        except OSError:
            pass
    la = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return LoadSample(time.time(), la, busy, total, q)


@dataclasses.dataclass(frozen=True)
class RoundLoad:
    loadavg_before: str
    loadavg_after: str
    cpu_busy: tuple[float, ...]  # per host CPU, share busy over the round
    qemu_cores: float  # QEMU's CPU time / wall time
    foreign_cores: float  # everything else on the host, in cores

    @property
    def foreign(self) -> bool:
        return self.foreign_cores > FOREIGN_LOAD_LIMIT

    def describe(self) -> str:
        cpus = " ".join(f"{b * 100:3.0f}%" for b in self.cpu_busy)
        mark = "  FOREIGN LOAD" if self.foreign else ""
        return (f"loadavg {self.loadavg_before} -> {self.loadavg_after}; cpus busy {cpus}; "
                f"qemu {self.qemu_cores:.2f} cores, other {self.foreign_cores:.2f} cores{mark}")


def round_load(a: LoadSample, b: LoadSample) -> RoundLoad:
    shares = tuple((bb - ab) / max(1, bt - at)
                   for ab, bb, at, bt in zip(a.busy, b.busy, a.total, b.total))
    # Jiffies per core over the round, from the CPUs' own totals (no clock-tick constant).
    per_core = max(1.0, statistics.fmean(bt - at for at, bt in zip(a.total, b.total)))
    busy_cores = sum(bb - ab for ab, bb in zip(a.busy, b.busy)) / per_core
    qemu_cores = (b.qemu - a.qemu) / per_core
    return RoundLoad(a.loadavg, b.loadavg, shares, qemu_cores, max(0.0, busy_cores - qemu_cores))


# ---------------------------------------------------------------------------------------------
# Results and tables


def step_sections(console: str) -> dict[str, tuple[int, str]]:
    """step name -> (exit status, output) from the VM-BEGIN/VM-END markers."""
    out = {}
    for m in re.finditer(r"^VM-BEGIN (\S+)$(.*?)^VM-END \1 rc=(\d+)$", console, re.M | re.S):
        out[m.group(1)] = (int(m.group(3)), m.group(2))
    return out


@dataclasses.dataclass
class BootResult:
    label: str
    rounds: int
    # figures[case name][qd] = [Figures or None per measured round]
    figures: dict[str, dict[int, list[Figures | None]]]
    loads: dict[int, RoundLoad]  # round -> load (round 0 included)
    problems: list[str]


def collect(label: str, console: str, cases: list[Case], qds: list[int], rounds: int,
            warmup: int, loads: dict[int, RoundLoad]) -> BootResult:
    secs = step_sections(console)
    figures: dict[str, dict[int, list[Figures | None]]] = {}
    problems = []
    for c in cases:
        figures[c.name] = {}
        for qd in qds:
            row = []
            for rnd in range(1, rounds + 1):
                name = step_name(rnd, c, qd)
                rc, text = secs.get(name, (None, ""))
                f = c.parse(text, warmup) if rc == 0 else None
                if f is None:
                    why = "did not run" if rc is None else f"exit status {rc}" if rc else \
                        "no figure in its output"
                    problems.append(f"{label}: {name}: {why}")
                row.append(f)
            figures[c.name][qd] = row
    return BootResult(label, rounds, figures, loads, problems)


def median_or_none(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_iops(v: float | None) -> str:
    return "-" if v is None else f"{v / 1e3:.1f}k"


def fmt_us(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def table(rows: list[list[str]]) -> list[str]:
    """Right-aligned columns (the first left-aligned), two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        out.append("  ".join(cells).rstrip())
    return out


def figures_table(res: BootResult, cases: list[Case], qds: list[int]) -> list[str]:
    """Per case (rows) and depth (columns): median IOPS and p50 (us) over the measured rounds;
    `(n=K)` when only K rounds gave a figure."""
    marked = sum(1 for r in range(1, res.rounds + 1) if r in res.loads and res.loads[r].foreign)
    rows = [["case"] + [f"QD {qd}" for qd in qds]]
    for c in cases:
        row = [c.name]
        for qd in qds:
            fs = [f for f in res.figures[c.name][qd] if f is not None]
            iops = median_or_none([f.iops for f in fs])
            p50 = median_or_none([f.p50_us for f in fs])
            cell = fmt_iops(iops) + (f" {p50:.1f}us" if p50 is not None else "")
            row.append(cell + (f" (n={len(fs)})" if len(fs) != res.rounds else ""))
        rows.append(row)
    lines = table(rows)
    lines.append(f"medians (IOPS, p50) of {res.rounds} measured round(s), 1 more discarded; "
                 f"{marked} of them under foreign load (> {FOREIGN_LOAD_LIMIT} core)")
    return lines


def paired_ratios(res: BootResult, a: str, b: str, qd: int) -> list[float]:
    return [fa.iops / fb.iops for fa, fb in zip(res.figures[a][qd], res.figures[b][qd])
            if fa is not None and fb is not None and fb.iops > 0]


def ratio_cell(rs: list[float]) -> str:
    if not rs:
        return "-"
    if len(rs) == 1:
        return f"{rs[0]:.2f}"
    return f"{statistics.median(rs):.2f} ({min(rs):.2f}-{max(rs):.2f})"


def ratio_table(results: list[BootResult], qds: list[int],
                ratios: list[tuple[str, str]]) -> list[str]:
    """Per pair and boot (rows) and depth (columns): the median of the per-round IOPS
    ratios, with their range."""
    rows = [["ratio", "boot"] + [f"QD {qd}" for qd in qds]]
    for a, b in ratios:
        for r in results:
            rows.append([f"{a} / {b}", r.label]
                        + [ratio_cell(paired_ratios(r, a, b, qd)) for qd in qds])
    return table(rows)


def rounds_table(res: BootResult, cases: list[Case], qds: list[int]) -> list[str]:
    """Every measured figure, round by round, with the round's host load."""
    out = []
    for rnd in range(0, res.rounds + 1):
        load = res.loads.get(rnd)
        tag = " (discarded)" if rnd == 0 else ""
        out.append(f"round {rnd}{tag}: " + (load.describe() if load else "host load not sampled"))
        if rnd == 0:
            continue
        cells = []
        for qd in qds:
            for c in cases:
                f = res.figures[c.name][qd][rnd - 1]
                cells.append(f"{c.name} qd{qd} {fmt_iops(f.iops if f else None)}")
        out.append("  " + ", ".join(cells))
    return out
