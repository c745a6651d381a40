"""Unit tests of ci/vm/bench.py's pure functions (parsers, load arithmetic, tables):
`python3 -m unittest discover -s ci/vm -p 'test_*.py'` (ci/test runs it; no VM, no timing)."""

import unittest

import bench
from bench import Figures

NVME_DIO_JSON = """vm: something before
{
  "iops": 31250.5,
  "errors": 0,
  "latency": {"p50_ns": 28600, "p99_ns": 61000}
}
"""

FIO_JSON = """{
"fio version" : "fio-3.33",
"jobs" : [ { "error" : 0, "read" : { "iops" : 12000.25,
  "clat_ns" : { "percentile" : { "50.000000" : 80384, "99.000000" : 150528 } } } } ]
}
"""

T_IO_URING = """submitter=0, tid=301, file=/dev/nvme0n1, node=-1
polled=1, fixedbufs=1/0, register_files=1, buffered=0, QD=1
Engine=io_uring, sq_ring=1, cq_ring=1
IOPS=5.00K, BW=19MiB/s, IOS/call=1/1
IOPS=20.00K, BW=78MiB/s, IOS/call=1/1
IOPS=22.00K, BW=85MiB/s, IOS/call=1/1
IOPS=1.10M, BW=4296MiB/s, IOS/call=32/31
IOPS=900, BW=3MiB/s, IOS/call=0/0
Exiting on timeout
Maximum IOPS=1.10M
"""


def stat(busy0, idle0, busy1, idle1):
    """A /proc/stat text with two CPUs: (user busy, idle) jiffies each."""
    return ("cpu  0 0 0 0 0 0 0 0 0 0\n"
            f"cpu0 {busy0} 0 0 {idle0} 0 0 0 0 0 0\n"
            f"cpu1 {busy1} 0 0 {idle1} 0 0 0 0 0 0\n"
            "intr 1 2 3\n")


class Parsers(unittest.TestCase):
    def test_nvme_dio_json(self):
        self.assertEqual(bench.parse_nvme_dio(NVME_DIO_JSON, 2), Figures(31250.5, 28.6, 61.0))

    def test_nvme_dio_with_errors_is_no_figure(self):
        self.assertIsNone(bench.parse_nvme_dio(NVME_DIO_JSON.replace('"errors": 0', '"errors": 3'), 2))
        self.assertIsNone(bench.parse_nvme_dio("no json here", 2))

    def test_fio_json(self):
        self.assertEqual(bench.parse_fio(FIO_JSON, 2), Figures(12000.25, 80.384, 150.528))
        self.assertIsNone(bench.parse_fio(FIO_JSON.replace('"error" : 0', '"error" : 5'), 2))

    def test_t_io_uring_drops_the_warmup_seconds(self):
        f = bench.parse_t_io_uring(T_IO_URING, 1)
        self.assertAlmostEqual(f.iops, (20e3 + 22e3 + 1.1e6 + 900) / 4)
        self.assertIsNone(f.p50_us)

    def test_t_io_uring_too_short_or_failed_is_no_figure(self):
        self.assertIsNone(bench.parse_t_io_uring(T_IO_URING, 5))
        self.assertIsNone(bench.parse_t_io_uring("io: unexpected ret=-95\n" + T_IO_URING, 1))

    def test_step_sections(self):
        text = ("VM-BEGIN a\nx=1\nVM-END a rc=0\nVM-BEGIN b\nVM-END b rc=3\n"
                "VM-BEGIN c\nno end\n")
        self.assertEqual(bench.step_sections(text), {"a": (0, "\nx=1\n"), "b": (3, "\n")})

    def test_pid_stat_with_spaces_in_the_name(self):
        line = "123 (qemu system) S 1 2 3 4 5 6 7 8 9 10 700 50 0 0 20 0 4 0 99 0 0"
        self.assertEqual(bench.parse_pid_stat(line), 750)


class Load(unittest.TestCase):
    def sample(self, text, qemu, la="0.10 0.20 0.30"):
        busy, total = bench.parse_proc_stat(text)
        return bench.LoadSample(0.0, la, busy, total, qemu)

    def test_foreign_load_is_busy_time_outside_qemu(self):
        a = self.sample(stat(100, 900, 100, 900), qemu=50)
        # 1000 jiffies per CPU pass; CPU0 fully busy, CPU1 60% busy; QEMU used 1000 of them.
        b = self.sample(stat(1100, 900, 700, 1300), qemu=1050, la="1.50 0.50 0.30")
        r = bench.round_load(a, b)
        self.assertEqual(r.cpu_busy, (1.0, 0.6))
        self.assertAlmostEqual(r.qemu_cores, 1.0)
        self.assertAlmostEqual(r.foreign_cores, 0.6)
        self.assertTrue(r.foreign)
        self.assertIn("FOREIGN LOAD", r.describe())
        self.assertIn("0.10 0.20 0.30 -> 1.50 0.50 0.30", r.describe())

    def test_a_quiet_host_is_not_marked(self):
        a = self.sample(stat(0, 0, 0, 0), qemu=0)
        b = self.sample(stat(1000, 0, 100, 900), qemu=1100)
        r = bench.round_load(a, b)
        self.assertEqual(r.foreign_cores, 0.0)
        self.assertFalse(r.foreign)


