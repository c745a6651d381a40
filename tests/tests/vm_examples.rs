//! The embedding examples through VFIO in the VM guest (ci/vm-test puts them in /bin): the
//! Rust write-ahead log and the C program, each killed mid-stream (abort right after an
//! acknowledgement) and then recovered: every record acknowledged as durable must be read
//! back intact. `#[ignore]`d on the host; the guest runs them with `--include-ignored`.

use std::process::{Command, Output};

use nvme_dio_tests::vm;

fn run(bin: &str, args: &[&str]) -> (Output, String) {
    let out = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e} (only in the VM guest)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("$ {bin} {}\n{text}", args.join(" "));
    (out, text)
}

/// The number after `key` in `text` (`ACKED count=5000`, `RECOVERED records=5123`).
fn number_after(text: &str, key: &str) -> u64 {
    let at = text
        .find(key)
        .unwrap_or_else(|| panic!("no {key:?} in {text}"))
        + key.len();
    text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_wal_survives_a_crash_and_recovers_every_acknowledged_record() {
    let c = vm::controller("default").expect("VM guest");
    let base = [
        "--device",
        c.bdf.as_str(),
        "--start-lba",
        "12000",
        "--log-blocks",
        "4000",
    ];
    let crash: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--records", "20000", "--crash-after", "3000"])
        .collect();
    let (out, text) = run("/bin/wal", &crash);
    assert!(!out.status.success(), "the process was to abort: {text}");
    let acked = number_after(&text, "ACKED count=");
    assert_eq!(acked, 3000, "{text}");
    let lsn = number_after(&text, "last_lsn=").to_string();
    let recover: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--recover", "--expect-lsn", &lsn])
        .collect();
    let (out, text) = run("/bin/wal", &recover);
    assert!(
        out.status.success(),
        "recovery lost acknowledged records: {text}"
    );
    assert!(number_after(&text, "RECOVERED records=") >= acked, "{text}");
    // A whole run with write + flush durability verifies on its own.
    let flush: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--records", "3000", "--durability", "flush"])
        .collect();
    let (out, text) = run("/bin/wal", &flush);
    assert!(out.status.success(), "{text}");
}

#[test]
#[ignore = "VM suite: needs the QEMU guest, run ci/vm-test"]
fn vm_c_example_survives_a_crash_and_recovers_every_acknowledged_record() {
    let c = vm::controller("ns512").expect("VM guest");
    let base = ["--device", c.bdf.as_str(), "--start-lba", "32768"];
    let crash: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--records", "2000", "--crash-after", "700"])
        .collect();
    let (out, text) = run("/bin/wal_c", &crash);
    assert!(!out.status.success(), "the process was to abort: {text}");
    assert_eq!(number_after(&text, "ACKED "), 700, "{text}");
    let recover: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--recover", "--expect", "700"])
        .collect();
    let (out, text) = run("/bin/wal_c", &recover);
    assert!(
        out.status.success(),
        "recovery lost acknowledged records: {text}"
    );
    assert!(number_after(&text, "RECOVERED ") >= 700, "{text}");
    let irq: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--interrupt", "--records", "2000"])
        .collect();
    let (out, text) = run("/bin/wal_c", &irq);
    assert!(out.status.success(), "{text}");
    assert_eq!(number_after(&text, "VERIFIED "), 2000, "{text}");
}
