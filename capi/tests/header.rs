//! The checked-in header (include/nvme_dio.h) is what cbindgen makes of src/lib.rs today.
//! After changing the ABI: `NVME_DIO_BLESS=1 cargo test -p nvme-dio-capi --test header`.

use std::path::Path;

#[test]
fn checked_in_header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen parses src/lib.rs");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let path = dir.join("include/nvme_dio.h");
    if std::env::var_os("NVME_DIO_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write the header");
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    if checked_in != fresh {
        let tmp = std::env::temp_dir().join(format!("nvme_dio.h.{}", std::process::id()));
        std::fs::write(&tmp, &fresh).expect("write the fresh header");
        panic!(
            "{} is stale: the ABI in src/lib.rs changed. Fresh header written to {}; \
             diff them, then regenerate with NVME_DIO_BLESS=1 cargo test -p nvme-dio-capi --test header",
            path.display(),
            tmp.display()
        );
    }
}
