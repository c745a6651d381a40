//! The `nvme-dio` binary end to end: argument errors, `bench --json` against the emulated
//! controller and through io_uring on a host file, verify (clean and with an injected bit
//! flip), the SVG histogram, `list` and `identify`. Every run is short (`--ios N`).

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn nvme_dio(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nvme-dio"))
        .args(args)
        .output()
        .expect("run nvme-dio")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs and parses `--json` output; panics with stderr if the run failed.
fn bench_json(args: &[&str]) -> Value {
    let mut all = vec!["bench", "--json"];
    all.extend_from_slice(args);
    let o = nvme_dio(&all);
    assert!(
        o.status.success(),
        "nvme-dio {all:?} failed: {}",
        stderr(&o)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&o)))
}

/// A directory on a filesystem that supports O_DIRECT (cargo's target dir, not tmpfs).
fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-tests");
    std::fs::create_dir_all(&d).unwrap();
    d.join(format!("{name}-{}", std::process::id()))
}

fn assert_fails_with(args: &[&str], needle: &str) {
    let o = nvme_dio(args);
    assert!(!o.status.success(), "{args:?} should fail");
    let e = stderr(&o);
    assert!(
        e.contains(needle),
        "{args:?}: stderr lacks {needle:?}:\n{e}"
    );
    assert!(
        !e.contains("panicked") && !e.contains("RUST_BACKTRACE"),
        "{args:?} panicked:\n{e}"
    );
}

