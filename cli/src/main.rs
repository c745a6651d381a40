//! The `nvme-dio` binary: parse, dispatch, and turn errors into `error: ...` lines and a
//! non-zero exit status (never a panic or a debug dump).
//!
//! Exit status: 0 on success and when standard output is a pipe whose reader went away
//! (`nvme-dio list | head -1`: quiet, as `ls` and `cat` are); 130 after Ctrl-C (bench prints
//! the report of what ran until then first); 2 for a command line clap refuses; 1 for
//! every other error.

#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use nvme_dio_cli::{CliError, args::Cli, error::render, out, run};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version into a file or pipe go through the one stdout writer too
        // (clap ignores a failed write: `--help > /dev/full` said nothing and exited 0). On
        // a terminal clap prints them itself, in colour.
        Err(e)
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
                && !std::io::stdout().is_terminal() =>
        {
            return exit(out::print(&e.render().to_string()));
        }
        Err(e) => e.exit(),
    };
    exit(run(cli))
}

fn exit(r: Result<(), CliError>) -> ExitCode {
    match r {
        Ok(()) | Err(CliError::StdoutClosed) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed stderr must not turn into a panic either: the status still tells.
            let _ = writeln!(std::io::stderr(), "{}", render(&e));
            ExitCode::from(e.exit_code())
        }
    }
}
