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
        "  nn        : 1024",
        "  oncs      : 0x10c  (Dataset Management, Write Zeroes, Copy)",
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
    assert_eq!(c["nn"], 1024);
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

/// A directory for the plot files (cargo's target dir).
fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tools-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An 8-bit, non-interlaced PNG decoded to RGBA: what rsvg-convert writes.
struct Image {
    width: usize,
    height: usize,
    rgba: Vec<[u8; 4]>,
}

fn decode_png(b: &[u8]) -> Image {
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (mut pos, mut idat) = (8, Vec::new());
    let (mut width, mut height, mut channels) = (0, 0, 0);
    while pos + 8 <= b.len() {
        let len = u32::from_be_bytes(b[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = &b[pos + 4..pos + 8];
        let data = &b[pos + 8..pos + 8 + len];
        match kind {
            b"IHDR" => {
                width = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
                height = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
                assert_eq!(data[8], 8, "8-bit samples");
                channels = match data[9] {
                    0 => 1,
                    2 => 3,
                    4 => 2,
                    6 => 4,
                    t => panic!("PNG colour type {t}"),
                };
                assert_eq!(data[12], 0, "not interlaced");
            }
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => break,
            _ => {}
        }
        pos += 12 + len;
    }
    let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&idat).expect("PNG data inflates");
    let stride = width * channels;
    assert_eq!(raw.len(), height * (stride + 1), "PNG data size");
    let mut px = vec![0u8; height * stride];
    for y in 0..height {
        let filter = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        for x in 0..stride {
            let a = if x >= channels {
                px[y * stride + x - channels]
            } else {
                0
            } as i32;
            let up = if y > 0 { px[(y - 1) * stride + x] } else { 0 } as i32;
            let c = if x >= channels && y > 0 {
                px[(y - 1) * stride + x - channels]
            } else {
                0
            } as i32;
            let pred = match filter {
                0 => 0,
                1 => a,
                2 => up,
                3 => (a + up) / 2,
                4 => {
                    let p = a + up - c;
                    let (pa, pb, pc) = ((p - a).abs(), (p - up).abs(), (p - c).abs());
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        up
                    } else {
                        c
                    }
                }
                f => panic!("PNG filter {f}"),
            };
            px[y * stride + x] = (line[x] as i32 + pred) as u8;
        }
    }
    let rgba = px
        .chunks_exact(channels)
        .map(|p| match channels {
            1 => [p[0], p[0], p[0], 255],
            2 => [p[0], p[0], p[0], p[1]],
            3 => [p[0], p[1], p[2], 255],
            _ => [p[0], p[1], p[2], p[3]],
        })
        .collect();
    Image {
        width,
        height,
        rgba,
    }
}

/// The share of pixels that are drawn (not transparent, not near white).
fn ink_share(img: &Image) -> f64 {
    let ink = img
        .rgba
        .iter()
        .filter(|p| p[3] > 0 && (p[0] < 200 || p[1] < 200 || p[2] < 200))
        .count();
    ink as f64 / (img.width * img.height) as f64
}

/// Renders `svg` with rsvg-convert (librsvg, as a browser's engine would draw it). A missing
/// renderer fails the test: `.ci/run` installs it (apt `librsvg2-bin`).
fn render_png(svg: &std::path::Path) -> Image {
    let png = svg.with_extension("png");
    let o = Command::new("rsvg-convert")
        .arg(svg)
        .arg("-o")
        .arg(&png)
        .output()
        .unwrap_or_else(|e| {
            panic!("rsvg-convert is needed to check the SVG ({e}): apt-get install librsvg2-bin (.ci/run installs it)")
        });
    assert!(
        o.status.success(),
        "rsvg-convert refused {}: {}",
        svg.display(),
        text(&o.stderr)
    );
    decode_png(&std::fs::read(&png).expect("rsvg-convert wrote the PNG"))
}