#[test]
fn argument_errors_are_sentences_with_a_non_zero_exit() {
    assert_fails_with(&["bench", "--io-size", "4x"], "not a size");
    assert_fails_with(&["bench", "-o", "1000"], "not a multiple of 512");
    assert_fails_with(&["bench", "-w", "randrw", "--mix", "150"], "0 to 100");
    assert_fails_with(&["bench", "--device", "bogus"], "unknown device");
    assert_fails_with(
        &["bench", "-w", "randread", "-M", "50"],
        "--mix only applies",
    );
    assert_fails_with(&["bench", "--segments", "3"], "needs at least 3 blocks");
    assert_fails_with(
        &["bench", "--engine", "io_uring"],
        "needs a block device or file path",
    );
    assert_fails_with(&["bench", "--inject-flip-bit", "3"], "emu:ram only");
    assert_fails_with(
        &["bench", "--device", "./f", "--emu-thread"],
        "emulated controller only",
    );
    assert_fails_with(&["bench", "--iopoll"], "io_uring options");
    assert_fails_with(&["setup", "nope"], "not a PCI address");
    // Writing to the block device holding / would destroy it: refused (if / is on one).
    if let Some(root_dev) = std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/"))
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|d| d.starts_with("/dev/"))
    {
        assert_fails_with(
            &[
                "bench",
                "--device",
                &root_dev,
                "-w",
                "randwrite",
                "--ios",
                "1",
            ],
            "refusing to write",
        );
    }
    // Errors of the run itself (not clap's) carry the `error:` prefix.
    let o = nvme_dio(&["bench", "--device", "./no-such-file", "--ios", "1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).starts_with("error: "), "{}", stderr(&o));
}

#[test]
fn json_has_device_engine_settings_figures_latency_and_queue_counters() {
    let v = bench_json(&["-t", "1", "--ios", "20000"]);
    assert_eq!(v["device"], "emu");
    assert_eq!(v["emulated"], true);
    assert_eq!(v["engine"], "vfio");
    assert_eq!(v["settings"]["workload"], "randread");
    assert_eq!(v["settings"]["queue_depth"], 32);
    assert_eq!(v["settings"]["io_size_bytes"], 4096);
    assert_eq!(v["ios"], 20000);
    assert_eq!(v["errors"], 0);
    assert!(v["iops"].as_f64().unwrap() > 0.0 && v["mib_s"].as_f64().unwrap() > 0.0);
    let l = &v["latency"];
    for k in [
        "avg_ns",
        "min_ns",
        "max_ns",
        "p50_ns",
        "p90_ns",
        "p99_ns",
        "p99_9_ns",
        "p99_99_ns",
    ] {
        assert!(
            l[k].as_f64().is_some_and(|x| x > 0.0),
            "latency.{k} = {}",
            l[k]
        );
    }
    let (p50, p99, max) = (
        l["p50_ns"].as_u64().unwrap(),
        l["p99_ns"].as_u64().unwrap(),
        l["max_ns"].as_u64().unwrap(),
    );
    assert!(p50 <= p99 && p99 <= max);
    let q = &v["queues"][0];
    for k in [
        "submitted",
        "completed",
        "split_requests",
        "doorbell_writes",
        "polls",
        "empty_polls",
        "timeouts",
    ] {
        assert!(q[k].is_u64(), "queues[0].{k} = {}", q[k]);
    }
    assert!(q["completed"].as_u64().unwrap() >= 20000);
    assert_eq!(q["split_requests"], 0);
    assert_eq!(q["timeouts"], 0);
    assert!(q["doorbell_writes"].as_u64().unwrap() > 0);
}

#[test]
fn verify_on_ram_with_split_iovecs_finds_no_mismatch() {
    let v = bench_json(&[
        "--device",
        "emu:ram:512",
        "--verify",
        "-w",
        "randrw",
        "--segments",
        "3",
        "-t",
        "1",
        "--ios",
        "5000",
    ]);
    assert_eq!(v["errors"], 0);
    assert_eq!(v["verify"]["mismatches"], 0);
    assert!(v["verify"]["checked_blocks"].as_u64().unwrap() > 0);
    assert!(
        v["queues"][0]["split_requests"].as_u64().unwrap() > 0,
        "3 segments at odd offsets must split"
    );
    assert_eq!(v["settings"]["segments"], 3);
}

#[test]
fn verify_catches_a_flipped_bit_and_fails_the_run() {
    // 1 MiB RAM namespace, read sequentially once: block 77 is read after its bit flipped.
    let o = nvme_dio(&[
        "bench",
        "--device",
        "emu:ram",
        "--size",
        "1m",
        "--verify",
        "-w",
        "read",
        "--inject-flip-bit",
        "77",
        "--ios",
        "2048",
        "-q",
        "4",
    ]);
    assert!(
        !o.status.success(),
        "a corrupted block must fail the run:\n{}",
        stdout(&o)
    );
    let e = stderr(&o);
    assert!(e.contains("verify failed") && e.contains("LBA 77"), "{e}");
    assert!(
        stdout(&o).contains("1 mismatches") || stdout(&o).contains("mismatches"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn several_queues_and_interrupt_mode_run() {
    let v = bench_json(&[
        "--queues", "2", "--ios", "4000", "-q", "8", "-w", "randrw", "-M", "70",
    ]);
    assert_eq!(v["queues"].as_array().unwrap().len(), 2);
    assert_eq!(v["ios"], 4000);
    assert_eq!(v["settings"]["read_pct"], 70);
    let v = bench_json(&["--mode", "irq", "--ios", "2000", "-q", "4"]);
    assert_eq!(v["settings"]["mode"], "irq");
    assert_eq!(v["ios"], 2000);
    // With the emulator on its own thread, irq mode really sleeps on the MSI-X eventfd.
    let v = bench_json(&["--mode", "irq", "--emu-thread", "--ios", "500", "-q", "1"]);
    assert_eq!(v["settings"]["emu_mode"], "thread");
    assert_eq!(v["ios"], 500);
    assert!(
        v["queues"][0]["interrupts"].as_u64().unwrap() > 0,
        "{}",
        v["queues"][0]
    );
    // Hybrid: spins, then sleeps; every I/O done once.
    let v = bench_json(&[
        "--mode",
        "hybrid",
        "--emu-thread",
        "--ios",
        "500",
        "-q",
        "1",
    ]);
    assert_eq!(v["settings"]["mode"], "hybrid");
    assert_eq!(v["ios"], 500);
}

#[test]
fn io_uring_engine_runs_against_a_host_file_and_verifies() {
    let path = scratch("uring.dat");
    std::fs::write(&path, vec![0u8; 4 << 20]).unwrap();
    let p = path.to_str().unwrap();
    let v = bench_json(&["--device", p, "-t", "1", "--ios", "2000", "-q", "8"]);
    assert_eq!(v["engine"], "io_uring");
    assert_eq!(v["ios"], 2000);
    assert_eq!(v["errors"], 0);
    assert!(v["queues"][0]["syscalls"].as_u64().unwrap() > 0);
    let v = bench_json(&[
        "--device",
        p,
        "--verify",
        "-w",
        "randrw",
        "--segments",
        "2",
        "-o",
        "8k",
        "--ios",
        "2000",
        "-q",
        "8",
    ]);
    assert_eq!(v["verify"]["mismatches"], 0);
    assert!(v["verify"]["checked_blocks"].as_u64().unwrap() > 0);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn histogram_svg_is_written_with_bars() {
    let svg = scratch("lat.svg");
    let o = nvme_dio(&[
        "bench",
        "--ios",
        "5000",
        "--histogram",
        svg.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg") && text.matches("<rect").count() > 1,
        "{text}"
    );
    assert!(text.contains("emu"));
    // The human summary carries the device and engine beside the figures.
    let out = stdout(&o);
    let iops = out
        .lines()
        .find(|l| l.starts_with("IOPS"))
        .expect("an IOPS line");
    assert!(iops.contains("[emu vfio randread 4k qd32 x1]"), "{out}");
    std::fs::remove_file(&svg).unwrap();
}

#[test]
fn list_and_identify_succeed() {
    let o = nvme_dio(&["list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("no NVMe controllers found") || out.starts_with("address"),
        "{out}"
    );
    let o = nvme_dio(&["identify", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["emulated"], true);
    assert_eq!(v["namespaces"][0]["lba_size_bytes"], 4096);
    assert!(v["max_transfer_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn sequential_workloads_warmup_and_batch_are_honoured() {
    let v = bench_json(&[
        "-w", "write", "--warmup", "0.1", "--ios", "3000", "--batch", "4", "-q", "16",
    ]);
    assert_eq!(v["settings"]["workload"], "write");
    assert_eq!(v["settings"]["read_pct"], 0);
    assert_eq!(v["settings"]["batch"], 4);
    assert_eq!(v["settings"]["warmup_s"], 0.1);
    assert_eq!(v["ios"], 3000, "warm-up I/Os are not counted");
    let q = &v["queues"][0];
    // Batches of at most 4 submissions per doorbell: at least 3000 / 4 SQ doorbells.
    assert!(q["sq_doorbells"].as_u64().unwrap() >= 750, "{q}");
    let v = bench_json(&[
        "--device",
        "emu:ram:512",
        "-w",
        "rw",
        "-M",
        "30",
        "--verify",
        "-o",
        "16k",
        "--ios",
        "2000",
    ]);
    assert_eq!(v["settings"]["read_pct"], 30);
    assert_eq!(v["verify"]["mismatches"], 0);
    assert_eq!(v["settings"]["lba_size_bytes"], 512);
}

/// The soak (issue 7): mixed random reads and writes, several queue pairs, split-forcing
/// segments, every read verified, for a bounded time: no mismatch, no error, no request lost.
#[test]
fn fault_soak_bench_verify_several_queues_with_splits_loses_nothing() {
    let v = bench_json(&[
        "--device",
        "emu:ram",
        "--verify",
        "-w",
        "randrw",
        "-M",
        "50",
        "--queues",
        "2",
        "-q",
        "16",
        "--segments",
        "3",
        "-o",
        "12k",
        "-t",
        "2",
    ]);
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["verify"]["mismatches"], 0, "{v}");
    assert!(
        v["verify"]["checked_blocks"].as_u64().unwrap() > 1000,
        "{v}"
    );
    let queues = v["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 2);
    for q in queues {
        assert_eq!(q["submitted"], q["completed"], "a request was lost: {q}");
        assert!(q["split_requests"].as_u64().unwrap() > 0, "{q}");
        assert_eq!(q["timeouts"], 0, "{q}");
    }
    println!(
        "soak: {} I/Os, {} blocks verified",
        v["ios"], v["verify"]["checked_blocks"]
    );
}

/// Runs nvme-dio with its stdout on `out`, under a hang detector: a run that has not ended
/// after 60 s is killed and the test fails (a hang, not a slow run: every run here takes
/// well under a second).
fn nvme_dio_with_stdout(args: &[&str], out: std::process::Stdio) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nvme-dio"))
        .args(args)
        .stdout(out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nvme-dio");
    let stderr_pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut { stderr_pipe }, &mut s).unwrap();
        s
    });
    let status = wait_or_kill(&mut child, args);
    Output {
        status,
        stdout: Vec::new(),
        stderr: reader.join().unwrap(),
    }
}

/// Waits for `child`; kills it and fails the test if it is still running after 60 s.
fn wait_or_kill(child: &mut std::process::Child, args: &[&str]) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nvme-dio {args:?} hung (killed after 60 s)");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn assert_no_panic(args: &[&str], e: &str) {
    assert!(
        !e.contains("panicked") && !e.contains("RUST_BACKTRACE") && !e.contains("stack backtrace"),
        "{args:?} panicked:\n{e}"
    );
}

#[test]
fn a_closed_stdout_pipe_exits_quietly_with_status_0() {
    for args in [
        &["--help"][..],
        &["list"],
        &["list", "--json"],
        &["identify"],
        &["identify", "--json"],
        &["bench", "--ios", "1000"],
        &["bench", "--ios", "1000", "--json"],
    ] {
        // The read end is closed before the child starts, so its first write meets EPIPE
        // (deterministically, unlike `| true`, which may exit after the write).
        let (r, w) = std::io::pipe().unwrap();
        drop(r);
        let o = nvme_dio_with_stdout(args, w.into());
        let e = stderr(&o);
        assert_no_panic(args, &e);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {e}");
        assert!(e.is_empty(), "{args:?} printed to stderr:\n{e}");
    }
}

#[test]
fn a_full_disk_on_stdout_is_an_error() {
    for args in [
        &["--help"][..],
        &["bench", "--help"],
        &["--version"],
        &["identify"],
        &["identify", "--json"],
        &["list", "--json"],
        &["bench", "--ios", "1000", "--json"],
        &["bench", "--ios", "1000"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let o = nvme_dio_with_stdout(args, full.into());
        let e = stderr(&o);
        assert_no_panic(args, &e);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert!(
            e.starts_with("error: cannot write to standard output") && e.contains("No space left"),
            "{args:?}: {e}"
        );
    }
}

/// Runs nvme-dio under the hang detector of [`wait_or_kill`], capturing both streams.
fn run_bounded(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nvme-dio"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nvme-dio");
    let (o, e) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let read = |mut p: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            p.read_to_end(&mut s).unwrap();
            s
        })
    };
    let (ro, re) = (read(Box::new(o)), read(Box::new(e)));
    let status = wait_or_kill(&mut child, args);
    Output {
        status,
        stdout: ro.join().unwrap(),
        stderr: re.join().unwrap(),
    }
}

/// Asserts a bounded run fails with status `code` and stderr holding every `needle`.
fn assert_refused(args: &[&str], code: i32, needles: &[&str]) {
    let o = run_bounded(args);
    let e = stderr(&o);
    assert_no_panic(args, &e);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {e}");
    for n in needles {
        assert!(e.contains(n), "{args:?}: stderr lacks {n:?}:\n{e}");
    }
}

#[test]
fn verify_on_the_null_namespace_is_refused_at_once() {
    // Used to write the whole 1 TiB null namespace silently (a hang), then read zeroes back.
    assert_refused(
        &["bench", "--verify", "-t", "1"],
        1,
        &["null namespace", "--device emu:ram"],
    );
    // A small null namespace was reported as corruption ("data from another block?").
    assert_refused(
        &["bench", "--verify", "--size", "1m", "--ios", "100"],
        1,
        &["null namespace", "--device emu:ram"],
    );
}

#[test]
fn a_ram_namespace_larger_than_memory_is_refused_before_allocating() {
    // Used to abort with "memory allocation of 1099511627776 bytes failed".
    assert_refused(
        &["bench", "--device", "emu:ram", "--size", "1t", "--ios", "1"],
        1,
        &["--size 1.0 TiB", "available", "smaller --size"],
    );
}

#[test]
fn a_bad_histogram_path_fails_before_the_run() {
    // Used to run the whole bench and then print nothing but the write error.
    let o = run_bounded(&["bench", "-t", "30", "--histogram", "/no/such/dir/x.svg"]);
    let e = stderr(&o);
    assert_no_panic(&[], &e);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("cannot create the histogram file (checked before the run) /no/such/dir/x.svg")
            && e.contains("No such file"),
        "{e}"
    );
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
}

/// True once `pid` catches SIGINT (bit 1 of SigCgt in /proc/PID/status).
fn catches_sigint(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("SigCgt:"))
                .and_then(|l| u64::from_str_radix(l[7..].trim(), 16).ok())
        })
        .is_some_and(|mask| mask & (1 << (2 - 1)) != 0)
}

