//! The nvme-cli and setup.sh side of `nvme-dio`, end to end: `identify` (every field, JSON,
//! raw pages), `list`, `plot`, `setup` / `reset` / `setup status` (against fake sysfs trees
//! where the machine would change). Each run is bounded by a hang detector.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs nvme-dio with `env`, capturing both streams; kills it and fails after 60 s.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nvme-dio"));
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("run nvme-dio");
    let (mut o, mut e) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let ro = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut o, &mut s).unwrap();
        s
    });
    let re = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut s).unwrap();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nvme-dio {args:?} hung (killed after 60 s)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: ro.join().unwrap(),
        stderr: re.join().unwrap(),
    }
}

fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs, asserts success, returns stdout.
fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "nvme-dio {args:?} failed: {}",
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// Asserts the run fails with `code` and stderr holding every needle, without a panic.
fn refused(args: &[&str], code: i32, needles: &[&str]) {
    let o = run(args);
    let e = text(&o.stderr);
    assert!(!e.contains("panicked"), "{args:?} panicked:\n{e}");
    assert_eq!(o.status.code(), Some(code), "{args:?}: {e}");
    for n in needles {
        assert!(e.contains(n), "{args:?}: stderr lacks {n:?}:\n{e}");
    }
}

#[test]
fn identify_prints_every_controller_and_namespace_field_as_nvme_cli_does() {
    let out = ok(&["identify", "--device", "emu:ram:512"]);
    // The summary first, then the pages.
    assert!(out.starts_with("controller emu:ram:512 (EMULATED"), "{out}");
    for line in [
        "Identify Controller (CNS 01h)",
        "  vid       : 0x1b36",
        "  sn        : deadbeef",
        "  mn        : nvme-dio emulated controller",
        "  mdts      : 7",
        "  ver       : 0x10400",
        "  sqes      : 0x66",
        "  cqes      : 0x44",
        "  nn        : 1",
        "  oncs      : 0xc  (Dataset Management, Write Zeroes)",
        "  vwc       : 0x7  (volatile write cache present)",
        "  ps    0 : mp:25.00W operational",
        "Identify Namespace 1 (CNS 00h)",
        "  nsze     : 131072",
        "  dlfeat   : 0x1",
        "  lbaf  0 : ms:0   lbads:9  rp:0 (Best) (in use)",
    ] {
        assert!(out.contains(line), "missing {line:?}:\n{out}");
    }
    // Every field nvme-cli's id-ctrl prints for a PCIe controller is there.
    for f in [
        "ssvid",
        "fr",
        "rab",
        "ieee",
        "cmic",
        "cntlid",
        "rtd3r",
        "rtd3e",
        "oaes",
        "ctratt",
        "rrls",
        "cntrltype",
        "fguid",
        "crdt1",
        "crdt2",
        "crdt3",
        "nvmsr",
        "vwci",
        "mec",
        "oacs",
        "acl",
        "aerl",
        "frmw",
        "lpa",
        "elpe",
        "npss",
        "avscc",
        "apsta",
        "wctemp",
        "cctemp",
        "mtfa",
        "hmpre",
        "hmmin",
        "tnvmcap",
        "unvmcap",
        "rpmbs",
        "edstt",
        "dsto",
        "fwug",
        "kas",
        "hctma",
        "mntmt",
        "mxtmt",
        "sanicap",
        "hmminds",
        "hmmaxd",
        "nsetidmax",
        "endgidmax",
        "anatt",
        "anacap",
        "anagrpmax",
        "nanagrpid",
        "pels",
        "domainid",
        "megcap",
        "maxcmd",
        "fuses",
        "fna",
        "awun",
        "awupf",
        "icsvscc",
        "nwpc",
        "acwu",
        "ocfs",
        "sgls",
        "mnan",
        "maxdna",
        "maxcna",
        "subnqn",
        "ioccsz",
        "iorcsz",
        "icdoff",
        "fcatt",
        "msdbd",
        "ofcs",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("  {f:<9} : "))),
            "id-ctrl field {f} missing:\n{out}"
        );
    }
    for f in [
        "ncap", "nuse", "nsfeat", "nlbaf", "flbas", "mc", "dpc", "dps", "nmic", "rescap", "fpi",
        "nawun", "nawupf", "nacwu", "nabsn", "nabo", "nabspf", "noiob", "nvmcap", "npwg", "npwa",
        "npdg", "npda", "nows", "mssrl", "mcl", "msrc", "nulbaf", "anagrpid", "nsattr", "nvmsetid",
        "endgid", "nguid", "eui64",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("  {f:<8} : "))),
            "id-ns field {f} missing:\n{out}"
        );
    }
}

