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
    /// Set Features: Interrupt Coalescing (`ControllerOptions::coalescing`).
    InterruptCoalescing,
    /// Doorbell Buffer Config (shadow doorbells, [`crate::ControllerOptions::shadow_doorbells`]).
    DoorbellBufferConfig,
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
            Stage::InterruptCoalescing => "Set Features (Interrupt Coalescing)",
            Stage::DoorbellBufferConfig => "Doorbell Buffer Config (shadow doorbells)",
        })
    }
}

/// Everything that can go wrong in the driver. Each failure is a variant with fields;
/// those about one command name its queue (`qid`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bring-up failed; `stage` says where.
    #[error("controller bring-up failed while {stage}")]
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
    Unsupported(Unsupported),
    /// The controller reported something that makes no sense.
    #[error("controller reported nonsense: {0}")]
    Nonsense(Nonsense),
    /// The device completed a command with an error status.
    #[error("{opcode_name} failed on queue {qid}: {status}")]
    Command {
        /// The queue (0: admin).
        qid: u16,
        /// The command's opcode.
        opcode: u8,
        /// A readable name of the command.
        opcode_name: &'static str,
        /// The completion status.
        status: Status,
    },
    /// The controller's End-to-end Guard Check failed (2/0x82): the data does not match
    /// the guard of its protection information (torn or corrupted data, or a wrong guard).
    #[error("{opcode_name} failed on queue {qid}: the PI guard does not match the data ({status})")]
    GuardCheck {
        /// The queue.
        qid: u16,
        /// A readable name of the command.
        opcode_name: &'static str,
        /// The completion status.
        status: Status,
    },
    /// The controller's End-to-end Application Tag Check failed (2/0x83).
    #[error(
        "{opcode_name} failed on queue {qid}: the PI application tag is not the expected one ({status})"
    )]
    AppTagCheck {
        /// The queue.
        qid: u16,
        /// A readable name of the command.
        opcode_name: &'static str,
        /// The completion status.
        status: Status,
    },
    /// The controller's End-to-end Reference Tag Check failed (2/0x84): the block is not the
    /// one asked for (a misdirected write) or the tag was set wrong.
    #[error(
        "{opcode_name} failed on queue {qid}: the PI reference tag is not the expected one, a misdirected or stale block ({status})"
    )]
    RefTagCheck {
        /// The queue.
        qid: u16,
        /// A readable name of the command.
        opcode_name: &'static str,
        /// The completion status.
        status: Status,
    },
    /// A command did not complete within its deadline.
    #[error(
        "{opcode_name} on queue {qid} timed out after {after:?} (it was aborted; see the queue pair's counters)"
    )]
    Timeout {
        /// The queue.
        qid: u16,
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
    /// The planner refused the request before anything was queued: bad input.
    #[error("invalid request")]
    Invalid(#[from] nvme_dio_queue::plan::PlanError),
    /// The request's arguments are out of range.
    #[error("invalid request: {0}")]
    Bad(BadRequest),
    /// I/O on a namespace the controller removed while it ran.
    #[error(
        "namespace {nsid} was removed from the controller (Namespace Attribute Changed); take \
         the current list from Controller::namespaces()"
    )]
    NamespaceRemoved {
        /// The namespace.
        nsid: Nsid,
    },
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
    /// The namespace or controller does not support this.
    #[error("{0} is not supported by this controller")]
    NotSupported(Feature),
    /// The queue pair has no free slot: complete some requests (poll) and submit again.
    #[error(
        "queue pair {qid} full ({outstanding} outstanding): poll for completions, then resubmit"
    )]
    QueueFull {
        /// The queue.
        qid: u16,
        /// Commands in flight.
        outstanding: usize,
    },
    /// No I/O queue is left: the controller granted fewer than asked.
    #[error("no free I/O queue: the controller granted {granted}; drop a queue pair first")]
    NoFreeQueue {
        /// Queue pairs the controller granted.
        granted: u16,
    },
    /// A controller or queue pair option is out of range.
    #[error("invalid option: {0}")]
    BadOption(BadOption),
    /// The request was in flight when the controller was reset or the queue pair deleted.
    #[error("request aborted: {0}")]
    Aborted(AbortReason),
    /// The request was failed by a teardown (a reset that failed, the device gone) while
    /// the device may still write its buffers: DMA was not proven stopped (no disable
    /// confirmed, bus mastering could not be cleared, no function reset), so the buffers are
    /// held in the DMA memory's quarantine ([`nvme_dio_dma::DmaMemory::quarantine`]) and the
    /// completion carries none. They are freed once DMA is proven stopped, or leaked.
    #[error(
        "{cause}; its buffers are held, not returned: the device may still write them (DMA \
         was not proven stopped; see Controller::quarantine)"
    )]
    BuffersHeld {
        /// The queue pair.
        qid: u16,
        /// Why the request failed (in the message, not repeated as a source).
        cause: Box<Error>,
    },
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
    #[error("queue pair {qid} lost its queues in a controller reset; drop it and create another")]
    QueueLost {
        /// The queue.
        qid: u16,
        /// Why re-creating them failed.
        #[source]
        source: std::sync::Arc<Error>,
    },
    /// A planned command's data pointer could not be built (a driver bug, reported).
    #[error("data pointer for a planned command on queue {qid} could not be built")]
    DataPointer {
        /// The queue.
        qid: u16,
        /// What the builder said.
        #[source]
        source: nvme_dio_queue::queue_pair::DptrError,
    },
    /// DMA memory or device access failed.
    #[error(transparent)]
    Dma(#[from] nvme_dio_dma::Error),
    /// Waiting on an interrupt eventfd failed.
    #[error("waiting for an interrupt failed")]
    Wait(#[source] std::io::Error),
}

/// Why a controller cannot be driven.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unsupported {
    /// CAP.CSS lacks the NVM command set.
    #[error("CAP.CSS does not include the NVM command set")]
    NoNvmCommandSet,
    /// The smallest page the controller takes is too large.
    #[error(
        "the smallest page the controller takes is {bytes} bytes; this driver handles up to 64 KiB"
    )]
    PageTooLarge {
        /// CAP.MPSMIN in bytes.
        bytes: usize,
    },
    /// SQES/CQES require larger entries than the driver uses.
    #[error("SQES/CQES require {sq}/{cq}-byte entries; this driver uses 64/16")]
    EntrySizes {
        /// Required SQ entry bytes.
        sq: u32,
        /// Required CQ entry bytes.
        cq: u32,
    },
}