def result(label, figs, rounds, loads=None):
    return bench.BootResult(label, rounds, figs, loads or {}, [])


class Selection(unittest.TestCase):
    def test_only_filters_by_words_in_the_name(self):
        names = [c.name for c in bench.select(bench.CASES, "t/io_uring, shadow")]
        self.assertEqual(names, ["nvme-dio poll shadow", "nvme-dio irq shadow",
                                 "t/io_uring poll", "t/io_uring irq"])
        self.assertEqual(len(bench.select(bench.CASES, None)), len(bench.CASES))
        names = [c.name for c in bench.select(bench.CASES, "!shadow,!fio")]
        self.assertEqual(names, ["nvme-dio poll", "nvme-dio irq", "nvme-dio hybrid",
                                 "t/io_uring poll", "t/io_uring irq"])


class Tables(unittest.TestCase):
    def test_guest_script_alternates_and_discards_round_zero(self):
        script, steps = bench.guest_script(bench.CASES, [1], 2, 5, 2, "0000:00:04.0")
        self.assertEqual(len(steps), 3 * len(bench.CASES))
        lines = script.splitlines()
        self.assertEqual(lines[0], "echo VM-ROUND-BEGIN 0")
        self.assertIn("run_step r0-nvme-dio-poll-qd1 nvme-dio bench --device 0000:00:04.0", script)
        # Round 1 starts on the kernel side (where round 0 ended), in reverse case order.
        r1 = lines[lines.index("echo VM-ROUND-BEGIN 1") + 1]
        self.assertTrue(r1.startswith("run_step r1-fio-io-uring-irq-qd1 fio "), r1)
        self.assertEqual(script.count("bind_kernel"), 2)
        self.assertEqual(script.count("bind_vfio"), 1)

    def test_medians_ratios_and_marks(self):
        a, b = "nvme-dio poll", "t/io_uring poll"
        cases = [c for c in bench.CASES if c.name in (a, b)]
        figs = {a: {1: [Figures(30e3, 28.0), Figures(33e3, 27.0), None]},
                b: {1: [Figures(10e3), Figures(10e3), Figures(12e3)]}}
        loud = bench.RoundLoad("0 0 0", "1 1 1", (1.0, 1.0), 1.0, 1.0)
        quiet = bench.RoundLoad("0 0 0", "0 0 0", (1.0, 0.1), 1.0, 0.1)
        res = result("viommu", figs, 3, {1: quiet, 2: loud, 3: quiet})
        self.assertEqual(bench.paired_ratios(res, a, b, 1), [3.0, 3.3])
        rt = bench.ratio_table([res], [1], [(a, b)])
        self.assertEqual(rt[1].split(), ["nvme-dio", "poll", "/", "t/io_uring", "poll", "viommu",
                                         "3.15", "(3.00-3.30)"])
        ft = bench.figures_table(res, cases, [1])
        self.assertEqual(ft[1].split(), ["nvme-dio", "poll", "31.5k", "27.5us", "(n=2)"])
        self.assertEqual(ft[2].split(), ["t/io_uring", "poll", "10.0k"])
        self.assertIn("1 of them under foreign load", ft[-1])
        rounds = "\n".join(bench.rounds_table(res, cases, [1]))
        self.assertIn("round 0 (discarded): host load not sampled", rounds)
        self.assertIn("FOREIGN LOAD", rounds)

    def test_missing_figures_are_problems(self):
        c = bench.CASES[0]
        console = ("VM-BEGIN r1-nvme-dio-poll-qd1\n" + NVME_DIO_JSON
                   + "VM-END r1-nvme-dio-poll-qd1 rc=0\n")
        res = bench.collect("viommu", console, [c], [1, 32], 1, 2, {})
        self.assertEqual(res.figures[c.name][1], [Figures(31250.5, 28.6, 61.0)])
        self.assertEqual(res.problems, ["viommu: r1-nvme-dio-poll-qd32: did not run"])


if __name__ == "__main__":
    unittest.main()
