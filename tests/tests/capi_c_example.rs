//! The C example (examples/c/wal.c) built with the system C compiler against the checked-in
//! header and the static library, then run on the emulated controller: a full run that
//! writes, reads back and verifies; a simulated crash; bad input.
//!
//! The static library is built here with `cargo build -p nvme-dio-capi` into the same target
//! directory and profile as this test (a no-op when it is current). That is safe inside
//! `cargo test`: cargo releases the build-directory lock once compilation is done, before it
//! runs any test binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where cargo put this test binary: (target root, profile directory, `--target` triple).
fn layout() -> (PathBuf, PathBuf, Option<String>) {
    let exe = std::env::current_exe().expect("current_exe");
    // <target root>[/<triple>]/<profile>/deps/<this test>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <profile>/deps")
        .to_path_buf();
    // Cargo marks its target root with CACHEDIR.TAG.
    let root = profile_dir
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").exists())
        .unwrap_or_else(|| profile_dir.parent().expect("target root"))
        .to_path_buf();
    let triple = (profile_dir.parent() != Some(root.as_path())).then(|| {
        profile_dir
            .parent()
            .and_then(Path::file_name)
            .expect("triple dir")
            .to_string_lossy()
            .into_owned()
    });
    (root, profile_dir, triple)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Builds (or confirms current) libnvme_dio_capi.a for this test's profile; returns its path.
fn static_lib() -> PathBuf {
    let (root, profile_dir, triple) = layout();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(other) => other.to_string(),
        None => panic!("no profile directory in {}", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args([
            "build",
            "-p",
            "nvme-dio-capi",
            "--lib",
            "--profile",
            &profile,
        ])
        .arg("--target-dir")
        .arg(&root);
    if let Some(t) = &triple {
        cmd.args(["--target", t]);
    }
    let out = cmd.output().expect("run cargo");
    assert!(
        out.status.success(),
        "cargo build -p nvme-dio-capi failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = profile_dir.join("libnvme_dio_capi.a");
    assert!(lib.exists(), "{} was not built", lib.display());
    lib
}

fn have_cc() -> bool {
    Command::new("cc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Compiles examples/c/wal.c; None (with the reason printed) if there is no C compiler.
fn build_c_example() -> Option<PathBuf> {
    if !have_cc() {
        eprintln!("SKIPPED: no C compiler (`cc`) on this machine; the C example was not built");
        return None;
    }
    let lib = static_lib();
    let ws = workspace_root();
    let dir = std::env::temp_dir().join(format!("nvme-dio-capi-c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let exe = dir.join("wal");
    let out = Command::new("cc")
        .args([
            "-std=c11",
            "-D_POSIX_C_SOURCE=200809L",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O1",
        ])
        .arg("-o")
        .arg(&exe)
        .arg(ws.join("examples/c/wal.c"))
        .arg("-I")
        .arg(ws.join("capi/include"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm"])
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe)
}

fn run(exe: &Path, args: &[&str]) -> (Output, String, String) {
    let out = Command::new(exe)
        .args(args)
        .output()
        .expect("run the C example");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[test]
fn the_header_compiles_as_c99_and_cxx() {
    if !have_cc() {
        eprintln!("SKIPPED: no C compiler (`cc`) on this machine");
        return;
    }
    let ws = workspace_root();
    let dir = std::env::temp_dir().join(format!("nvme-dio-capi-h-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("h.c");
    std::fs::write(
        &src,
        "#include \"nvme_dio.h\"\nint main(void) { return 0; }\n",
    )
    .unwrap();
    let c = Command::new("cc")
        .args([
            "-std=c99",
            "-pedantic",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fsyntax-only",
            "-I",
        ])
        .arg(ws.join("capi/include"))
        .arg(&src)
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    if Command::new("c++").arg("--version").output().is_ok() {
        let cxx = Command::new("c++")
            .args([
                "-x",
                "c++",
                "-std=c++11",
                "-Wall",
                "-Werror",
                "-fsyntax-only",
                "-I",
            ])
            .arg(ws.join("capi/include"))
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            cxx.status.success(),
            "{}",
            String::from_utf8_lossy(&cxx.stderr)
        );
    }
}

#[test]
fn c_wal_example_writes_reads_back_verifies_and_crashes_on_request() {
    let Some(exe) = build_c_example() else { return };

    // A full run: every record acknowledged in log order, then read back intact.
    let (out, stdout, stderr) = run(&exe, &["--records", "500", "--depth", "16"]);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("ACKED 500\n"), "{stdout}");
    assert!(stdout.contains("VERIFIED 500\n"), "{stdout}");

    // Interrupt mode on the emulator running on its own thread: nvd_wait sleeps on the
    // queue pair's MSI-X eventfd.
    let (out, stdout, stderr) = run(
        &exe,
        &[
            "--device",
            "emu:ram:thread",
            "--interrupt",
            "--records",
            "300",
        ],
    );
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("VERIFIED 300\n"), "{stdout}");

    // The simulated crash: abort() right after the 64th acknowledgement, count printed first.
    let (out, stdout, _) = run(&exe, &["--records", "300", "--crash-after", "64"]);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc_sigabrt()),
        "{:?}",
        out.status
    );
    assert!(stdout.contains("ACKED 64\n"), "{stdout}");
    assert!(!stdout.contains("VERIFIED"), "{stdout}");

    // Recovery on a fresh emulated device finds no log, so an expectation fails.
    let (out, stdout, _) = run(&exe, &["--recover", "--expect", "1"]);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("RECOVERED 0"), "{stdout}");

    // Bad device strings come back as errors with a message, not crashes.
    let (out, _, stderr) = run(&exe, &["--device", "emu:disk"]);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("emu:ram"), "{stderr}");
    let (out, _, stderr) = run(&exe, &["--device", "0000:ff:1f.7"]);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("nvd_open"), "{stderr}");
}

/// SIGABRT (6 on Linux); spelled out to keep libc out of this crate's dependencies.
fn libc_sigabrt() -> i32 {
    6
}