/// Starts a long bench, waits until its Ctrl-C handler is in place (no sleep-and-hope),
/// sends SIGINT, and returns what it printed.
fn interrupt_bench(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nvme-dio"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nvme-dio");
    let (o, e) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let read = |mut p: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            p.read_to_end(&mut s).unwrap();
            s
        })
    };
    let (ro, re) = (read(Box::new(o)), read(Box::new(e)));
    let pid = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !catches_sigint(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "{args:?} never installed a SIGINT handler"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "{args:?} ended early: {}",
            String::from_utf8_lossy(&re.join().unwrap())
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let k = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(k.success());
    let status = wait_or_kill(&mut child, args);
    Output {
        status,
        stdout: ro.join().unwrap(),
        stderr: re.join().unwrap(),
    }
}

#[test]
fn ctrl_c_prints_the_partial_report_and_exits_130() {
    let o = interrupt_bench(&["bench", "-t", "60", "--json"]);
    let e = stderr(&o);
    assert_no_panic(&[], &e);
    assert_eq!(o.status.code(), Some(130), "{e}");
    assert!(e.contains("interrupted (Ctrl-C)"), "{e}");
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|err| panic!("no JSON report after Ctrl-C ({err}): {}", stdout(&o)));
    assert!(
        v["notes"].to_string().contains("interrupted by Ctrl-C"),
        "{v}"
    );
    assert!(v["elapsed_s"].as_f64().unwrap() < 60.0, "{v}");
    // Human form, interrupt mode (workers asleep on the eventfd): the summary is printed.
    let o = interrupt_bench(&[
        "bench",
        "-t",
        "60",
        "--mode",
        "irq",
        "--emu-thread",
        "-q",
        "1",
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{e}");
    let out = stdout(&o);
    assert!(
        out.contains("IOPS") && out.contains("interrupted by Ctrl-C"),
        "{out}"
    );
}

#[test]
fn misleading_messages_now_name_the_real_problem() {
    // A directory: used to blame the filesystem's O_DIRECT support.
    let dir = scratch("a-dir");
    std::fs::create_dir_all(&dir).unwrap();
    assert_refused(
        &["bench", "--device", dir.to_str().unwrap(), "--ios", "1"],
        1,
        &["is a directory"],
    );
    let o = run_bounded(&["bench", "--device", dir.to_str().unwrap(), "--ios", "1"]);
    assert!(!stderr(&o).contains("O_DIRECT (tmpfs"), "{}", stderr(&o));
    std::fs::remove_dir(&dir).unwrap();
    // More queues than the controller grants: say the flag.
    assert_refused(
        &["bench", "--queues", "100", "--ios", "100"],
        1,
        &["granted 64", "--queues 64 or fewer"],
    );
    let o = run_bounded(&["bench", "--queues", "100", "--ios", "100"]);
    assert!(!stderr(&o).contains("drop a queue pair"), "{}", stderr(&o));
    // A queue depth beyond the controller's queue size: refused, not silently clamped.
    assert_refused(
        &["bench", "-q", "4096", "--ios", "10"],
        1,
        &[
            "-q 4096 needs 4097 entries",
            "allows 2048",
            "-q 2047 or less",
        ],
    );
    // A zero timeout: refused, not silently 1 ms.
    assert_refused(
        &["bench", "--timeout-ms", "0", "--ios", "10"],
        2,
        &["--timeout-ms", "at least 1"],
    );
    // Negative numbers: the flag and the expected form, not "unexpected argument '-5'".
    for (flag, want) in [
        ("-q", "--queue-depth"),
        ("--queues", "--queues"),
        ("--ios", "--ios"),
        ("-t", "--time"),
        ("--size", "--size"),
    ] {
        let o = run_bounded(&["bench", flag, "-5"]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{flag}: {e}");
        assert!(
            e.contains(want) && e.contains("negative") && !e.contains("unexpected argument"),
            "{flag}: {e}"
        );
    }
    // A seed that is not a number: the flag and the forms accepted.
    assert_refused(
        &["bench", "--seed", "abc"],
        2,
        &["--seed", "whole number", "hex with 0x"],
    );
    let o = run_bounded(&["bench", "--seed", "abc"]);
    assert!(
        !stderr(&o).contains("invalid digit found in string"),
        "{}",
        stderr(&o)
    );
    // A PCI address that does not exist, or is no NVMe controller: not an IOMMU problem.
    assert_refused(
        &["bench", "--device", "0000:ff:1f.7", "--ios", "1"],
        1,
        &["no PCI device 0000:ff:1f.7"],
    );
    if let Some(bdf) = std::fs::read_dir("/sys/bus/pci/devices")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|b| {
            std::fs::read_to_string(format!("/sys/bus/pci/devices/{b}/class"))
                .is_ok_and(|c| c.trim() != "0x010802")
        })
    {
        assert_refused(
            &["bench", "--device", &bdf, "--ios", "1"],
            1,
            &["is not an NVMe controller"],
        );
        let o = run_bounded(&["identify", "--device", &bdf]);
        assert!(
            stderr(&o).contains("is not an NVMe controller") && !stderr(&o).contains("IOMMU"),
            "{}",
            stderr(&o)
        );
    } else {
        println!(
            "no non-NVMe PCI device on this machine: that case is covered by the unit test only"
        );
    }
}

#[test]
fn iopoll_on_a_file_fails_before_the_run_with_the_reason() {
    let path = scratch("iopoll.dat");
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    // Used to submit, fail every I/O, print IOPS 0 with the failures' latency, then error.
    let o = run_bounded(&[
        "bench",
        "--device",
        path.to_str().unwrap(),
        "--iopoll",
        "--ios",
        "100",
    ]);
    let e = stderr(&o);
    assert_no_panic(&[], &e);
    std::fs::remove_file(&path).unwrap();
    if o.status.success() {
        // A filesystem that can poll O_DIRECT files: then the run is real and reports.
        assert!(stdout(&o).contains("IOPS"), "{}", stdout(&o));
        return;
    }
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("tried before the run") && e.contains("--iopoll") && e.contains("drop --iopoll"),
        "{e}"
    );
    assert!(
        o.stdout.is_empty(),
        "no report of a run that did not run: {}",
        stdout(&o)
    );
}

