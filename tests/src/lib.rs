//! Integration tests live in `tests/`; this library holds their shared fixtures.

#![forbid(unsafe_code)]

pub mod datapath;
pub mod io;
pub mod load;
pub mod vm;
