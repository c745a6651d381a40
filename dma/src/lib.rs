//! # nvme-dio-dma: the unsafe floor
//!
//! Device access and DMA memory for nvme-dio. (Skeleton: see issue 3.)

pub mod device;

pub use device::{Bar0, DmaMapper, PciFunction};

/// Errors of the dma layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Placeholder until the VFIO layer lands.
    #[error("not implemented yet: {0}")]
    Unimplemented(&'static str),
}
