//! The `nvme-dio` command through VFIO in the VM guest (ci/vm-test puts it in /bin): list,
//! identify, and a verified soak bench with several queue pairs and split-forcing segments.
//! `#[ignore]`d on the host; the guest runs them with `--include-ignored`.

use std::process::Command;

use nvme_dio_tests::vm;

fn nvme_dio(args: &[&str]) -> String {
    let out = Command::new("/bin/nvme-dio")
        .args(args)
        .output()
        .expect("/bin/nvme-dio (only in the VM guest)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("$ nvme-dio {}\n{stdout}{stderr}", args.join(" "));
    assert!(
        out.status.success(),
        "nvme-dio {args:?} failed: {stderr}\n{stdout}"
    );
    stdout
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_cli_list_shows_every_controller_bound_to_vfio() {
    let m = vm::matrix().expect("VM guest");
    let out = nvme_dio(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("list --json is JSON");
    let text = v.to_string();
    // The hotplug controller may already be unplugged by the driver suite's removal test.
    for c in m.iter().filter(|c| c.role != "hotplug") {
        assert!(text.contains(&c.bdf), "{} missing from {text}", c.bdf);
    }
    assert!(text.contains("vfio-pci"), "{text}");
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_cli_identify_reports_what_qemu_was_told() {
    let c = vm::controller("ns512").expect("VM guest");
    let out = nvme_dio(&["identify", "--device", &c.bdf, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("identify --json is JSON");
    let text = v.to_string();
    assert!(text.contains(&c.serial), "{text}");
    assert!(text.contains("QEMU NVMe Ctrl"), "{text}");
    for ns in &c.namespaces {
        assert!(
            text.contains(&ns.blocks.to_string()),
            "namespace {} size missing: {text}",
            ns.nsid
        );
    }
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_cli_soak_bench_verify_mixed_random_with_splits_loses_nothing() {
    let c = vm::controller("default").expect("VM guest");
    let out = nvme_dio(&[
        "bench",
        "--device",
        &c.bdf,
        "--verify",
        "-w",
        "randrw",
        "-M",
        "50",
        "-o",
        "12k",
        "--segments",
        "3",
        // QEMU takes SGLs, which would carry the 3 segments as one command: force PRP splits.
        "--no-sgl",
        "--queues",
        "2",
        "-q",
        "16",
        "-t",
        "5",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("bench --json is JSON");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["verify"]["mismatches"], 0, "{v}");
    assert!(v["verify"]["checked_blocks"].as_u64().unwrap() > 0, "{v}");
    let queues = v["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 2);
    for q in queues {
        assert_eq!(q["submitted"], q["completed"], "a request was lost: {q}");
        assert!(
            q["split_requests"].as_u64().unwrap() > 0,
            "segments force splits: {q}"
        );
    }
}

/// SPDK perf's reach through VFIO: two QEMU controllers in one run on a core mask (one
/// pinned worker per core), two queue pairs per namespace, the per device x core table.
#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_cli_bench_two_controllers_on_a_core_mask_has_a_row_per_device_and_core() {
    let a = vm::controller("default").expect("VM guest");
    let b = vm::controller("ns512").expect("VM guest");
    let out = nvme_dio(&[
        "bench", "--device", &a.bdf, "--device", &b.bdf, "-c", "0x3", "-P", "2", "-q", "8",
        "--ios", "4000", "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("bench --json is JSON");
    assert_eq!(v["errors"], 0, "{v}");
    let table = v["table"].as_array().unwrap();
    assert_eq!(table.len(), 2, "{v}");
    assert_eq!(table[0]["device"], a.bdf.as_str(), "{v}");
    assert_eq!(table[0]["core"], 0, "{v}");
    assert_eq!(table[1]["device"], b.bdf.as_str(), "{v}");
    assert_eq!(table[1]["core"], 1, "{v}");
    let sum: u64 = table.iter().map(|r| r["ios"].as_u64().unwrap()).sum();
    assert_eq!(sum, 4000, "{v}");
    assert_eq!(v["total"]["ios"], 4000, "{v}");
    let queues = v["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 4, "{v}");
    for q in queues {
        assert_eq!(q["submitted"], q["completed"], "a request was lost: {q}");
    }
    // The text form carries SPDK perf's table.
    let text = nvme_dio(&[
        "bench", "--device", &a.bdf, "--device", &b.bdf, "-c", "0x3", "--ios", "2000",
    ]);
    assert!(
        text.contains(&format!("{} NSID 1 from core  0", a.bdf))
            && text.contains(&format!("{} NSID 1 from core  1", b.bdf)),
        "{text}"
    );
}

/// fio's workload language through VFIO on QEMU's controller: trim, write zeroes with FUA,
/// a Flush every N writes, mixed sizes and a zipf hot set, all inside one 8 MiB range (the
/// backing file is shared by the run's tests), and the CPU split of an irq-mode run.
#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_cli_bench_fio_workloads_run_through_vfio() {
    let c = vm::controller("default").expect("VM guest");
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut a = vec![
            "bench", "--device", &c.bdf, "--offset", "56m", "--size", "8m", "--ios", "2000",
            "--json",
        ];
        a.extend_from_slice(extra);
        let v: serde_json::Value =
            serde_json::from_str(&nvme_dio(&a)).expect("bench --json is JSON");
        assert_eq!(v["errors"], 0, "{extra:?}: {v}");
        assert_eq!(v["ios"], 2000, "{extra:?}: {v}");
        assert_eq!(v["settings"]["offset_bytes"], 56u64 << 20, "{v}");
        v
    };
    run(&["-w", "randtrim", "-q", "8"]);
    run(&["-w", "randwritezeroes", "--fua", "-q", "8"]);
    let v = run(&["-w", "randwrite", "--fsync", "8", "-q", "1"]);
    assert_eq!(
        v["flushes"]["count"], 249,
        "after writes 8, 16, ..., 1992: {v}"
    );
    let v = run(&[
        "-w",
        "randrw",
        "--bssplit",
        "4k/50:64k/50",
        "--random_distribution",
        "zipf:1.2",
    ]);
    assert!(
        v["read"]["ios"].as_u64().unwrap() > 0 && v["write"]["ios"].as_u64().unwrap() > 0,
        "{v}"
    );
    let bytes = v["bytes"].as_u64().unwrap();
    assert!(bytes > 2000 * 4096 && bytes < 2000 * 65536, "{v}");
    // Interrupt mode through MSI-X: the worker's time is split into user and system.
    let v = run(&["--mode", "irq", "-q", "1"]);
    let cpu = &v["cpu"];
    assert!(
        cpu["user_ns_per_io"].as_f64().unwrap() + cpu["system_ns_per_io"].as_f64().unwrap() > 0.0,
        "{v}"
    );
}