#[test]
fn a_read_only_block_device_fails_before_the_run() {
    let path = scratch("ro-loop.dat");
    std::fs::write(&path, vec![0u8; 4 << 20]).unwrap();
    let l = Command::new("losetup")
        .args(["-r", "-f", "--show", path.to_str().unwrap()])
        .output();
    let Some(dev) = l
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    else {
        std::fs::remove_file(&path).unwrap();
        panic!("losetup -r failed: this test needs root and /dev/loop-control (CI has both)");
    };
    let o = run_bounded(&["bench", "--device", &dev, "-w", "randwrite", "--ios", "10"]);
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    std::fs::remove_file(&path).unwrap();
    let e = stderr(&o);
    assert_no_panic(&[], &e);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("a write of 4096 bytes at offset 0, tried before the run")
            && e.contains("read-only"),
        "{e}"
    );
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
}

#[test]
fn latency_comes_from_successful_ios_only() {
    // Every I/O fails (the first one, with -q 1 and the run stopping at the first failure):
    // the report must not show a latency made of failures.
    let o = run_bounded(&[
        "bench",
        "--json",
        "--inject-io-error",
        "0",
        "--ios",
        "10",
        "-q",
        "1",
    ]);
    let e = stderr(&o);
    assert_no_panic(&[], &e);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("I/O(s) failed") && e.contains("Internal Error"),
        "{e}"
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ios"], 0, "{v}");
    assert!(v["errors"].as_u64().unwrap() >= 1, "{v}");
    for (k, x) in v["latency"].as_object().unwrap() {
        assert_eq!(x.as_f64(), Some(0.0), "latency.{k} of failed I/Os: {v}");
    }
}

