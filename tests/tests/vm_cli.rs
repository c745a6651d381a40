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

/// Runs `/bin/nvme-dio` and returns its raw standard output (for `identify --raw`).
fn nvme_dio_bytes(args: &[&str]) -> Vec<u8> {
    let out = Command::new("/bin/nvme-dio")
        .args(args)
        .output()
        .expect("/bin/nvme-dio (only in the VM guest)");
    assert!(
        out.status.success(),
        "nvme-dio {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_cli_identify_prints_qemus_whole_pages_as_nvme_cli_does() {
    let c = vm::controller("ns512").expect("VM guest");
    let v: serde_json::Value =
        serde_json::from_str(&nvme_dio(&["identify", "--device", &c.bdf, "--json"]))
            .expect("identify --json is JSON");
    let id = &v["identify_controller"];
    assert_eq!(id["vid"], 0x1b36, "{id}");
    assert_eq!(id["sn"], c.serial.as_str(), "{id}");
    assert_eq!(id["mn"], "QEMU NVMe Ctrl", "{id}");
    assert_eq!(id["mdts"], c.mdts, "{id}");
    assert_eq!(id["sqes"], 0x66, "{id}");
    assert!(id["subnqn"].as_str().unwrap().starts_with("nqn."), "{id}");
    assert!(!v["power_states"].as_array().unwrap().is_empty(), "{v}");
    let namespaces = v["namespaces"].as_array().unwrap();
    assert_eq!(namespaces.len(), c.namespaces.len(), "{v}");
    for (n, want) in namespaces.iter().zip(&c.namespaces) {
        assert_eq!(n["identify"]["nsze"], want.blocks, "{n}");
        let formats = n["lba_formats"].as_array().unwrap();
        assert!(formats.len() > 1, "QEMU lists several LBA formats: {n}");
        let used: Vec<_> = formats.iter().filter(|f| f["in_use"] == true).collect();
        assert_eq!(used.len(), 1, "{n}");
        assert_eq!(used[0]["data_bytes"], c.lba_size, "{n}");
    }
    let text = nvme_dio(&["identify", "--device", &c.bdf]);
    for line in [
        "Identify Controller (CNS 01h)",
        "  mn        : QEMU NVMe Ctrl",
        "Identify Namespace 2 (CNS 00h)",
        "(in use)",
    ] {
        assert!(text.contains(line), "missing {line:?}");
    }
    let raw = nvme_dio_bytes(&["identify", "--device", &c.bdf, "--raw"]);
    assert_eq!(raw.len(), 4096 * (1 + c.namespaces.len()));
    assert_eq!(u16::from_le_bytes([raw[0], raw[1]]), 0x1b36);
    assert_eq!(&raw[4..4 + c.serial.len()], c.serial.as_bytes());
    let nsze = u64::from_le_bytes(raw[4096..4104].try_into().unwrap());
    assert_eq!(nsze, c.namespaces[0].blocks);
}

/// `nvme-dio list --json`, parsed.
fn list_json() -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&nvme_dio(&["list", "--json"])).expect("list --json is JSON");
    v.as_array().expect("a list").clone()
}