/// Something the controller reported that makes no sense.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Nonsense {
    /// CAP.MQES is 0.
    #[error("CAP.MQES is 0 (queues of one entry cannot work)")]
    MqesZero,
    /// A queue's doorbell lies past the end of BAR0.
    #[error(
        "the doorbells of I/O queue {qid} end at {offset:#x} + 4, past BAR0's {bar_len:#x} \
         bytes (CAP.DSTRD or the BAR size is wrong): use fewer queues"
    )]
    DoorbellPastBar {
        /// The queue.
        qid: u16,
        /// Offset of its CQ head doorbell.
        offset: usize,
        /// BAR0's length.
        bar_len: usize,
    },
    /// CAP.MPSMIN/MPSMAX cannot be decoded.
    #[error("CAP.MPSMIN/MPSMAX unusable in CAP={cap:#x}")]
    PageSizes {
        /// The CAP register.
        cap: u64,
    },
    /// CAP.MPSMIN is above CAP.MPSMAX.
    #[error("CAP.MPSMIN ({min} bytes) is above CAP.MPSMAX ({max} bytes)")]
    PageSizeOrder {
        /// MPSMIN in bytes.
        min: usize,
        /// MPSMAX in bytes.
        max: usize,
    },
    /// An Identify page could not be parsed.
    #[error("an Identify page")]
    Identify(#[source] nvme_dio_queue::IdentifyError),
    /// A log page that does not parse.
    #[error("a log page")]
    Log(#[source] nvme_dio_queue::log::LogError),
    /// A namespace's current LBA format is not one it lists.
    #[error("namespace {nsid} uses LBA format {index} of the {count} it lists")]
    LbaFormatIndex {
        /// The namespace.
        nsid: Nsid,
        /// FLBAS index.
        index: u8,
        /// NLBAF + 1.
        count: u8,
    },
    /// A namespace's block size is unusable.
    #[error("namespace {nsid} has LBA size {size}")]
    LbaSize {
        /// The namespace.
        nsid: Nsid,
        /// Its block size.
        size: u32,
    },
    /// Set Features (Number of Queues) granted none.
    #[error("controller granted zero I/O queues")]
    ZeroQueues,
    /// After a reset the controller granted fewer queues than before.
    #[error("after reset the controller granted {granted} I/O queues, {before} before")]
    FewerQueuesAfterReset {
        /// Granted now.
        granted: u16,
        /// Granted at bring-up.
        before: u16,
    },
}

/// A request refused for its arguments, before anything was queued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadRequest {
    /// A block count out of the command's range.
    #[error("{blocks} blocks: one command takes 1..={max}")]
    BlockCount {
        /// Blocks asked for.
        blocks: u64,
        /// The most one command takes.
        max: u64,
    },
    /// A Dataset Management range list of the wrong length.
    #[error("{ranges} deallocate ranges: Dataset Management takes 1..=256 per command")]
    DeallocateRanges {
        /// Ranges given.
        ranges: usize,
    },
    /// A Copy source range list of the wrong length.
    #[error("{ranges} copy source ranges: Copy takes 1..=256 per request")]
    CopyRanges {
        /// Ranges given.
        ranges: usize,
    },
    /// A buffer longer than one segment can be.
    #[error("buffer {index} is {bytes} bytes; one buffer holds at most 4 GiB - 1")]
    BufferTooLarge {
        /// Its index in the request.
        index: usize,
        /// Its length.
        bytes: usize,
    },
    /// The namespace's format carries metadata in a separate buffer and the request has
    /// none.
    #[error(
        "namespace {nsid} is formatted with {metadata_bytes} bytes of separate metadata per \
         block: give the request a metadata buffer of {needed} bytes (Io::metadata), or use \
         PRACT where the metadata is only the PI tuple"
    )]
    MetadataMissing {
        /// The namespace.
        nsid: Nsid,
        /// Metadata bytes per block.
        metadata_bytes: u16,
        /// Bytes the buffer must hold.
        needed: u64,
    },
    /// The metadata buffer is smaller than the request's blocks need.
    #[error("metadata buffer of {have} bytes, the request's blocks need {needed}")]
    MetadataTooSmall {
        /// Its length.
        have: usize,
        /// Blocks times metadata bytes per block.
        needed: u64,
    },
    /// The metadata buffer's address is not dword aligned (MPTR must be).
    #[error("metadata buffer at IOVA {iova:#x} is not dword aligned")]
    MetadataNotDwordAligned {
        /// Its IOVA.
        iova: u64,
    },
    /// A metadata buffer on a namespace whose format has no metadata.
    #[error("namespace {nsid} is formatted without metadata: drop the metadata buffer")]
    MetadataWithoutFormat {
        /// The namespace.
        nsid: Nsid,
    },
    /// A separate metadata buffer on an extended LBA format.
    #[error(
        "namespace {nsid} uses an extended LBA format: its metadata travels in the data buffer \
         after each block ({block_bytes} bytes per block), not in a separate buffer"
    )]
    MetadataInDataBuffer {
        /// The namespace.
        nsid: Nsid,
        /// Data buffer bytes per block.
        block_bytes: u32,
    },
    /// PI options on a namespace without protection information.
    #[error("namespace {nsid} is formatted without protection information: drop the PI options")]
    PiWithoutProtection {
        /// The namespace.
        nsid: Nsid,
    },
    /// A PI option the namespace's PI type does not allow.
    #[error("namespace {nsid}: {what}")]
    PiOption {
        /// The namespace.
        nsid: Nsid,
        /// What is wrong.
        what: &'static str,
    },
    /// A type 1 request whose initial reference tag is not its LBA's.
    #[error(
        "namespace {nsid} has PI type 1: the reference tag must be the LBA's low bits ({want:#x}), not {given:#x}"
    )]
    RefTagNotLba {
        /// The namespace.
        nsid: Nsid,
        /// The tag given.
        given: u64,
        /// The tag type 1 requires.
        want: u64,
    },
    /// A write marked atomic that cannot be sent as one atomic command.
    #[error("atomic write refused: {0}")]
    NotAtomic(AtomicRefusal),
    /// A raw command's buffer cannot be described by PRPs.
    #[error("the buffer cannot be described by PRPs: {0}")]
    NotDescribable(nvme_dio_queue::PrpError),
}

