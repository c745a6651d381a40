//! # nvme-dio-emu: a software NVMe controller (skeleton, see issue 4).