#[test]
fn identify_json_carries_the_fields_power_states_and_lba_formats() {
    let v: Value = serde_json::from_str(&ok(&["identify", "--json"])).unwrap();
    let c = &v["identify_controller"];
    assert_eq!(c["vid"], 0x1b36);
    assert_eq!(c["sn"], "deadbeef");
    assert_eq!(c["mdts"], 7);
    assert_eq!(c["nn"], 1);
    assert_eq!(c["sqes"], 0x66);
    assert_eq!(c["fguid"], "00000000000000000000000000000000");
    assert!(c["subnqn"].as_str().unwrap().starts_with("nqn."), "{c}");
    assert_eq!(v["power_states"].as_array().unwrap().len(), 1, "NPSS 0");
    assert_eq!(v["power_states"][0]["max_power_w"], 25.0);
    assert_eq!(v["power_states"][0]["operational"], true);
    let ns = &v["namespaces"][0];
    assert_eq!(ns["identify"]["nsze"], ns["blocks"]);
    assert_eq!(ns["identify"]["nlbaf"], 0);
    let f = &ns["lba_formats"][0];
    assert_eq!(
        (&f["data_bytes"], &f["lbads"], &f["in_use"]),
        (&Value::from(4096), &Value::from(12), &Value::from(true))
    );
    // The summary keys stay where they were.
    assert_eq!(v["emulated"], true);
    assert_eq!(ns["lba_size_bytes"], 4096);
}