/// Why a write marked atomic was refused (nothing was queued). The limits are the
/// namespace's [`crate::AtomicLimits`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AtomicRefusal {
    /// More blocks than the atomic write unit (power fail).
    #[error(
        "{blocks} blocks is more than the namespace's atomic write unit of {limit} blocks \
         (AWUPF/NAWUPF): write at most {limit} blocks per atomic write"
    )]
    TooLarge {
        /// Blocks asked for.
        blocks: u64,
        /// The atomic write unit.
        limit: u32,
    },
    /// The write crosses an atomic boundary (NABSPF/NABO).
    #[error(
        "blocks {slba}..{slba}+{blocks} cross an atomic boundary (every {boundary} blocks from \
         block {offset}): split the write at the boundary"
    )]
    CrossesBoundary {
        /// First block.
        slba: u64,
        /// Blocks.
        blocks: u64,
        /// Boundary size.
        boundary: u32,
        /// Boundary offset.
        offset: u32,
    },
    /// The write would go out as several commands (MDTS, NOIOB, the buffers' shape).
    #[error(
        "it would go out as {commands} commands (the transfer limit, the optimal I/O boundary \
         or the buffers' page alignment): use one page-aligned buffer within max_transfer"
    )]
    WouldSplit {
        /// Commands the planner cut it into.
        commands: usize,
    },
}

