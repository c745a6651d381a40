//! # nvme-dio: the driver (skeleton, see issue 4).

#![forbid(unsafe_code)]