#[test]
fn cpu_time_is_the_threads_own_and_wall_time_its_own_line() {
    // irq mode with the emulator on its own thread: the worker sleeps, so its CPU time
    // (from the kernel's per-thread accounting) cannot exceed its wall time.
    let v = bench_json(&["--mode", "irq", "--emu-thread", "-q", "1", "--ios", "2000"]);
    let cpu = v["cpu_ns_per_io"].as_f64().expect("cpu_ns_per_io");
    let wall = v["wall_ns_per_io"].as_f64().expect("wall_ns_per_io");
    assert!(cpu > 0.0 && wall > 0.0, "{v}");
    // A physical bound, not a timing one: one thread uses at most one CPU.
    assert!(cpu <= wall * 1.1 + 1_000.0, "cpu {cpu} > wall {wall}: {v}");
    assert!(
        v.get("ns_per_io").is_none(),
        "the old ambiguous key is gone: {v}"
    );
    let o = run_bounded(&[
        "bench",
        "--mode",
        "irq",
        "--emu-thread",
        "-q",
        "1",
        "--ios",
        "500",
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    let cpu_line = out
        .lines()
        .find(|l| l.starts_with("CPU/IO"))
        .expect("CPU/IO line");
    assert!(cpu_line.contains("CPU time"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("wall/IO")), "{out}");
    assert!(
        !out.contains("poll mode spins") && !out.contains("poll mode:"),
        "irq mode: {out}"
    );
    assert!(out.contains("irq mode: the workers sleep"), "{out}");
}

#[test]
fn irq_mode_on_the_inline_emulator_says_it_never_sleeps() {
    let o = run_bounded(&["bench", "--mode", "irq", "--ios", "500"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("never waits on the interrupt") && out.contains("--emu-thread"),
        "{out}"
    );
    // Poll mode and the emulator thread need no such note.
    let o = run_bounded(&["bench", "--mode", "irq", "--emu-thread", "--ios", "500"]);
    assert!(!stdout(&o).contains("never waits"), "{}", stdout(&o));
}

#[test]
fn identify_reports_what_bench_can_get_and_json_carries_units() {
    let o = run_bounded(&["identify", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    // bench --queues 64 --mode irq runs on the emulated controller: identify says so.
    assert_eq!(v["io_queues"], 64, "{v}");
    assert_eq!(v["msix_vectors"], 65, "{v}");
    assert_eq!(v["doorbell_stride_bytes"], 4, "{v}");
    assert_eq!(v["page_size_bytes"], 4096, "{v}");
    assert!(v.get("doorbell_stride").is_none(), "{v}");
    let o = run_bounded(&["identify"]);
    let out = stdout(&o);
    assert!(
        out.contains("64 I/O queue pairs granted") && out.contains("65 MSI-X vectors"),
        "{out}"
    );
    assert!(out.contains("doorbell stride 4 bytes"), "{out}");
    let v = bench_json(&["--queues", "64", "--mode", "irq", "-q", "1", "--ios", "640"]);
    assert_eq!(v["queues"].as_array().unwrap().len(), 64);
    // Every latency key names its unit.
    let v = bench_json(&["--ios", "100"]);
    for k in v["latency"].as_object().unwrap().keys() {
        assert!(k.ends_with("_ns"), "latency.{k} has no unit: {v}");
    }
    for k in [
        "io_size_bytes",
        "lba_size_bytes",
        "working_set_bytes",
        "time_s",
    ] {
        assert!(v["settings"].get(k).is_some(), "settings.{k}: {v}");
    }
}

/// Bad invocations: each must end (under the hang detector) with its exit status (2 for a
/// command line clap refuses, 1 for a run that cannot go ahead) and a message holding the
/// key words, without a panic.
#[test]
fn table_of_bad_invocations_fails_cleanly_with_a_sentence() {
    #[rustfmt::skip]
    let table: &[(&[&str], i32, &[&str])] = &[
        (&["bench", "--engine", "io_uring", "--mode", "hybrid", "--device", "/dev/null"], 1, &["--mode hybrid is the vfio engine's"]),
        (&["bench", "--io-size", "4x"], 2, &["--io-size", "not a size"]),
        (&["bench", "-o", "1000"], 2, &["--io-size", "not a multiple of 512"]),
        (&["bench", "-o", "2g"], 2, &["--io-size", "more than 1 GiB"]),
        (&["bench", "-o", "0"], 2, &["--io-size", "zero bytes"]),
        (&["bench", "-o", "-4k"], 2, &["--io-size", "negative sizes"]),
        (&["bench", "-w", "randrw", "--mix", "150"], 2, &["--mix", "0 to 100"]),
        (&["bench", "-w", "randrw", "-M", "-5"], 2, &["--mix", "negative percentages"]),
        (&["bench", "-w", "randread", "-M", "50"], 1, &["--mix only applies"]),
        (&["bench", "--mix"], 2, &["--mix", "a value is required"]),
        (&["bench", "--device", "bogus"], 2, &["--device", "unknown device"]),
        (&["bench", "--device", "0000:01:20.0"], 2, &["not a valid PCI address", "00 to 1f"]),
        (&["bench", "--segments", "3"], 1, &["--segments 3 needs at least 3 blocks"]),
        (&["bench", "--segments", "0"], 2, &["--segments", "from 1 to 256"]),
        (&["bench", "--segments", "300"], 2, &["--segments", "out of range"]),
        (&["bench", "--engine", "io_uring"], 1, &["needs a block device or file path"]),
        (&["bench", "--engine", "vfio", "--device", "./f"], 1, &["--engine io_uring"]),
        (&["bench", "--engine", "spdk"], 2, &["--engine", "possible values"]),
        (&["bench", "--inject-flip-bit", "3"], 1, &["emu:ram only"]),
        (&["bench", "--inject-io-error", "1", "--device", "./x"], 1, &["emulated controller only"]),
        (&["bench", "--device", "./f", "--emu-thread"], 1, &["emulated controller only"]),
        (&["bench", "--iopoll"], 1, &["io_uring options"]),
        (&["bench", "--sqpoll"], 1, &["io_uring options"]),
        (&["bench", "-t", "0"], 1, &["-t 0 measures nothing", "--ios"]),
        (&["bench", "-t", "abc"], 2, &["--time", "not a duration"]),
        (&["bench", "-t", "100000"], 2, &["--time", "out of range", "86400"]),
        (&["bench", "-t", "-5"], 2, &["--time", "negative durations"]),
        (&["bench", "--warmup", "-1"], 2, &["--warmup", "negative durations"]),
        (&["bench", "-q", "0"], 2, &["--queue-depth", "from 1 to 65535"]),
        (&["bench", "-q", "70000"], 2, &["--queue-depth", "out of range"]),
        (&["bench", "-q", "-5"], 2, &["--queue-depth", "negative numbers are not allowed"]),
        (&["bench", "-q", "4096", "--ios", "1"], 1, &["-q 4096 needs 4097 entries", "-q 2047 or less"]),
        (&["bench", "--queues", "0"], 2, &["--queues", "from 1 to 1024"]),
        (&["bench", "--queues", "2000"], 2, &["--queues", "out of range"]),
        (&["bench", "--queues", "100", "--ios", "1"], 1, &["granted 64", "--queues 64 or fewer"]),
        (&["bench", "--batch", "0"], 2, &["--batch", "out of range"]),
        (&["bench", "--ios", "0"], 2, &["--ios", "at least 1"]),
        (&["bench", "--ios", "-1"], 2, &["--ios", "negative numbers"]),
        (&["bench", "--nsid", "0"], 2, &["--nsid", "out of range"]),
        (&["bench", "--nsid", "2", "--ios", "1"], 1, &["namespace 2 does not exist"]),
        (&["bench", "--size", "0"], 2, &["--size", "zero bytes"]),
        (&["bench", "--size", "1k", "--ios", "1"], 1, &["smaller than one I/O"]),
        (&["bench", "--emu-lba-size", "1024"], 2, &["--emu-lba-size", "possible values"]),
        (&["bench", "-w", "bogus"], 2, &["--workload", "possible values"]),
        (&["bench", "--mode", "bogus"], 2, &["--mode", "possible values"]),
        (&["bench", "--no-such-flag"], 2, &["unexpected argument '--no-such-flag'"]),
        (&["bench", "--seed", "abc"], 2, &["--seed", "hex with 0x"]),
        (&["bench", "--seed", "99999999999999999999999"], 2, &["--seed", "too large"]),
        (&["bench", "--timeout-ms", "0"], 2, &["--timeout-ms", "at least 1"]),
        (&["bench", "--timeout-ms", "-1"], 2, &["--timeout-ms", "negative numbers"]),
        (&["bench", "--device", "emu:ram", "--size", "1t"], 1, &["needs 1.0 TiB of RAM"]),
        (&["bench", "--verify"], 1, &["null namespace", "--device emu:ram"]),
        (&["bench", "-o", "512", "--ios", "1"], 1, &["not a multiple of the device's 4096-byte blocks"]),
        (&["bench", "--device", "./no-such-file", "--ios", "1"], 1, &["no such file", "create it first"]),
        (&["bench", "--device", "/dev/null", "--ios", "1"], 1, &["/dev/null is a character device"]),
        (&["bench", "--device", "/", "--ios", "1"], 1, &["/ is a directory"]),
        (&["bench", "--histogram", "/no/such/dir/x.svg", "--ios", "1"], 1, &["cannot create the histogram file"]),
        (&["bench", "--device", "0000:ff:1f.7", "--ios", "1"], 1, &["no PCI device 0000:ff:1f.7"]),
        (&["setup", "nope"], 2, &["not a PCI address"]),
        (&["setup", "--hugepages-node", "0"], 2, &["NODE:PAGES"]),
        (&["setup", "0000:ff:1f.7", "--hugepages", "-3"], 2, &["--hugepages", "negative numbers"]),
        (&["reset", "0000:ff:1f.7"], 1, &["refusing to reset", "no PCI device"]),
        (&["identify", "--device", "bogus"], 2, &["unknown device"]),
        (&["identify", "--device", "./file"], 1, &["is a path", "PCI address"]),
        (&["identify", "--device", "0000:ff:1f.7"], 1, &["no PCI device 0000:ff:1f.7"]),
        (&["frobnicate"], 2, &["unrecognized subcommand 'frobnicate'"]),
        (&["bench", "-c", "0x0"], 2, &["--core-mask", "selects no CPU"]),
        (&["bench", "-c", "zz"], 2, &["--core-mask", "not a core mask"]),
        (&["bench", "-c", "0x100000", "--ios", "1"], 1, &["CPU 20 is not online"]),
        (&["bench", "--cpus", "3-1"], 2, &["--cpus", "lower CPU to the higher"]),
        (&["bench", "--cpus", "0,0"], 2, &["--cpus", "given twice"]),
        (&["bench", "--cpus", "0", "-c", "0x1"], 2, &["cannot be used with"]),
        (&["bench", "--queues", "2", "-c", "0x1"], 2, &["cannot be used with"]),
        (&["bench", "--no-pin", "--cpus", "0"], 2, &["cannot be used with"]),
        (&["bench", "-P", "0"], 2, &["--num-qpairs", "from 1 to 64"]),
        (&["bench", "-P", "4", "-q", "2", "--ios", "1"], 1, &["-q 2 is fewer I/Os than the -P 4"]),
        (&["bench", "--nsid", "1", "--nsid", "1", "--ios", "1"], 1, &["--nsid 1 is given twice"]),
        (&["bench", "--device", "emu", "--device", "./f", "--ios", "1"], 1, &["several --device", "io_uring"]),
        (&["bench", "--device", "./f", "-P", "2", "--ios", "1"], 1, &["-P (queue pairs per namespace) is a vfio engine option"]),
        (&["bench", "--device", "emu", "--device", "emu", "--nsid", "2", "--ios", "1"], 1, &["namespace 2 does not exist"]),
        (&["bench", "--queues", "40", "-P", "2", "--ios", "1"], 1, &["needs 80 I/O queue pairs", "granted 64"]),
        (&["bench", "--random_distribution", "zipf:1"], 2, &["--random-distribution", "above 0 and not 1"]),
        (&["bench", "--random_distribution", "pareto:2"], 2, &["pareto h 2", "between 0 and 1"]),
        (&["bench", "--random_distribution", "normal:0"], 2, &["normal deviation 0%", "out of range"]),
        (&["bench", "--random_distribution", "zipf"], 2, &["zipf needs its theta"]),
        (&["bench", "--random_distribution", "bogus"], 2, &["not a distribution", "zipf:THETA"]),
        (&["bench", "--random_distribution", "zipf:1.2", "-w", "read"], 1, &["shapes random offsets", "-w read is sequential"]),
        (&["bench", "--bssplit", "4k/50:64k/40"], 2, &["--bssplit", "add up to 90, not 100"]),
        (&["bench", "--bssplit", "4k/50:1000/50"], 2, &["--bssplit", "not a multiple of 512"]),
        (&["bench", "--bssplit", "4k:64k/50"], 2, &["only the last size may leave it out"]),
        (&["bench", "--bssplit", "4k/50:64k", "-o", "8k"], 2, &["cannot be used with"]),
        (&["bench", "--bssplit", "4k/50:64k", "--segments", "2"], 1, &["--bssplit and --segments do not combine"]),
        (&["bench", "--device", "emu:512", "--bssplit", "512/50:4k", "--emu-lba-size", "4096", "--ios", "1"], 1, &["--bssplit size 512 is not a multiple of the device's 4096-byte blocks"]),
        (&["bench", "--fsync", "0"], 2, &["--fsync", "out of range"]),
        (&["bench", "--fsync", "4"], 1, &["--fsync 4 sends a Flush", "writes nothing"]),
        (&["bench", "--fua"], 1, &["--fua marks writes", "writes nothing"]),
        (&["bench", "-w", "randtrim", "--fua"], 1, &["no FUA bit"]),
        (&["bench", "-w", "trim", "--verify", "--device", "emu:ram"], 1, &["-w trim writes no data pattern"]),
        (&["bench", "-w", "trim", "--device", "./f"], 1, &["-w trim is a vfio engine feature"]),
        (&["bench", "--rate-iops", "0"], 2, &["--rate-iops", "out of range"]),
        (&["bench", "--offset", "-1"], 2, &["--offset", "negative offsets"]),
        (&["bench", "--offset", "100%"], 2, &["--offset", "0 to 99"]),
        (&["bench", "--offset", "2t", "--ios", "1"], 1, &["--offset 2199023255552 is at or past the end"]),
        (&["bench", "--offset", "1000", "--ios", "1"], 1, &["--offset 1000 is not a multiple of the device's 4096-byte blocks"]),
        (&["bench", "--iodeph", "4"], 2, &["unexpected argument '--iodeph'", "a similar argument exists: '--iodepth'"]),
        (&["bench", "--rw", "randrnd"], 2, &["--workload", "possible values"]),
        (&["bench", "--output-format", "terse"], 2, &["--output-format", "possible values", "json"]),
        (&["bench", "--runtime", "-1"], 2, &["--time", "negative durations"]),
        (&["bench", "--percentiles", "0"], 2, &["--percentiles", "out of range"]),
        (&["bench", "--percentiles", "50,101"], 2, &["--percentiles", "101 is out of range"]),
        (&["bench", "--percentiles", "50,abc"], 2, &["--percentiles", "\"abc\" is not a percentage"]),
        (&["bench", "--percentiles", "99:99"], 2, &["--percentiles", "given twice"]),
        (&["bench", "--status-interval", "0.01"], 2, &["--status-interval", "too short"]),
        (&["bench", "--status-interval", "-1"], 2, &["--status-interval", "negative durations"]),
        (&["bench", "--repeat", "0"], 2, &["--repeat", "from 1 to 1000"]),
        (&["bench", "--output", "/no/such/dir/x.json", "--ios", "1"], 1, &["cannot create the output file (checked before the run) /no/such/dir/x.json"]),
    ];
    assert!(table.len() >= 40);
    let mut failures = Vec::new();
    for (args, code, words) in table {
        let o = run_bounded(args);
        let e = stderr(&o);
        let ok = o.status.code() == Some(*code)
            && words.iter().all(|w| e.contains(w))
            && !e.contains("panicked")
            && !e.contains("RUST_BACKTRACE");
        if !ok {
            failures.push(format!(
                "{args:?}: status {:?} (want {code}), stderr:\n{e}",
                o.status.code()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}

#[test]
fn segments_smaller_than_a_block_run_with_sgls_and_are_refused_without() {
    // A 512-byte I/O in 2 segments of 256 bytes on a 512-byte namespace: one SGL command.
    let v = bench_json(&[
        "--device",
        "emu:ram:512",
        "--emu-sgl",
        "--segments",
        "2",
        "-o",
        "512",
        "--verify",
        "-w",
        "randrw",
        "--ios",
        "2000",
    ]);
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["verify"]["mismatches"], 0, "{v}");
    assert!(v["verify"]["checked_blocks"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(
        v["settings"]["segment_shapes"],
        serde_json::json!([[0, 256], [512, 256]]),
        "{v}"
    );
    assert_eq!(
        v["queues"][0]["split_requests"], 0,
        "one SGL command each: {v}"
    );
    // Without SGLs the reason is the missing SGL support, or --no-sgl.
    assert_refused(
        &[
            "bench",
            "--device",
            "emu:ram:512",
            "--segments",
            "2",
            "-o",
            "512",
            "--ios",
            "10",
        ],
        1,
        &[
            "--segments 2 needs at least 2 blocks",
            "does not support SGLs",
        ],
    );
    assert_refused(
        &[
            "bench",
            "--device",
            "emu:ram:512",
            "--emu-sgl",
            "--no-sgl",
            "--segments",
            "2",
            "-o",
            "512",
            "--ios",
            "10",
        ],
        1,
        &[
            "--segments 2 needs at least 2 blocks",
            "--no-sgl forces PRPs",
        ],
    );
    // The kernel path says why it needs whole blocks.
    let path = scratch("seg.dat");
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    assert_refused(
        &[
            "bench",
            "--device",
            path.to_str().unwrap(),
            "--segments",
            "2",
            "-o",
            "512",
            "--ios",
            "10",
        ],
        1,
        &["whole-block segments only"],
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_write_protected_namespace_fails_before_the_run() {
    // Used to run, fail every write, and print IOPS 0 with the failures' latency.
    assert_refused(
        &[
            "bench",
            "-w",
            "randwrite",
            "--inject-write-protect",
            "--ios",
            "100",
        ],
        1,
        &[
            "a write of 4096 bytes at offset 0, tried before the run",
            "Write Protected",
        ],
    );
    let o = run_bounded(&[
        "bench",
        "-w",
        "randwrite",
        "--inject-write-protect",
        "--ios",
        "100",
    ]);
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
    // Reads on the same namespace still run.
    let v = bench_json(&["-w", "randread", "--inject-write-protect", "--ios", "100"]);
    assert_eq!(v["ios"], 100);
}

#[test]
fn queue_entries_are_independent_of_the_queue_depth() {
    // Default: the controller's maximum up to 1 024, whatever -q is.
    let o = nvme_dio(&["bench", "-q", "1", "--ios", "200"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("1024 entries each"), "{}", stdout(&o));
    // Asked for: used as given.
    let o = nvme_dio(&["bench", "-q", "4", "--queue-entries", "64", "--ios", "200"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("64 entries each"), "{}", stdout(&o));
    // Too few for -q, or more than the controller allows: refused before the run.
    assert_fails_with(
        &["bench", "-q", "32", "--queue-entries", "8"],
        "--queue-entries 8 holds fewer than the 33 that -q 32",
    );
    assert_fails_with(
        &["bench", "--queue-entries", "4096"],
        "the controller allows 2048 entries per queue",
    );
}

/// SPDK perf's reach: two emulated controllers in one process, a core mask (one pinned
/// worker per core), several queue pairs per namespace, and the per device x core table.
#[test]
fn two_controllers_on_a_core_mask_give_one_table_row_each_and_a_total() {
    let v = bench_json(&[
        "--device", "emu", "--device", "emu:ram", "-c", "0x3", "-P", "2", "-q", "8", "--ios",
        "8000",
    ]);
    let table = v["table"].as_array().unwrap();
    assert_eq!(table.len(), 2, "{v}");
    assert_eq!(
        (&table[0]["device"], &table[0]["nsid"], &table[0]["core"]),
        (&"emu".into(), &1.into(), &0.into())
    );
    assert_eq!(
        (&table[1]["device"], &table[1]["core"]),
        (&"emu:ram".into(), &1.into())
    );
    let sum: u64 = table.iter().map(|r| r["ios"].as_u64().unwrap()).sum();
    assert_eq!(sum, 8000, "{v}");
    assert_eq!(v["total"]["ios"], 8000);
    assert!(
        table
            .iter()
            .all(|r| r["iops"].as_f64().unwrap() > 0.0 && r["avg_ns"].as_f64().unwrap() > 0.0)
    );
    // Two queue pairs per namespace per worker: four in all, two on each device.
    let queues = v["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 4, "{v}");
    assert_eq!(
        queues.iter().filter(|q| q["device"] == "emu:ram").count(),
        2
    );
    assert!(queues.iter().all(|q| q["submitted"] == q["completed"]));
    assert_eq!(v["settings"]["cpus"], serde_json::json!([0, 1]));
    assert_eq!(v["targets"].as_array().unwrap().len(), 2);
    // The text has SPDK perf's table; the same device string twice gets a position.
    let o = nvme_dio(&[
        "bench", "--device", "emu", "--device", "emu", "--cpus", "0-1", "--ios", "4000",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("Device Information"), "{out}");
    assert!(out.contains("emu#1 NSID 1 from core  0 :"), "{out}");
    assert!(out.contains("emu#2 NSID 1 from core  1 :"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("Total ")), "{out}");
    // More targets than workers: they share, round robin (SPDK perf's association).
    let v = bench_json(&[
        "--device", "emu", "--device", "emu", "--device", "emu", "--cpus", "0-1", "--ios", "3000",
        "-q", "4",
    ]);
    let cores: Vec<u64> = v["table"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["core"].as_u64().unwrap())
        .collect();
    assert_eq!(cores, vec![0, 1, 0], "{v}");
}

/// fio's workload language: each kind of command reaches the device (the emulator counts
/// commands by opcode, FUA writes apart), and the long fio spellings are aliases.
#[test]
fn fio_workloads_reach_the_device_as_their_commands() {
    let n = |v: &Value, k: &str| {
        v["emulator"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("emulator.{k}: {v}"))
    };
    let v = bench_json(&["-w", "randtrim", "--ios", "500"]);
    assert!(
        n(&v, "dsm") >= 500 && n(&v, "reads") == 0 && n(&v, "writes") == 0,
        "{v}"
    );
    assert_eq!(v["settings"]["write_kind"], "trim");
    let v = bench_json(&["-w", "writezeroes", "--fua", "--ios", "500"]);
    assert!(
        n(&v, "write_zeroes") >= 500 && n(&v, "fua_writes") >= 500 && n(&v, "writes") == 0,
        "{v}"
    );
    let v = bench_json(&["-w", "randwritezeroes", "--ios", "300"]);
    assert!(
        n(&v, "write_zeroes") >= 300 && n(&v, "fua_writes") == 0,
        "{v}"
    );
    let v = bench_json(&["-w", "write", "--fua", "--ios", "300"]);
    assert!(n(&v, "writes") >= 300 && n(&v, "fua_writes") >= 300, "{v}");
    let v = bench_json(&["-w", "randwrite", "--ios", "300"]);
    assert_eq!(n(&v, "fua_writes"), 0, "no FUA unless asked: {v}");
    // A Flush after every 4 writes (-q 1: strictly in turn), counted apart from the I/Os.
    let v = bench_json(&["-w", "randwrite", "--fsync", "4", "--ios", "400", "-q", "1"]);
    assert_eq!(v["ios"], 400, "{v}");
    assert_eq!(
        v["flushes"]["count"], 99,
        "after writes 4, 8, ..., 396: {v}"
    );
    assert!(n(&v, "flushes") >= 99 && n(&v, "writes") >= 400, "{v}");
    assert!(
        v["flushes"]["latency"]["avg_ns"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    // Mixed sizes: both sizes go out (the bytes lie strictly between all-small and all-large).
    let v = bench_json(&["--bssplit", "4k/50:64k/50", "--ios", "2000", "--seed", "1"]);
    let bytes = v["bytes"].as_u64().unwrap();
    assert!(
        bytes > 2000 * 4096 && bytes < 2000 * 65536 && bytes % 4096 == 0,
        "{v}"
    );
    assert_eq!(
        v["settings"]["bssplit"],
        serde_json::json!([[4096, 50], [65536, 50]])
    );
    // Skewed offsets run (their skew is a unit test of the sampler) and are recorded.
    for d in ["zipf:1.2", "pareto:0.2", "normal:10"] {
        let v = bench_json(&["--random_distribution", d, "--ios", "2000"]);
        assert_eq!(v["settings"]["random_distribution"], d, "{v}");
        assert_eq!(v["ios"], 2000);
    }
    // fio's spellings.
    let v = bench_json(&[
        "--iodepth=4",
        "--rw=randrw",
        "--rwmixread=70",
        "--runtime=1",
        "--ramp_time=0",
        "--numjobs=2",
        "--bs=8k",
        "--randseed=7",
        "--ios",
        "2000",
    ]);
    let o = run_bounded(&["bench", "--output-format=json", "--ios", "100"]);
    let j: Value = serde_json::from_slice(&o.stdout).expect("--output-format=json is JSON");
    assert_eq!(j["ios"], 100);
    let st = &v["settings"];
    assert_eq!(
        (
            &st["queue_depth"],
            &st["workload"],
            &st["read_pct"],
            &st["queues"],
            &st["io_size_bytes"],
            &st["seed"]
        ),
        (
            &4.into(),
            &"randrw".into(),
            &70.into(),
            &2.into(),
            &8192.into(),
            &7.into()
        ),
        "{v}"
    );
}

#[test]
fn offset_and_size_bound_the_range_the_ios_touch() {
    // A 1 MiB range from 1 MiB, read once in order (256 blocks): a bit flipped below the
    // range is never read; one inside is caught.
    let base = [
        "bench", "--device", "emu:ram", "--size", "1m", "--offset", "1m", "--verify", "-w", "read",
        "--ios", "256", "-q", "4",
    ];
    let mut outside = base.to_vec();
    outside.extend(["--inject-flip-bit", "10"]);
    let o = run_bounded(&outside);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("offset 1m"), "{}", stdout(&o));
    let mut inside = base.to_vec();
    inside.extend(["--inject-flip-bit", "300"]);
    let o = run_bounded(&inside);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("LBA 300"), "{}", stderr(&o));
    // On a device of fixed size (a file through io_uring), the range must fit.
    let path = scratch("offset.dat");
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    let p = path.to_str().unwrap();
    assert_refused(
        &[
            "bench", "--device", p, "--offset", "512k", "--size", "1m", "--ios", "1",
        ],
        1,
        &["--offset 524288 + --size 1048576 ends past the end of the device (1048576 bytes)"],
    );
    let v = bench_json(&["--device", p, "--offset", "512k", "--ios", "100"]);
    assert_eq!(v["settings"]["working_set_bytes"], 512 << 10, "{v}");
    std::fs::remove_file(&path).unwrap();
    let v = bench_json(&["--offset", "50%", "--ios", "100"]);
    assert_eq!(v["settings"]["offset_bytes"], 1u64 << 39, "{v}");
    assert_eq!(v["settings"]["working_set_bytes"], 1u64 << 39, "{v}");
}

/// The kernel path takes --fsync (IORING_OP_FSYNC) and --fua (RWF_DSYNC) too.
#[test]
fn io_uring_engine_flushes_every_n_writes_and_writes_with_dsync() {
    let path = scratch("fsync.dat");
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    let p = path.to_str().unwrap();
    let v = bench_json(&[
        "--device",
        p,
        "-w",
        "randwrite",
        "--fsync",
        "4",
        "--fua",
        "--ios",
        "400",
        "-q",
        "1",
    ]);
    assert_eq!(v["engine"], "io_uring");
    assert_eq!(v["ios"], 400, "{v}");
    assert_eq!(
        v["flushes"]["count"], 99,
        "after writes 4, 8, ..., 396: {v}"
    );
    assert_eq!(v["errors"], 0, "{v}");
    let q = &v["queues"][0];
    assert_eq!(q["submitted"], 499, "400 writes and 99 fsyncs: {q}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn rate_iops_caps_the_rate() {
    // I/O k is submitted no earlier than k / rate after the start, so N I/Os take at least
    // (N - 1) / rate: a bound the limiter guarantees, not a timing guess.
    let v = bench_json(&["--rate-iops", "2000", "--ios", "200", "-q", "8"]);
    let iops = v["iops"].as_f64().unwrap();
    assert!(iops <= 2000.0 * 200.0 / 199.0, "{iops} IOPS: {v}");
    assert_eq!(v["settings"]["rate_iops"], 2000);
}

/// Results you can compare: read and write apart, selectable percentiles, histogram bins,
/// the tool, a timestamp and the host in JSON.
#[test]
fn json_splits_directions_and_carries_bins_percentiles_and_provenance() {
    let v = bench_json(&[
        "-w",
        "randrw",
        "-M",
        "70",
        "--ios",
        "6000",
        "--percentiles",
        "99.9,50",
    ]);
    assert_eq!(v["schema"], "nvme-dio-bench/1");
    assert_eq!(v["tool"]["name"], "nvme-dio");
    assert_eq!(v["tool"]["version"], env!("CARGO_PKG_VERSION"));
    let ts = v["timestamp"].as_str().unwrap();
    assert!(
        ts.len() == 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{ts}"
    );
    assert!(!v["host"].as_str().unwrap().is_empty());
    let (r, w) = (&v["read"], &v["write"]);
    let (ri, wi) = (r["ios"].as_u64().unwrap(), w["ios"].as_u64().unwrap());
    assert!(ri > 0 && wi > 0 && ri + wi == 6000, "{v}");
    assert!(ri > wi, "70% reads: {ri} reads, {wi} writes");
    for d in [r, w, &v] {
        let bins = d["latency_histogram_ns"].as_array().unwrap();
        let sum: u64 = bins.iter().map(|b| b["count"].as_u64().unwrap()).sum();
        assert_eq!(sum, d["ios"].as_u64().unwrap(), "every I/O in one bin");
        let le: Vec<u64> = bins.iter().map(|b| b["le_ns"].as_u64().unwrap()).collect();
        assert!(le.windows(2).all(|x| x[0] < x[1]), "bins ascend: {le:?}");
        assert!(*le.last().unwrap() >= d["latency"]["max_ns"].as_u64().unwrap());
        let keys: Vec<&String> = d["percentiles_ns"].as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(d["iops"].as_f64().unwrap() > 0.0 && d["mib_s"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(
        v["settings"]["percentiles"],
        serde_json::json!([99.9, 50.0])
    );
    // The object keeps the order asked for (serde_json's Value sorts, so read the text).
    let o = run_bounded(&[
        "bench",
        "--json",
        "--ios",
        "100",
        "--percentiles",
        "99.9,50",
    ]);
    let text = stdout(&o);
    let at = text.find("\"percentiles_ns\"").expect("percentiles_ns");
    let (p999, p50) = (
        text[at..].find("\"99.9\"").unwrap(),
        text[at..].find("\"50\"").unwrap(),
    );
    assert!(p999 < p50, "{}", &text[at..at + 80]);
    // A read-only run has an empty write side.
    let v = bench_json(&["--ios", "500"]);
    assert_eq!(v["write"]["ios"], 0);
    assert_eq!(v["write"]["latency_histogram_ns"], serde_json::json!([]));
    // The text shows both directions of a mixed run, with the chosen percentiles.
    let o = run_bounded(&[
        "bench",
        "-w",
        "randrw",
        "--ios",
        "2000",
        "--percentiles",
        "50,99.9",
    ]);
    let out = stdout(&o);
    assert!(
        out.lines()
            .any(|l| l.starts_with("read ") && l.contains("p99.9")),
        "{out}"
    );
    assert!(out.lines().any(|l| l.starts_with("write ")), "{out}");
    assert!(
        !out.contains("p99.99"),
        "only the chosen percentiles: {out}"
    );
}

#[test]
fn output_file_repeat_and_status_lines() {
    // --output: the report goes to the file, nothing to stdout.
    let path = scratch("report.json");
    let o = run_bounded(&[
        "bench",
        "--ios",
        "1000",
        "--json",
        "--output",
        path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["ios"], 1000);
    std::fs::remove_file(&path).unwrap();
    // --repeat: every run, and the spread.
    let v = bench_json(&["--repeat", "3", "--ios", "1000"]);
    assert_eq!(v["runs"].as_array().unwrap().len(), 3, "{v}");
    assert!(
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["ios"] == 1000)
    );
    let s = &v["summary"];
    assert_eq!(s["runs"], 3);
    for k in [
        "iops", "mib_s", "avg_ns", "p50_ns", "p99_ns", "p99_9_ns", "max_ns",
    ] {
        let (a, b, c) = (
            s[k]["min"].as_f64().unwrap(),
            s[k]["median"].as_f64().unwrap(),
            s[k]["max"].as_f64().unwrap(),
        );
        assert!(a <= b && b <= c && a > 0.0, "summary.{k}: {s}");
    }
    let o = run_bounded(&["bench", "--repeat", "2", "--ios", "1000"]);
    let out = stdout(&o);
    assert!(
        out.contains("--- run 2 of 2 ---") && out.contains("--- 2 runs ---"),
        "{out}"
    );
    // --status-interval: lines while measuring (JSON: intervals). -t bounds the run, so
    // the first interval always ends inside it.
    let v = bench_json(&["-t", "1.5", "--status-interval", "0.5", "-q", "4"]);
    let iv = v["intervals"].as_array().unwrap();
    assert!(!iv.is_empty(), "{v}");
    let t: Vec<f64> = iv.iter().map(|i| i["t_s"].as_f64().unwrap()).collect();
    assert!(t.windows(2).all(|x| x[0] < x[1]) && t[0] >= 0.5, "{t:?}");
    let sum: u64 = iv.iter().map(|i| i["ios"].as_u64().unwrap()).sum();
    assert!(sum <= v["ios"].as_u64().unwrap() && iv[0]["iops"].as_f64().unwrap() > 0.0);
    let o = run_bounded(&["bench", "-t", "1.2", "--status-interval", "0.5", "-q", "4"]);
    let out = stdout(&o);
    assert!(
        out.lines().next().unwrap_or("").starts_with('[') && out.contains("IOPS"),
        "{out}"
    );
    assert_eq!(
        bench_json(&["--ios", "100"])["intervals"],
        serde_json::json!([])
    );
}

/// Issue 15 item 6: user and system CPU time per I/O from the kernel's accounting, for the
/// worker threads and the whole process, so poll and irq compare honestly.
#[test]
fn cpu_time_per_io_is_split_into_user_and_system_for_threads_and_process() {
    let v = bench_json(&["--mode", "irq", "--emu-thread", "-q", "1", "--ios", "2000"]);
    let c = &v["cpu"];
    let f = |k: &str| c[k].as_f64().unwrap_or_else(|| panic!("cpu.{k}: {v}"));
    let (u, s, pu, ps) = (
        f("user_ns_per_io"),
        f("system_ns_per_io"),
        f("process_user_ns_per_io"),
        f("process_system_ns_per_io"),
    );
    assert!(u >= 0.0 && s >= 0.0 && u + s > 0.0, "{c}");
    // The same thread's time, two interfaces of the same accounting: they agree.
    let total = v["cpu_ns_per_io"].as_f64().unwrap();
    assert!(
        (u + s - total).abs() <= total * 0.05 + 100.0,
        "user {u} + system {s} vs {total}"
    );
    // The process holds the worker and the emulator's thread, which polls all the time.
    assert!(pu + ps >= u + s, "process {pu} + {ps} < threads {u} + {s}");
    let o = run_bounded(&["bench", "--ios", "2000"]);
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| l.starts_with("user/IO"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("system") && line.contains("whole process"),
        "{line}"
    );
}