/// A controller or queue pair option out of range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadOption {
    /// `ControllerOptions::admin_entries`.
    #[error("ControllerOptions::admin_entries {given} (2..=4096)")]
    AdminEntries {
        /// The value given.
        given: u32,
    },
    /// `QueuePairOptions::entries`.
    #[error("QueuePairOptions::entries {given} (2..={max})")]
    QueueEntries {
        /// The value given.
        given: u32,
        /// CAP.MQES + 1.
        max: u32,
    },
    /// Interrupt mode without MSI-X vectors.
    #[error(
        "QueuePairOptions::mode Interrupt needs MSI-X vector {vector}, but {enabled} are enabled \
         (ControllerOptions::interrupts)"
    )]
    NoVector {
        /// The vector needed.
        vector: u16,
        /// Vectors enabled.
        enabled: usize,
    },
    /// `Coalescing::new` out of range.
    #[error(
        "interrupt coalescing threshold {threshold} (1..=255) or time {time:?} (at most 25.5 ms)"
    )]
    Coalescing {
        /// The threshold given.
        threshold: u8,
        /// The time given.
        time: std::time::Duration,
    },
    /// A poll-mode queue pair offered to a poll group that sleeps on interrupts.
    #[error(
        "queue pair {qid} has no interrupt, and this poll group sleeps on interrupts: create it \
         with CompletionMode::Interrupt, or use GroupMode::Poll"
    )]
    GroupNeedsInterrupt {
        /// The queue pair's qid.
        qid: u16,
    },
}

/// Something a namespace or controller may lack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Feature {
    /// The Write Zeroes command (ONCS bit 3).
    #[error("Write Zeroes")]
    WriteZeroes,
    /// Dataset Management with deallocate (ONCS bit 2).
    #[error("Dataset Management (deallocate)")]
    Deallocate,
    /// Protection information with a 32-bit guard (PIF 01b).
    #[error("protection information with the 32-bit guard format")]
    Guard32,
    /// The Verify command (ONCS bit 7).
    #[error("Verify")]
    Verify,
    /// The Copy command with format 0 source ranges (ONCS bit 8, OCFS bit 0).
    #[error("Copy")]
    Copy,
    /// An interrupt eventfd on a poll-mode queue pair.
    #[error(
        "an interrupt eventfd on a poll-mode queue pair (create it with CompletionMode::Interrupt)"
    )]
    InterruptFd,
    /// Interrupt coalescing (Set Features 08h) refused by the controller.
    #[error(
        "interrupt coalescing (Set Features 08h refused with {status}; QEMU 7.2 does so: leave \
         ControllerOptions::coalescing unset)"
    )]
    InterruptCoalescing {
        /// What the controller answered.
        status: Status,
    },
}

/// Why a request in flight was aborted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AbortReason {
    /// The controller was reset (it dropped its queues; DMA had stopped).
    #[error("the controller was reset")]
    Reset,
    /// A reset failed: the controller is unusable, and the buffers are kept from reuse.
    #[error("the controller was reset, and did not come back")]
    ResetFailed,
    /// The queue pair was dropped.
    #[error("the queue pair was deleted")]
    QueueDeleted,
    /// A panic left the admin queue in an unknown state.
    #[error("the admin queue was left in an unknown state by a panic")]
    AdminPoisoned,
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
            Error::Command { status, .. }
            | Error::GuardCheck { status, .. }
            | Error::AppTagCheck { status, .. }
            | Error::RefTagCheck { status, .. } => Some(*status),
            Error::BringUp { source, .. } => source.status(),
            _ => None,
        }
    }
}

