//! The data path on QEMU 7.2's NVMe in the VM guest (ci/vm-test): namespaces with `ms=8`/
//! `ms=16`, `mset=0/1`, `pi=1/2/3`, `pil=0/1` at 512 B and 4 KiB blocks (controllers
//! `meta512` and `meta4k`, ci/vm/README.md), through the same scenarios the emulator runs
//! (`nvme_dio_tests::datapath`): write, read back and compare data and metadata, single and
//! split; PRACT; a wrong guard refused; corrupted PI caught on read; Copy and Verify.
//! `#[ignore]`d on the host.

use std::sync::Arc;

use nvme_dio::{Controller, ControllerOptions, Error, Io, Lba, PiType, QueuePairOptions};
use nvme_dio_dma::VfioFunction;
use nvme_dio_tests::datapath;
use nvme_dio_tests::vm;

fn open(role: &str) -> Controller<VfioFunction> {
    let c =
        vm::controller(role).unwrap_or_else(|| panic!("no {role} controller: not in the VM guest"));
    let dev = VfioFunction::open(&c.bdf).unwrap_or_else(|e| panic!("{}: {e}", c.bdf));
    Controller::new(Arc::new(dev), ControllerOptions::default())
        .unwrap_or_else(|e| panic!("{}: {}", c.bdf, e.report()))
}

fn formats(role: &str, lba: u32) {
    let ctrl = open(role);
    let want = [
        (1, 8, false, None, false),
        (2, 8, true, None, false),
        (3, 8, false, Some(PiType::Type1), false),
        (4, 16, true, Some(PiType::Type2), true),
        (5, 16, false, Some(PiType::Type3), false),
        (6, 8, true, Some(PiType::Type1), true),
    ];
    for (nsid, ms, ext, kind, first) in want {
        let ns = ctrl.namespace(nsid).unwrap();
        assert_eq!(ns.lba_size(), lba);
        let f = ns
            .metadata_format()
            .unwrap_or_else(|| panic!("ns {nsid}: no metadata"));
        assert_eq!((f.size, f.extended), (ms, ext), "ns {nsid}");
        assert_eq!(f.pi.map(|p| p.kind), kind, "ns {nsid}");
        if let Some(p) = f.pi {
            assert_eq!(p.first, first, "ns {nsid}");
            assert_eq!(p.format, nvme_dio::PiFormat::Guard16, "ns {nsid}");
        }
    }
    assert!(ctrl.namespace(7).unwrap().metadata_format().is_none());
    let c = ctrl
        .namespace(7)
        .unwrap()
        .copy_limits()
        .expect("QEMU has Copy");
    assert_eq!((c.max_range_blocks, c.max_blocks, c.max_ranges), (4, 8, 2));
    assert!(ctrl.namespace(1).unwrap().supports_verify());
}

fn roundtrips(role: &str) {
    let ctrl = open(role);
    let mut qp = ctrl
        .create_io_qpair(QueuePairOptions::default().entries(64))
        .unwrap();
    for nsid in 1..=6 {
        let ns = ctrl.namespace(nsid).unwrap().clone();
        let one = datapath::roundtrip(&ctrl, &mut qp, &ns, 3, 2, 1);
        assert_eq!(one, 2, "{role} ns {nsid}: one command each way");
        let splits = qp.stats().split_requests;
        let n = datapath::roundtrip(&ctrl, &mut qp, &ns, 10, 40, 1);
        assert!(
            n > 2,
            "{role} ns {nsid}: 40 blocks over MDTS 2 split ({n} commands)"
        );
        assert_eq!(qp.stats().split_requests, splits + 2);
        datapath::roundtrip(&ctrl, &mut qp, &ns, 60, 24, 3);
    }
}

fn protection(role: &str) {
    // Each refused or failed command is an error completion QEMU traces.
    vm::expect_trace_err("pci_nvme_err_req_status");
    let ctrl = open(role);
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    for nsid in 3..=6 {
        let ns = ctrl.namespace(nsid).unwrap().clone();
        datapath::pract_write_reads_back_valid_pi(&ctrl, &mut qp, &ns, 100, 4);
        datapath::wrong_guard_write_is_refused(&ctrl, &mut qp, &ns, 120);
        datapath::corrupted_pi_fails_the_read(&ctrl, &mut qp, &ns, 130);
        // Verify: the PRACT-written blocks (application tag 0x0bad) pass with every check;
        // the corrupted guard fails.
        let good = datapath::check_all(&ns, 0x0bad).unwrap();
        let (r, _) = datapath::run(&mut qp, Io::verify_pi(&ns, Lba(100), 4, good), 11);
        r.unwrap_or_else(|e| panic!("{role} ns {nsid}: verify: {}", e.report()));
        let checks = datapath::check_all(&ns, 0x0042).unwrap();
        let (r, _) = datapath::run(&mut qp, Io::verify_pi(&ns, Lba(130), 1, checks), 12);
        assert!(
            matches!(r, Err(Error::GuardCheck { .. })),
            "{role} ns {nsid}: verify of a corrupted block: {r:?}"
        );
    }
}

