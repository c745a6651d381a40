//! The `nvme-dio` binary: parse, dispatch, and turn errors into `error: ...` lines and a
//! non-zero exit status (never a panic or a debug dump).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use nvme_dio_cli::{args::Cli, error::render, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", render(&e));
            ExitCode::FAILURE
        }
    }
}