/// An error and its causes on one line, `outer: cause: root cause`, for messages and logs.
///
/// Each [`Error`] message says only its own part and names the rest as its `source()`, so a
/// caller that prints `{e}` sees the outermost part; print `Report(&e)` for the whole story.
#[derive(Clone, Copy, Debug)]
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// What kind of failure an [`Error`] is, for callers that react by kind (retry, give up,
/// fix the input) and for the C ABI's status codes. Every variant maps to exactly one kind,
/// in one exhaustive match ([`Error::kind`]), so a new variant cannot go unmapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The device completed the command with an error status.
    Device,
    /// A command or a wait ran out of time.
    Timeout,
    /// The caller's input or options are invalid: fix them (nothing reached the device).
    InvalidInput,
    /// A block range past the namespace's end, or a namespace that does not exist.
    OutOfRange,
    /// The controller or namespace cannot do this.
    Unsupported,
    /// No free slot or queue now: complete some requests, then resubmit.
    QueueFull,
    /// The request was in flight when the controller was reset or the queue pair deleted:
    /// resubmit it (a write may or may not have reached the medium).
    Aborted,
    /// The device is gone or unusable.
    NoDevice,
    /// DMA memory could not be had.
    NoMemory,
    /// The operating system refused (VFIO, eventfds).
    System,
    /// The controller behaved in a way it must not, or the driver has a bug.
    Internal,
}

impl Error {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::BringUp { source, .. } => match source.kind() {
                ErrorKind::NoMemory | ErrorKind::InvalidInput | ErrorKind::System => source.kind(),
                ErrorKind::Unsupported => ErrorKind::Unsupported,
                _ => ErrorKind::NoDevice,
            },
            Error::ReadyTimeout { .. } | Error::Timeout { .. } | Error::AdminTimeout { .. } => {
                ErrorKind::Timeout
            }
            Error::ControllerFatal { .. } | Error::DeviceGone { .. } => ErrorKind::NoDevice,
            Error::Unsupported(_) | Error::NotSupported(_) => ErrorKind::Unsupported,
            Error::Nonsense(_) | Error::DataPointer { .. } => ErrorKind::Internal,
            Error::Command { .. }
            | Error::GuardCheck { .. }
            | Error::AppTagCheck { .. }
            | Error::RefTagCheck { .. } => ErrorKind::Device,
            Error::Invalid(_)
            | Error::Bad(_)
            | Error::BadOption(_)
            | Error::ForeignBuffer { .. } => ErrorKind::InvalidInput,
            Error::NoSuchNamespace { .. }
            | Error::NamespaceRemoved { .. }
            | Error::OutOfRange { .. } => ErrorKind::OutOfRange,
            Error::QueueFull { .. } | Error::NoFreeQueue { .. } => ErrorKind::QueueFull,
            Error::Aborted(AbortReason::Reset | AbortReason::QueueDeleted) => ErrorKind::Aborted,
            Error::Aborted(AbortReason::ResetFailed | AbortReason::AdminPoisoned) => {
                ErrorKind::NoDevice
            }
            Error::QueueLost { .. } => ErrorKind::NoDevice,
            Error::BuffersHeld { cause, .. } => cause.kind(),
            Error::Dma(
                nvme_dio_dma::Error::InvalidArgument { .. }
                | nvme_dio_dma::Error::RegisterUnaligned { .. }
                | nvme_dio_dma::Error::RegisterOverlaps { .. }
                | nvme_dio_dma::Error::RegistrationBusy { .. },
            ) => ErrorKind::InvalidInput,
            Error::Dma(_) => ErrorKind::NoMemory,
            Error::Wait(_) => ErrorKind::System,
        }
    }

    /// The whole chain of causes, as [`Report`] prints it.
    pub fn report(&self) -> String {
        Report(self).to_string()
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
            n::VERIFY => "Verify",
            n::COPY => "Copy",
            _ => "I/O command",
        }
    }
}
