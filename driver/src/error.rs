//! The driver's errors: one enum, one variant per failing operation.

use std::time::Duration;

use nvme_dio_queue::{Lba, Nsid, Status};

/// The stage of controller bring-up an error happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Reading CAP/VS and checking the controller can be driven at all.
    Capabilities,
    /// Clearing CC.EN and waiting for CSTS.RDY = 0.
    Disable,
    /// Allocating and programming the admin queues (AQA, ASQ, ACQ).
    AdminQueue,
    /// Setting CC.EN and waiting for CSTS.RDY = 1.
    Enable,
    /// Identify Controller.
    IdentifyController,
    /// Identify active namespaces and each namespace.
    IdentifyNamespaces,
    /// Set Features: Number of Queues.
    SetNumberOfQueues,
    /// Enabling MSI-X vectors for interrupt-driven queue pairs.
    Interrupts,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Capabilities => "reading capabilities",
            Stage::Disable => "disabling the controller",
            Stage::AdminQueue => "setting up the admin queue",
            Stage::Enable => "enabling the controller",
            Stage::IdentifyController => "Identify Controller",
            Stage::IdentifyNamespaces => "identifying namespaces",
            Stage::SetNumberOfQueues => "Set Features (Number of Queues)",
            Stage::Interrupts => "enabling MSI-X",
        })
    }
}

/// Everything that can go wrong in the driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bring-up failed; `stage` says where.
    #[error("controller bring-up failed while {stage}: {source}")]
    BringUp {
        /// Where it failed.
        stage: Stage,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// CSTS.RDY did not reach the wanted value within CAP.TO.
    #[error(
        "controller did not become {} after {waited:?} (CAP.TO allows {limit:?}); CSTS={csts:#010x}",
        if *want_ready { "ready" } else { "disabled" }
    )]
    ReadyTimeout {
        /// The RDY value waited for.
        want_ready: bool,
        /// How long we waited.
        waited: Duration,
        /// CAP.TO.
        limit: Duration,
        /// The last CSTS read.
        csts: u32,
    },
    /// CSTS.CFS is set: the controller hit a fatal error.
    #[error(
        "controller fatal status (CSTS.CFS) set; CSTS={csts:#010x}: the controller needs a reset"
    )]
    ControllerFatal {
        /// The CSTS read.
        csts: u32,
    },
    /// A register read returned all ones: the device was removed or is in reset.
    #[error("device gone: register {register:#x} read all ones (surprise removal or reset)")]
    DeviceGone {
        /// The register offset that read all ones.
        register: usize,
    },
    /// The controller cannot be driven by this driver.
    #[error("unsupported controller: {0}")]
    Unsupported(String),
    /// The controller reported limits that make no sense.
    #[error("controller reported nonsense: {0}")]
    Nonsense(String),
    /// The device completed a command with an error status.
    #[error("{opcode_name} failed: {status}")]
    Command {
        /// The command's opcode.
        opcode: u8,
        /// A readable name of the command.
        opcode_name: &'static str,
        /// The completion status.
        status: Status,
    },
    /// A command did not complete within its deadline.
    #[error(
        "{opcode_name} timed out after {after:?} (it was aborted; see the queue pair's counters)"
    )]
    Timeout {
        /// A readable name of the command.
        opcode_name: &'static str,
        /// Its deadline.
        after: Duration,
    },
    /// An admin command did not complete within its deadline.
    #[error("admin command {opcode_name} got no completion within {after:?}")]
    AdminTimeout {
        /// A readable name of the command.
        opcode_name: &'static str,
        /// Its deadline.
        after: Duration,
    },
    /// The request was refused before anything was queued: bad input.
    #[error("invalid request: {0}")]
    Invalid(#[from] nvme_dio_queue::plan::PlanError),
    /// A request named a namespace the controller does not have.
    #[error("namespace {nsid} does not exist on this controller (active: {active:?})")]
    NoSuchNamespace {
        /// The namespace asked for.
        nsid: Nsid,
        /// The active namespaces.
        active: Vec<u32>,
    },
    /// A request's range does not fit the namespace.
    #[error(
        "blocks {}..{}+{blocks} run past the end of namespace {nsid} ({ns_blocks} blocks): check the offset",
        slba.0,
        slba.0
    )]
    OutOfRange {
        /// The namespace.
        nsid: Nsid,
        /// First block.
        slba: Lba,
        /// Block count.
        blocks: u64,
        /// Namespace size.
        ns_blocks: u64,
    },
    /// A request's arguments are out of range (block counts, range lists).
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// The namespace or controller does not support this command.
    #[error("{0} is not supported by this controller")]
    NotSupported(&'static str),
    /// The queue pair has no free slot: complete some requests (poll) and submit again.
    #[error("queue pair full ({outstanding} outstanding): poll for completions, then resubmit")]
    QueueFull {
        /// Requests in flight.
        outstanding: usize,
    },
    /// No I/O queue is left: the controller granted fewer than asked.
    #[error("no free I/O queue: the controller granted {granted}; drop a queue pair first")]
    NoFreeQueue {
        /// Queue pairs the controller granted.
        granted: u16,
    },
    /// A controller or queue pair option is out of range (the text names which).
    #[error("invalid option: {0}")]
    BadOption(String),
    /// The controller was reset or shut down while the request was in flight.
    #[error("request aborted: the controller was {0}")]
    Aborted(&'static str),
    /// A buffer was not allocated from this controller's DMA memory.
    #[error(
        "buffer {index} is not from this controller's DMA memory: allocate it with \
         controller.memory().alloc() (another device's IOVAs mean something else here)"
    )]
    ForeignBuffer {
        /// Its index in the request.
        index: usize,
    },
    /// The queue pair's queues could not be re-created after a controller reset.
    #[error("queue pair lost its queues in a controller reset ({0}); drop it and create another")]
    QueueLost(String),
    /// DMA memory or device access failed.
    #[error(transparent)]
    Dma(#[from] nvme_dio_dma::Error),
    /// Waiting on an interrupt eventfd failed.
    #[error("waiting for an interrupt failed: {0}")]
    Wait(#[source] std::io::Error),
}

impl Error {
    pub(crate) fn at(self, stage: Stage) -> Error {
        Error::BringUp {
            stage,
            source: Box::new(self),
        }
    }

    /// The device status, if this is a command that completed with an error status.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Command { status, .. } => Some(*status),
            Error::BringUp { source, .. } => source.status(),
            _ => None,
        }
    }
}

/// A readable name for an opcode, for messages.
pub(crate) fn opcode_name(admin: bool, opc: u8) -> &'static str {
    use nvme_dio_queue::opcode::{admin as a, nvm as n};
    if admin {
        match opc {
            a::DELETE_IO_SQ => "Delete I/O SQ",
            a::CREATE_IO_SQ => "Create I/O SQ",
            a::GET_LOG_PAGE => "Get Log Page",
            a::DELETE_IO_CQ => "Delete I/O CQ",
            a::CREATE_IO_CQ => "Create I/O CQ",
            a::IDENTIFY => "Identify",
            a::ABORT => "Abort",
            a::SET_FEATURES => "Set Features",
            a::GET_FEATURES => "Get Features",
            a::DOORBELL_BUFFER_CONFIG => "Doorbell Buffer Config",
            _ => "admin command",
        }
    } else {
        match opc {
            n::FLUSH => "Flush",
            n::WRITE => "Write",
            n::READ => "Read",
            n::WRITE_ZEROES => "Write Zeroes",
            n::DATASET_MANAGEMENT => "Dataset Management",
            _ => "I/O command",
        }
    }
}
