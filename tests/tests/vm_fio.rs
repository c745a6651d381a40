//! fio with the nvme-dio engine (fio/) through VFIO on QEMU's NVMe, in the VM guest; and the
//! kernel's io_uring engine on the same controller in the same boot. ci/vm-test puts fio
//! (built from the Debian source the engine is pinned to) in /bin and the engine in
//! /lib/nvme-dio. `#[ignore]`d on the host; the guest runs them with `--include-ignored`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nvme_dio_tests::vm::{self, VmController};

const ENGINE: &str = "/lib/nvme-dio/libnvme_dio_fio.so";

/// Runs fio with JSON output; panics unless it exits 0. Returns the JSON report.
fn fio(args: &[&str]) -> serde_json::Value {
    let out = Command::new("/bin/fio")
        .args(["--output-format=json", "--verify_state_save=0"])
        .args(args)
        .output()
        .expect("/bin/fio (only in the VM guest)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("$ fio {}\n{stderr}", args.join(" "));
    assert!(
        out.status.success(),
        "fio {args:?} failed ({}): {stderr}\n{stdout}",
        out.status
    );
    // The engine's notes (log_info) may come before the JSON.
    let start = stdout.find("\n{").map_or(0, |i| i + 1);
    serde_json::from_str(&stdout[start..]).unwrap_or_else(|e| panic!("fio JSON: {e}\n{stdout}"))
}

/// Checks every job finished without error, moved data, and prints its figures.
fn assert_clean(report: &serde_json::Value, verified: bool) -> Vec<f64> {
    let jobs = report["jobs"].as_array().expect("jobs");
    assert!(!jobs.is_empty(), "no jobs in {report}");
    let mut iops = Vec::new();
    for j in jobs {
        let name = j["jobname"].as_str().unwrap_or("?");
        assert_eq!(j["error"], 0, "job {name} failed: {j}");
        let r = j["read"]["total_ios"].as_u64().unwrap_or(0);
        let w = j["write"]["total_ios"].as_u64().unwrap_or(0);
        assert!(r + w > 0, "job {name} did no I/O");
        if verified {
            assert!(
                r > 0 && w > 0,
                "job {name}: verify read nothing back ({r} reads, {w} writes)"
            );
        }
        let p50 = j["read"]["clat_ns"]["percentile"]["50.000000"]
            .as_f64()
            .unwrap_or(0.0);
        let p99 = j["read"]["clat_ns"]["percentile"]["99.000000"]
            .as_f64()
            .unwrap_or(0.0);
        let read_iops = j["read"]["iops"].as_f64().unwrap_or(0.0);
        println!(
            "fio job {name}: read {r} ios {read_iops:.0} IOPS (p50 {:.1} us, p99 {:.1} us), write {w} ios",
            p50 / 1e3,
            p99 / 1e3
        );
        iops.push(read_iops);
    }
    iops
}

/// fio spells a PCI address with dots (it splits filenames at ':').
fn fio_name(c: &VmController) -> String {
    c.bdf.replace(':', ".")
}

fn engine_args(c: &VmController) -> Vec<String> {
    vec![
        "--thread=1".into(),
        format!("--ioengine=external:{ENGINE}"),
        format!("--filename={} ns=1", fio_name(c)),
    ]
}

fn run_engine(c: &VmController, extra: &[&str]) -> serde_json::Value {
    let base = engine_args(c);
    let args: Vec<&str> = base
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
        .collect();
    fio(&args)
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_fio_engine_randrw_verify_crc32c() {
    let c = vm::controller("default").expect("VM guest");
    for (bs, qd) in [("4k", "1"), ("4k", "16"), ("64k", "8")] {
        let r = run_engine(
            &c,
            &[
                "--name=randrw",
                "--rw=randrw",
                "--bs",
                bs,
                "--iodepth",
                qd,
                "--offset=32M",
                "--size=8M",
                "--verify=crc32c",
            ],
        );
        assert_clean(&r, true);
    }
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_fio_engine_two_threads_two_queue_pairs() {
    let c = vm::controller("default").expect("VM guest");
    let r = run_engine(
        &c,
        &[
            "--name=two",
            "--numjobs=2",
            "--offset=16M",
            "--offset_increment=8M",
            "--size=8M",
            "--rw=randrw",
            "--bs=4k",
            "--iodepth=8",
            "--verify=crc32c",
        ],
    );
    assert_eq!(assert_clean(&r, true).len(), 2, "two jobs (threads)");
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_fio_engine_batched_submit_and_interrupts() {
    let c = vm::controller("mdts2").expect("VM guest");
    // One doorbell per batch of 8; and the same job sleeping on the queue's MSI-X vector.
    for mode in ["--intr=0", "--intr=1"] {
        let r = run_engine(
            &c,
            &[
                "--name=batch",
                mode,
                "--rw=randrw",
                "--bsrange=4k-64k",
                "--iodepth=16",
                "--iodepth_batch_submit=8",
                "--iodepth_batch_complete_min=4",
                "--size=8M",
                "--verify=crc32c",
            ],
        );
        assert_clean(&r, true);
    }
}

/// Binds `c` to `driver` the way ci/vm/init does; waits for the result.
fn bind(c: &VmController, driver: &str) {
    let d = c.sysfs();
    let over = if driver == "vfio-pci" {
        "vfio-pci"
    } else {
        "\n"
    };
    std::fs::write(d.join("driver_override"), over).expect("driver_override");
    if d.join("driver").exists() {
        std::fs::write(d.join("driver/unbind"), &c.bdf).expect("unbind");
    }
    std::fs::write("/sys/bus/pci/drivers_probe", &c.bdf).expect("drivers_probe");
    let now = std::fs::read_link(d.join("driver")).expect("bound to a driver");
    assert!(
        now.ends_with(driver),
        "{}: bound to {now:?}, not {driver}",
        c.bdf
    );
}

/// Gives the controller back to vfio-pci when dropped (also when the test fails).
struct BackToVfio(VmController);

impl Drop for BackToVfio {
    fn drop(&mut self) {
        bind(&self.0, "vfio-pci");
    }
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_fio_engine_then_kernel_io_uring_on_the_same_controller() {
    let c = vm::controller("mdts0").expect("VM guest");
    let job = [
        "--name=randread",
        "--rw=randread",
        "--bs=4k",
        "--iodepth=16",
        "--size=16M",
    ];
    let user = assert_clean(&run_engine(&c, &job), false);

    // The same controller through the kernel's nvme driver (built in) and io_uring.
    bind(&c, "nvme");
    let _back = BackToVfio(c.clone());
    let nvme = Path::new("/sys/bus/pci/devices").join(&c.bdf).join("nvme");
    let start = Instant::now();
    let dev = loop {
        let found = std::fs::read_dir(&nvme).ok().and_then(|mut d| {
            d.find_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        });
        if let Some(n) = found
            .map(|n| format!("/dev/{n}n1"))
            .filter(|p| Path::new(p).exists())
        {
            break n;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no block device for {}",
            c.bdf
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let file = format!("--filename={dev}");
    let mut args = vec!["--ioengine=io_uring", "--direct=1", file.as_str()];
    args.extend(job);
    let kernel = assert_clean(&fio(&args), false);
    println!(
        "fio 4k randread QD 16, one boot: nvme-dio engine {:.0} IOPS, kernel io_uring {:.0} IOPS",
        user[0], kernel[0]
    );
}
