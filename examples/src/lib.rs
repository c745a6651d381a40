//! Worked examples of embedding nvme-dio.

#![forbid(unsafe_code)]