#[test]
fn identify_raw_writes_the_pages_the_json_describes() {
    let o = run(&["identify", "--device", "emu:512", "--raw"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let b = o.stdout;
    assert_eq!(b.len(), 2 * 4096, "the controller page, then namespace 1's");
    assert_eq!(u16::from_le_bytes([b[0], b[1]]), 0x1b36, "VID");
    assert_eq!(&b[4..12], b"deadbeef", "SN");
    assert_eq!(b[512], 0x66, "SQES");
    let nsze = u64::from_le_bytes(b[4096..4104].try_into().unwrap());
    let v: Value =
        serde_json::from_str(&ok(&["identify", "--device", "emu:512", "--json"])).unwrap();
    assert_eq!(Value::from(nsze), v["namespaces"][0]["blocks"]);
    assert_eq!(b[4096 + 130], 9, "LBAF0 LBADS: 512-byte blocks");
    // nvme-cli's spelling, and one namespace only.
    let o = run(&["identify", "--raw-binary", "--nsid", "1"]);
    assert_eq!(o.stdout.len(), 8192, "{}", text(&o.stderr));
    let o = run(&["identify", "-b"]);
    assert_eq!(o.stdout.len(), 8192, "{}", text(&o.stderr));
}

#[test]
fn identify_refuses_a_missing_namespace_and_raw_with_json() {
    refused(
        &["identify", "--nsid", "2"],
        1,
        &["namespace 2 is not active on emu", "the active ones are 1"],
    );
    refused(
        &["identify", "--raw", "--json"],
        2,
        &["cannot be used with"],
    );
    refused(&["identify", "--nsid", "0"], 2, &["out of range"]);
}

/// A fake sysfs/procfs tree for the binary (`NVME_DIO_SYSFS_ROOT`), removed on drop.
struct Tree {
    root: std::path::PathBuf,
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Tree {
    fn new(name: &str) -> Tree {
        let root =
            std::env::temp_dir().join(format!("nvme-dio-tools-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in [
            "sys/bus/pci/devices",
            "sys/bus/pci/drivers",
            "sys/kernel/iommu_groups",
            "proc/self",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let t = Tree { root };
        t.file("proc/mounts", "/dev/vda / ext4 rw 0 0\n");
        t
    }

    fn file(&self, rel: &str, text: &str) {
        let p = self.root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn link(&self, rel: &str, target: &std::path::Path) {
        let p = self.root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(target, p).unwrap();
    }

    /// An NVMe controller (class 0x010802) with a driver and an IOMMU group of its own.
    fn nvme(&self, bdf: &str, driver: Option<&str>, group: u32) {
        let d = format!("sys/bus/pci/devices/{bdf}");
        self.file(&format!("{d}/class"), "0x010802\n");
        self.file(&format!("{d}/vendor"), "0x1b36\n");
        self.file(&format!("{d}/device"), "0x0010\n");
        self.file(&format!("{d}/numa_node"), "0\n");
        self.file(&format!("{d}/driver_override"), "(null)\n");
        for drv in ["nvme", "vfio-pci"] {
            std::fs::create_dir_all(self.root.join("sys/bus/pci/drivers").join(drv)).unwrap();
        }
        if let Some(drv) = driver {
            self.link(
                &format!("{d}/driver"),
                &self.root.join("sys/bus/pci/drivers").join(drv),
            );
        }
        let g = self.root.join(format!("sys/kernel/iommu_groups/{group}"));
        std::fs::create_dir_all(g.join("devices")).unwrap();
        self.link(&format!("{d}/iommu_group"), &g);
        self.link(
            &format!("sys/kernel/iommu_groups/{group}/devices/{bdf}"),
            &self.root.join(&d),
        );
    }

    /// What the kernel's nvme driver publishes for controller `nvme<ctrl>` and its namespace 1.
    fn kernel(&self, bdf: &str, ctrl: u32, model: &str, serial: &str, bytes: u64) {
        let d = format!("sys/bus/pci/devices/{bdf}/nvme/nvme{ctrl}");
        self.file(&format!("{d}/model"), &format!("{model:<40}\n"));
        self.file(&format!("{d}/serial"), &format!("{serial:<20}\n"));
        self.file(&format!("{d}/firmware_rev"), "8.0.0   \n");
        let ns = format!("nvme{ctrl}n1");
        std::fs::create_dir_all(self.root.join(format!("{d}/{ns}"))).unwrap();
        let b = format!("sys/class/block/{ns}");
        self.file(&format!("{b}/size"), &format!("{}\n", bytes / 512));
        self.file(&format!("{b}/queue/logical_block_size"), "4096\n");
        self.file(&format!("{b}/nsid"), "1\n");
    }

    fn run(&self, args: &[&str]) -> Output {
        run_env(
            args,
            &[("NVME_DIO_SYSFS_ROOT", self.root.to_str().unwrap())],
        )
    }
}

#[test]
fn list_shows_model_serial_firmware_capacity_and_driver_as_nvme_list_does() {
    let t = Tree::new("list");
    t.nvme("0000:01:00.0", Some("nvme"), 3);
    t.kernel("0000:01:00.0", 0, "QEMU NVMe Ctrl", "dflt0001", 64 << 20);
    t.nvme("0000:02:00.0", Some("vfio-pci"), 4);
    let o = t.run(&["list"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let l: Vec<&str> = out.lines().collect();
    assert!(
        l[0].starts_with("address")
            && ["driver", "model", "serial", "firmware", "capacity"]
                .iter()
                .all(|h| l[0].contains(h)),
        "{out}"
    );
    for want in [
        "0000:01:00.0",
        "nvme",
        "QEMU NVMe Ctrl",
        "dflt0001",
        "8.0.0",
        "67.11 MB",
    ] {
        assert!(l[1].contains(want), "{want:?}: {out}");
    }
    assert!(l[2].contains("namespace 1 /dev/nvme0n1: 67.11 MB (16384 blocks of 4096 bytes)"));
    // Bound to vfio-pci: read through VFIO, which this host does not have: the reason.
    assert!(
        l[3].contains("0000:02:00.0") && l[3].contains("vfio-pci"),
        "{out}"
    );
    assert!(l[4].contains("cannot read Identify"), "{out}");
    let o = t.run(&["list", "--json", "--no-open"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["model"], "QEMU NVMe Ctrl");
    assert_eq!(v[0]["serial"], "dflt0001");
    assert_eq!(v[0]["firmware"], "8.0.0");
    assert_eq!(v[0]["capacity_bytes"], 64 << 20);
    assert_eq!(v[0]["driver"], "nvme");
    assert_eq!(v[0]["source"], "sysfs");
    assert_eq!(v[1]["driver"], "vfio-pci");
    assert!(v[1]["model"].is_null(), "{v}");
    assert!(v[1]["note"].as_str().unwrap().contains("--no-open"), "{v}");
}
