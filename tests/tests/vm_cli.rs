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
