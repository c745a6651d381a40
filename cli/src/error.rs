//! The command's errors: one enum, each message a sentence a user can act on.

use std::io;
use std::path::PathBuf;

/// Everything `nvme-dio` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A combination of arguments that cannot work (clap checks single values).
    #[error("{0}")]
    BadArgument(String),
    /// Bringing up or driving the controller failed.
    #[error("{device}: {source}")]
    Driver {
        /// The device.
        device: String,
        /// The driver's error.
        #[source]
        source: nvme_dio::Error,
    },
    /// Opening a VFIO device failed.
    #[error("cannot open {device} through VFIO: {source}")]
    Vfio {
        /// The device.
        device: String,
        /// The dma layer's error.
        #[source]
        source: nvme_dio_dma::Error,
    },
    /// DMA memory could not be allocated.
    #[error("cannot allocate DMA buffers ({what}): {source}")]
    Memory {
        /// What for.
        what: String,
        /// The dma layer's error.
        #[source]
        source: nvme_dio_dma::Error,
    },
    /// The emulated controller refused its configuration.
    #[error("cannot start the emulated controller: {source}")]
    Emu {
        /// The emulator's error.
        #[source]
        source: nvme_dio_emu::EmuError,
    },
    /// The io_uring engine failed.
    #[error("{path}: {source}")]
    Uring {
        /// The file or device.
        path: PathBuf,
        /// The engine's error.
        #[source]
        source: nvme_dio_uring::UringError,
    },
    /// A file could not be read or written.
    #[error("cannot {op} {path}: {source}")]
    File {
        /// What was attempted.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The first I/O, tried before the run, failed: the device cannot do what the run asks.
    #[error(
        "{device}: {what} at offset {offset}, tried before the run, failed, so the run was not started: {detail}"
    )]
    FirstIo {
        /// The file or device.
        device: String,
        /// What was tried.
        what: String,
        /// Byte offset it was tried at (the start of the working set).
        offset: u64,
        /// The failure and what to do.
        detail: String,
    },
    /// I/Os failed during the benchmark.
    #[error("{count} I/O(s) failed; the first: {first}")]
    IoFailed {
        /// Failed I/Os.
        count: u64,
        /// The first failure, described.
        first: String,
    },
    /// Verify found data that is not what was written.
    #[error(
        "verify failed: {count} block(s) did not hold the data written to them; the first: {first}"
    )]
    VerifyFailed {
        /// Mismatching blocks.
        count: u64,
        /// The first mismatch, described.
        first: String,
    },
    /// A worker thread panicked (a bug: please report it).
    #[error(
        "worker for queue {queue} panicked: {message} (this is a bug in nvme-dio; please report it)"
    )]
    WorkerPanicked {
        /// The queue.
        queue: usize,
        /// The panic message.
        message: String,
    },
    /// `setup` / `reset` refuses to touch this controller.
    #[error("refusing to {action} {bdf}: {reason}")]
    Refused {
        /// "set up" or "reset".
        action: &'static str,
        /// The controller.
        bdf: String,
        /// Why, and what to do.
        reason: String,
    },
    /// A sysfs step of `setup` / `reset` failed.
    #[error("{step} failed ({path}): {source}; are you root?")]
    Sysfs {
        /// What was attempted.
        step: String,
        /// The file written.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// JSON output failed.
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Standard output is a pipe whose reader has gone (`nvme-dio list | head -1`): not an
    /// error for the user; `main` exits quietly with status 0.
    #[error("standard output was closed by its reader")]
    StdoutClosed,
    /// Writing to standard output failed for another reason (a full disk, above all).
    #[error(
        "cannot write to standard output: {source}; the output is lost (free some space, or redirect it elsewhere)"
    )]
    Stdout {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Ctrl-C (SIGINT) stopped the command. For `bench` the report of what ran until then
    /// has been printed; `main` exits with 130 (128 + SIGINT), as shells report it.
    #[error("interrupted (Ctrl-C){0}")]
    Interrupted(String),
}

impl CliError {
    /// The exit status for this error: 130 for [`CliError::Interrupted`], 0 for
    /// [`CliError::StdoutClosed`] (see `out.rs`), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::StdoutClosed => 0,
            CliError::Interrupted(_) => 130,
            _ => 1,
        }
    }

    /// Wraps a driver error with the device it came from.
    pub fn driver(device: impl ToString, source: nvme_dio::Error) -> CliError {
        CliError::Driver {
            device: device.to_string(),
            source,
        }
    }
}

/// The error and its causes, one line each, skipping a cause already spelled out in the
/// line above it (many messages embed their source).
pub fn render(e: &dyn std::error::Error) -> String {
    let mut out = format!("error: {e}");
    let mut last = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !last.contains(&text) {
            out.push_str(&format!("\n  caused by: {text}"));
        }
        last = text;
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_prints_the_chain_once() {
        let e = CliError::File {
            op: "write",
            path: "/x.svg".into(),
            source: io::Error::new(io::ErrorKind::PermissionDenied, "Permission denied"),
        };
        assert_eq!(render(&e), "error: cannot write /x.svg: Permission denied");
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] io::Error);
        let e = Outer(io::Error::other("inner"));
        assert_eq!(render(&e), "error: outer\n  caused by: inner");
    }
}
