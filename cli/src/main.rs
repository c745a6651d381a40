//! The `nvme-dio` command (skeleton, see issue 6).

#![forbid(unsafe_code)]

fn main() {
    eprintln!("nvme-dio: no commands yet");
    std::process::exit(2);
}