#[test]
fn plot_overlays_runs_and_renders_to_a_picture_that_is_not_blank() {
    let d = scratch("plot");
    for (name, qd) in [("qd1", "1"), ("qd32", "32")] {
        let o = run(&["bench", "--ios", "20000", "-q", qd, "--json"]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        std::fs::write(d.join(format!("{name}.json")), &o.stdout).unwrap();
    }
    // A run that carries histogram bins per direction, as the bench's JSON does with
    // `latency_histogram_ns` (a mixed workload: read and write).
    let bins = |scale: f64| -> Value {
        (0..40)
            .map(|i| {
                let le = (1000.0 * scale * 1.25f64.powi(i)) as u64;
                let count = (100.0 * (-((i as f64 - 15.0) / 5.0).powi(2)).exp()) as u64 + 1;
                serde_json::json!({"le_ns": le, "count": count})
            })
            .collect()
    };
    let mixed = serde_json::json!({
        "device": "fixture", "iops": 1.0e5,
        "settings": {"workload": "randrw", "io_size_bytes": 4096, "queue_depth": 8},
        "latency": {"p50_ns": 30000, "p99_ns": 90000},
        "read": {"latency_histogram_ns": bins(1.0)},
        "write": {"latency_histogram_ns": bins(3.0)},
    });
    std::fs::write(d.join("mixed.json"), mixed.to_string()).unwrap();
    let svg = d.join("cmp.svg");
    let files = ["qd1.json", "qd32.json", "mixed.json"].map(|f| d.join(f));
    let mut args = vec!["plot".to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    args.extend(["-o".into(), svg.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&args);
    assert!(out.contains("4 series from 3 file(s)"), "{out}");
    let s = std::fs::read_to_string(&svg).unwrap();
    for want in [
        "qd1: randread 4k QD 1 emu",
        "qd32: randread 4k QD 32 emu",
        "mixed (read): randrw 4k QD 8 fixture",
        "mixed (write)",
        "latency (log scale)",
        "99.9%",
    ] {
        assert!(s.contains(want), "{want:?} missing from the SVG");
    }

    // The checks below tell a drawing from a blank page: a blank SVG has no ink.
    let blank = d.join("blank.svg");
    std::fs::write(
        &blank,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="960" height="800"><rect width="960" height="800" fill="white"/></svg>"#,
    )
    .unwrap();
    assert_eq!(ink_share(&render_png(&blank)), 0.0);

    let img = render_png(&svg);
    assert_eq!(img.width, 960);
    assert!(img.height > 700, "{}", img.height);
    let share = ink_share(&img);
    assert!(
        share > 0.02,
        "only {:.2}% of the picture is drawn",
        share * 100.0
    );
    // Each series' colour is on the picture (the legend swatches at least).
    for (i, rgb) in [
        [0x1f, 0x77, 0xb4],
        [0xd6, 0x27, 0x28],
        [0x2c, 0xa0, 0x2c],
        [0xff, 0x7f, 0x0e],
    ]
    .iter()
    .enumerate()
    {
        let n = img
            .rgba
            .iter()
            .filter(|p| p[..3] == rgb[..] && p[3] == 255)
            .count();
        assert!(
            n >= 16 * 16,
            "series {i}: colour {rgb:?} on {n} pixels only"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn plot_refuses_missing_and_foreign_files_with_the_reason() {
    let d = scratch("plot-bad");
    let svg = d.join("x.svg");
    let svg = svg.to_str().unwrap();
    refused(
        &["plot", "/no/such.json", "-o", svg],
        1,
        &["cannot read /no/such.json"],
    );
    let junk = d.join("junk.json");
    std::fs::write(&junk, "not json").unwrap();
    refused(
        &["plot", junk.to_str().unwrap(), "-o", svg],
        1,
        &["is not JSON", "nvme-dio bench --json"],
    );
    let empty = d.join("empty.json");
    std::fs::write(&empty, r#"{"ios": 0}"#).unwrap();
    refused(
        &["plot", empty.to_str().unwrap(), "-o", svg],
        1,
        &["has no latency data"],
    );
    refused(&["plot", junk.to_str().unwrap()], 2, &["--output"]);
    assert!(!std::path::Path::new(svg).exists(), "nothing written");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn setup_status_shows_drivers_what_setup_bound_and_hugepages_per_node() {
    let t = Tree::new("status");
    t.nvme("0000:01:00.0", Some("nvme"), 3);
    t.kernel("0000:01:00.0", 0, "QEMU NVMe Ctrl", "dflt0001", 64 << 20);
    t.file(
        "proc/mounts",
        "/dev/vda / ext4 rw 0 0\n/dev/nvme0n1 /data ext4 rw 0 0\n",
    );
    t.nvme("0000:02:00.0", Some("vfio-pci"), 4);
    t.file(
        "run/nvme-dio/setup.json",
        r#"{"bound": [{"bdf": "0000:02:00.0", "driver_before": "nvme"}]}"#,
    );
    let pool = "sys/devices/system/node/node0/hugepages/hugepages-2048kB";
    t.file(&format!("{pool}/nr_hugepages"), "64\n");
    t.file(&format!("{pool}/free_hugepages"), "60\n");
    t.file(
        "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
        "64\n",
    );
    t.file(
        "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages",
        "60\n",
    );
    let o = t.run(&["setup", "status"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    for want in [
        "vfio-pci driver: loaded",
        "hugepages (2048 KiB): 64 reserved, 60 free",
        "  NUMA node 0: 64 reserved, 60 free",
        "in use: /dev/nvme0n1 on /data",
        "yes (was nvme)",
    ] {
        assert!(out.contains(want), "{want:?}:\n{out}");
    }
    let o = t.run(&["setup", "status", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["controllers"][1]["set_up_by_nvme_dio"], true, "{v}");
    assert_eq!(v["controllers"][0]["set_up_by_nvme_dio"], false, "{v}");
    assert_eq!(v["hugepages"][1]["node"], 0, "{v}");
    assert_eq!(v["hugepages"][1]["total"], 64, "{v}");
}

#[test]
fn setup_without_an_address_skips_busy_and_blocked_controllers_and_writes_nothing_for_them() {
    let t = Tree::new("setup-all");
    t.nvme("0000:01:00.0", Some("nvme"), 3);
    t.kernel("0000:01:00.0", 0, "QEMU NVMe Ctrl", "dflt0001", 64 << 20);
    t.file(
        "proc/swaps",
        "Filename Type Size Used Priority\n/dev/nvme0n1 partition 1 0 -2\n",
    );
    t.nvme("0000:02:00.0", Some("nvme"), 4);
    let o = run_env(
        &["setup"],
        &[
            ("NVME_DIO_SYSFS_ROOT", t.root.to_str().unwrap()),
            ("PCI_BLOCKED", "0000:02:00.0"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("skipping 0000:01:00.0") && out.contains("/dev/nvme0n1 on swap"),
        "{out}"
    );
    assert!(
        !out.contains("0000:02:00.0"),
        "blocked: not even looked at:\n{out}"
    );
    for b in ["0000:01:00.0", "0000:02:00.0"] {
        assert_eq!(
            std::fs::read_to_string(
                t.root
                    .join(format!("sys/bus/pci/devices/{b}/driver_override"))
            )
            .unwrap(),
            "(null)\n",
            "{b}"
        );
    }
    assert!(!t.root.join("run/nvme-dio/setup.json").exists());
    // Addresses given: all checked before any is touched; the busy one refused.
    let o = t.run(&["setup", "0000:02:00.0", "01:00.0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("refusing to set up 0000:01:00.0"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(
            t.root
                .join("sys/bus/pci/devices/0000:02:00.0/driver_override")
        )
        .unwrap(),
        "(null)\n"
    );
    // Nothing bound by setup: reset says so and succeeds.
    let o = t.run(&["reset"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("nothing to reset"),
        "{}",
        text(&o.stdout)
    );
    // A bad PCI_ALLOWED is named.
    let o = run_env(
        &["setup"],
        &[
            ("NVME_DIO_SYSFS_ROOT", t.root.to_str().unwrap()),
            ("PCI_ALLOWED", "0000:01:00.0 nope"),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("PCI_ALLOWED holds \"nope\""));
}

#[test]
fn setup_hugepages_alone_reserves_per_node_and_binds_nothing() {
    let t = Tree::new("setup-huge");
    t.nvme("0000:01:00.0", Some("nvme"), 3);
    let pool = "sys/devices/system/node/node0/hugepages/hugepages-2048kB";
    t.file(&format!("{pool}/nr_hugepages"), "0\n");
    t.file(&format!("{pool}/free_hugepages"), "0\n");
    let o = t.run(&["setup", "--hugepages-node", "0:8"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("hugepages on NUMA node 0: 8 x 2 MiB reserved"),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(t.root.join(format!("{pool}/nr_hugepages"))).unwrap(),
        "8"
    );
    assert_eq!(
        std::fs::read_to_string(
            t.root
                .join("sys/bus/pci/devices/0000:01:00.0/driver_override")
        )
        .unwrap(),
        "(null)\n",
        "hugepages alone bind nothing"
    );
    refused(&["setup", "--hugepages-node", "0:-1"], 2, &["negative"]);
    let o = t.run(&["setup", "--hugepages-node", "3:8"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("NUMA node 3 has no 2 MiB hugepage pool")
            && text(&o.stderr).contains("the nodes here are 0"),
        "{}",
        text(&o.stderr)
    );
}