fn copy(role: &str) {
    let ctrl = open(role);
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    // Namespace 7: MSSRL 4, MCL 8, MSRC 2 ranges: 13 blocks go as 4+4 | 2+3.
    let ns = ctrl.namespace(7).unwrap().clone();
    let l = ns.lba_size() as usize;
    let data = nvme_dio_tests::io::pattern(ns.lba_size(), 0, 5, 13 * l);
    let b = ctrl.memory().alloc(data.len(), 4096).unwrap();
    b.copy_from_slice(0, &data).unwrap();
    datapath::run(&mut qp, Io::write(&ns, Lba(0), b), 1)
        .0
        .unwrap();
    let ranges = [(Lba(0), 10), (Lba(10), 3)];
    let before = qp.stats().commands;
    let (r, _) = datapath::run(&mut qp, Io::copy(&ns, &ranges, Lba(500)), 2);
    r.unwrap_or_else(|e| panic!("{role}: copy: {}", e.report()));
    assert_eq!(qp.stats().commands - before, 2, "{role}: two Copy commands");
    let out = ctrl.memory().alloc(data.len(), 4096).unwrap();
    let (r, bufs) = datapath::run(&mut qp, Io::read(&ns, Lba(500), out), 3);
    r.unwrap();
    assert!(
        nvme_dio_tests::io::gather(&bufs.into_vec()) == data,
        "{role}: copied data"
    );
    // With metadata: the separate metadata is copied with its blocks.
    let ns = ctrl.namespace(1).unwrap().clone();
    let src = datapath::Blocks::pattern(&ns, 200, 4, 9, 0);
    datapath::write_blocks(&ctrl, &mut qp, &ns, 200, &src, 1, None).unwrap();
    let (r, _) = datapath::run(&mut qp, Io::copy(&ns, &[(Lba(200), 4)], Lba(300)), 4);
    r.unwrap_or_else(|e| panic!("{role}: copy with metadata: {}", e.report()));
    let got = datapath::read_blocks(&ctrl, &mut qp, &ns, 300, 4, 1, None).unwrap();
    assert!(got == src, "{role}: copied data and metadata");
}

macro_rules! vm_tests {
    ($($name:ident => $f:ident($($arg:expr),*);)*) => {$(
        #[test]
        #[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
        fn $name() {
            $f($($arg),*);
        }
    )*};
}

vm_tests! {
    vm_datapath_formats_512 => formats("meta512", 512);
    vm_datapath_formats_4k => formats("meta4k", 4096);
    vm_datapath_roundtrips_512 => roundtrips("meta512");
    vm_datapath_roundtrips_4k => roundtrips("meta4k");
    vm_datapath_protection_512 => protection("meta512");
    vm_datapath_protection_4k => protection("meta4k");
    vm_datapath_copy_512 => copy("meta512");
    vm_datapath_copy_4k => copy("meta4k");
}

fn cli(args: &[&str]) -> String {
    let out = std::process::Command::new("/bin/nvme-dio")
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
fn vm_datapath_cli_identify_shows_the_format_and_bench_runs_on_pi() {
    let c = vm::controller("meta512").expect("VM guest");
    let out = cli(&["identify", "--device", &c.bdf]);
    assert!(
        out.contains("8 B separate, PI type 1 (16-bit guard, last bytes)"),
        "{out}"
    );
    assert!(
        out.contains("16 B extended, PI type 2 (16-bit guard, first bytes)"),
        "{out}"
    );
    // Namespace 6: PI type 1, extended, the metadata only the tuple: PRACT, no option.
    let out = cli(&[
        "bench", "--device", &c.bdf, "--nsid", "6", "--verify", "-w", "randrw", "-M", "50", "-o",
        "4k", "-q", "8", "-t", "3", "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("bench --json is JSON");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["verify"]["mismatches"], 0, "{v}");
    assert!(v["verify"]["checked_blocks"].as_u64().unwrap() > 0, "{v}");
}
