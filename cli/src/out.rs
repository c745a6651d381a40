//! Standard output, through one writer.
//!
//! Every report, listing and JSON object goes through [`print()`], which writes and flushes
//! and maps the two failures a tool meets in ordinary use:
//!
//! - the reader went away (`nvme-dio list | head -1`, `... | true`): EPIPE, reported as
//!   [`CliError::StdoutClosed`]. `main` then exits quietly with status 0, as `ls`, `cat`
//!   and ripgrep do from a user's point of view (they die of SIGPIPE or exit quietly; none
//!   prints an error). Rust ignores SIGPIPE, so without this every `println!` panics.
//! - anything else, a full disk above all (`> /dev/full`: ENOSPC): [`CliError::Stdout`], an
//!   error line and a non-zero exit, since the output the user asked for is lost.

use std::io::{self, Write};

use crate::error::CliError;

/// Writes `text` to standard output and flushes it.
///
/// # Errors
///
/// [`CliError::StdoutClosed`] on a closed pipe, [`CliError::Stdout`] otherwise.
pub fn print(text: &str) -> Result<(), CliError> {
    write_to(&mut io::stdout().lock(), text)
}

/// Writes `text` and a newline to standard output, and flushes it.
///
/// # Errors
///
/// As [`print()`].
pub fn println(text: &str) -> Result<(), CliError> {
    let mut o = io::stdout().lock();
    write_to(&mut o, text)?;
    write_to(&mut o, "\n")
}

/// Writes raw bytes (`identify --raw`) to standard output and flushes them.
///
/// # Errors
///
/// As [`print()`].
pub fn write_bytes(bytes: &[u8]) -> Result<(), CliError> {
    let mut o = io::stdout().lock();
    o.write_all(bytes)
        .and_then(|()| o.flush())
        .map_err(stdout_error)
}

/// A status line of a command that changes the machine (`setup`, `reset`): a closed pipe
/// must not stop it half-way, so that is ignored; any other failure is an error.
///
/// # Errors
///
/// [`CliError::Stdout`].
pub fn status(text: &str) -> Result<(), CliError> {
    match println(text) {
        Err(CliError::StdoutClosed) => Ok(()),
        r => r,
    }
}

/// Writes `text` to `w` and flushes, mapping the error as [`print()`] does.
///
/// # Errors
///
/// As [`print()`].
pub fn write_to(w: &mut impl Write, text: &str) -> Result<(), CliError> {
    w.write_all(text.as_bytes())
        .and_then(|()| w.flush())
        .map_err(stdout_error)
}

/// The error for a failed write to standard output.
pub fn stdout_error(source: io::Error) -> CliError {
    if source.kind() == io::ErrorKind::BrokenPipe {
        CliError::StdoutClosed
    } else {
        CliError::Stdout { source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing(io::ErrorKind);
    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(self.0))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_is_quiet_and_a_full_disk_is_an_error() {
        assert!(matches!(
            write_to(&mut Failing(io::ErrorKind::BrokenPipe), "x"),
            Err(CliError::StdoutClosed)
        ));
        let e = write_to(&mut Failing(io::ErrorKind::StorageFull), "x").unwrap_err();
        assert!(matches!(e, CliError::Stdout { .. }), "{e}");
        assert!(e.to_string().contains("standard output"), "{e}");
        let mut v = Vec::new();
        write_to(&mut v, "ok").unwrap();
        assert_eq!(v, b"ok");
    }
}