fn entry<'a>(l: &'a [serde_json::Value], bdf: &str) -> &'a serde_json::Value {
    l.iter()
        .find(|e| e["address"] == bdf)
        .unwrap_or_else(|| panic!("{bdf} not listed: {l:?}"))
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_cli_list_shows_model_serial_and_capacity_for_vfio_and_kernel_bound_controllers() {
    let m = vm::matrix().expect("VM guest");
    // Every controller is bound to vfio-pci: list reads Identify through VFIO.
    let l = list_json();
    for c in m.iter().filter(|c| c.role != "hotplug") {
        let e = entry(&l, &c.bdf);
        assert_eq!(e["driver"], "vfio-pci", "{e}");
        assert_eq!(e["source"], "identify", "{e}");
        assert_eq!(e["model"], "QEMU NVMe Ctrl", "{e}");
        assert_eq!(e["serial"], c.serial.as_str(), "{e}");
        let bytes: u64 = c
            .namespaces
            .iter()
            .map(|n| n.blocks * c.lba_size as u64)
            .sum();
        assert_eq!(e["capacity_bytes"], bytes, "{e}");
    }
    // Give one to the kernel's nvme driver: list then reads sysfs, as `nvme list` does.
    let c = vm::controller("msix2").expect("VM guest");
    nvme_dio(&["reset", &c.bdf]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let e = loop {
        // The kernel probes asynchronously: its namespaces appear a moment after the bind.
        let l = list_json();
        let e = entry(&l, &c.bdf).clone();
        if e["namespaces"].as_array().is_some_and(|n| !n.is_empty()) {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the kernel never published {}'s namespaces: {e}",
            c.bdf
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let back = nvme_dio(&["setup", &c.bdf]);
    assert_eq!(e["driver"], "nvme", "{e}");
    assert_eq!(e["source"], "sysfs", "{e}");
    assert_eq!(e["model"], "QEMU NVMe Ctrl", "{e}");
    assert_eq!(e["serial"], c.serial.as_str(), "{e}");
    assert_eq!(
        e["capacity_bytes"],
        c.namespaces[0].blocks * c.lba_size as u64,
        "{e}"
    );
    assert_eq!(e["namespaces"][0]["lba_size"], c.lba_size, "{e}");
    assert!(
        e["namespaces"][0]["block_device"]
            .as_str()
            .is_some_and(|b| b.starts_with("nvme")),
        "{e}"
    );
    assert!(back.contains("vfio-pci"), "{back}");
    assert_eq!(entry(&list_json(), &c.bdf)["driver"], "vfio-pci");
}

/// `nvme-dio setup status --json`, parsed; the entry of `bdf`.
fn status_of(bdf: &str) -> (serde_json::Value, serde_json::Value) {
    let v: serde_json::Value = serde_json::from_str(&nvme_dio(&["setup", "status", "--json"]))
        .expect("setup status --json is JSON");
    let c = v["controllers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == bdf)
        .unwrap_or_else(|| panic!("{bdf} not in setup status: {v}"))
        .clone();
    (v, c)
}

/// Waits until the kernel's nvme driver has published `bdf`'s namespaces (it probes
/// asynchronously after the bind).
fn wait_for_kernel_namespaces(bdf: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let l = list_json();
        if entry(&l, bdf)["namespaces"]
            .as_array()
            .is_some_and(|n| !n.is_empty())
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("the kernel never published {bdf}'s namespaces");
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_cli_setup_binds_every_idle_controller_status_shows_it_and_reset_gives_it_back() {
    let c = vm::controller("msix2").expect("VM guest");
    // Start from the kernel's nvme driver, as on a machine that just booted.
    nvme_dio(&["reset", &c.bdf]);
    wait_for_kernel_namespaces(&c.bdf);
    let (v, s) = status_of(&c.bdf);
    assert_eq!(v["vfio_pci_loaded"], true, "{v}");
    assert!(
        v["hugepages"][0]["total"].as_u64().unwrap() >= 64,
        "the harness reserves 64: {v}"
    );
    assert_eq!(s["driver"], "nvme", "{s}");
    assert_eq!(s["set_up_by_nvme_dio"], false, "{s}");
    assert!(s["in_use"].as_array().unwrap().is_empty(), "{s}");

    // No address: every controller not in use; the others are vfio-pci already.
    let out = nvme_dio(&["setup"]);
    assert!(
        out.contains(&format!("{}: nvme -> vfio-pci", c.bdf)),
        "{out}"
    );
    let default = vm::controller("default").unwrap();
    assert!(
        out.contains(&format!("{} is already bound to vfio-pci", default.bdf)),
        "{out}"
    );
    let (_, s) = status_of(&c.bdf);
    assert_eq!(s["driver"], "vfio-pci", "{s}");
    assert_eq!(s["set_up_by_nvme_dio"], true, "{s}");
    assert_eq!(s["driver_before"], "nvme", "{s}");
    let (_, d) = status_of(&default.bdf);
    assert_eq!(
        d["set_up_by_nvme_dio"], false,
        "bound by the harness, not setup: {d}"
    );
    // The controller works through VFIO after setup bound it.
    let id = nvme_dio(&["identify", "--device", &c.bdf, "--json"]);
    assert!(id.contains(&c.serial), "{id}");

    // reset with no address: exactly what setup bound goes back.
    let out = nvme_dio(&["reset"]);
    assert!(
        out.contains(&format!("{}: vfio-pci -> nvme", c.bdf)),
        "{out}"
    );
    assert!(!out.contains(&default.bdf), "{out}");
    let (_, s) = status_of(&c.bdf);
    assert_eq!(s["driver"], "nvme", "{s}");
    assert_eq!(s["set_up_by_nvme_dio"], false, "{s}");
    assert_eq!(status_of(&default.bdf).1["driver"], "vfio-pci");
    assert!(nvme_dio(&["reset"]).contains("nothing to reset"));

    // Hugepages alone, on a NUMA node when the guest kernel has them: binds nothing.
    let (v, _) = status_of(&c.bdf);
    if let Some(node) = v["hugepages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == 0)
    {
        let have = node["total"].as_u64().unwrap();
        let out = nvme_dio(&["setup", "--hugepages-node", &format!("0:{have}")]);
        assert!(out.contains("hugepages on NUMA node 0"), "{out}");
        assert_eq!(status_of(&c.bdf).1["driver"], "nvme");
    } else {
        println!("no NUMA node 0 in the guest's sysfs: --hugepages-node not exercised here");
    }

    // Leave it as the matrix promises the later tests: bound to vfio-pci.
    wait_for_kernel_namespaces(&c.bdf);
    nvme_dio(&["setup", &c.bdf]);
    assert_eq!(status_of(&c.bdf).1["driver"], "vfio-pci");
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
