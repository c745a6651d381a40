//! What a controller is brought up with ([`ControllerOptions`]) and what it said about
//! itself ([`ControllerInfo`]).

use std::sync::Arc;
use std::time::Duration;

use nvme_dio_dma::{MemoryOptions, PageKind};
use nvme_dio_queue::PageSize;
use nvme_dio_queue::identify::IdentifyController;
use nvme_dio_queue::regs::{Cap, Version};

use crate::error::{BadOption, Error};

/// How to bring a controller up. Start from `ControllerOptions::default()` and change what
/// you need with the setters (`.io_queues(4).interrupts(false)`): new options can then be
/// added without breaking callers.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ControllerOptions {
    /// I/O queue pairs to ask the controller for (Set Features, Number of Queues).
    pub io_queues: u16,
    /// Admin queue entries.
    pub admin_entries: u32,
    /// Deadline for each admin command.
    pub admin_timeout: Duration,
    /// PRP list pages each I/O slot owns. One page holds `page / 8` entries; more pages
    /// allow transfers past 2 MiB (at 4 KiB pages) where MDTS allows, chaining the lists.
    pub prp_list_pages: usize,
    /// Use SGLs where the controller supports them and they save commands.
    pub use_sgl: bool,
    /// DMA memory settings (hugepage size, fallback to ordinary pages).
    pub memory: MemoryOptions,
    /// Enable MSI-X at bring-up so queue pairs can run in interrupt mode.
    pub interrupts: bool,
    /// Interrupt coalescing (Set Features 08h) to program at bring-up and after every
    /// reset; `None` leaves the controller's default (usually off: one interrupt per
    /// completion batch).
    pub coalescing: Option<Coalescing>,
    /// Use shadow doorbells (Doorbell Buffer Config, OACS bit 8) when the controller offers
    /// them: I/O queue doorbells go to a page in host memory, and the register is written
    /// only when the controller's EventIdx asks for it (as Linux does). Set up at bring-up
    /// and after every reset. Off by default, because they did not pay on the only
    /// controller measured: QEMU 7.2 in a TCG guest (`ci/vm-bench --only nvme-dio`, 4 KiB
    /// random reads, on / off IOPS) gave about 1.1 at QD 1 (noisy) and 0.7-0.85 at QD 8 and
    /// 32, 0.5 (poll) at QD 128: QEMU reads the shadow entry and writes EventIdx by DMA for
    /// every command, on the thread that is the ceiling at depth. A controller that does
    /// the same in hardware may well differ: measure before turning them on.
    pub shadow_doorbells: bool,
}

/// Interrupt Coalescing (NVMe Base 2.0, 5.27.1.5, Feature 08h): the controller delays an
/// I/O completion interrupt until `threshold` completions are pending or `time_100us`
/// hundreds of microseconds passed since the first, whichever comes first. Fewer
/// interrupts (less CPU per I/O in interrupt and hybrid mode) against latency at low queue
/// depth. The admin queue is never coalesced.
///
/// ```
/// use std::time::Duration;
/// use nvme_dio::{Coalescing, ControllerOptions};
/// let c = Coalescing::new(8, Duration::from_micros(200))?;
/// assert_eq!((c.threshold, c.time_100us), (8, 2));
/// let opts = ControllerOptions::default().coalescing(Some(c));
/// # let _ = opts;
/// # Ok::<(), nvme_dio::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Coalescing {
    /// Aggregation threshold: completions per interrupt, 1..=255 (encoded 0's based).
    pub threshold: u8,
    /// Aggregation time, in 100 microsecond units (0 = no time limit from this field).
    pub time_100us: u8,
}

impl Coalescing {
    /// `threshold` completions (1..=255) or `time` (rounded up to 100 us, at most 25.5 ms).
    ///
    /// # Errors
    ///
    /// [`Error::BadOption`] with [`BadOption::Coalescing`] when a value is out of range.
    pub fn new(threshold: u8, time: Duration) -> Result<Coalescing, Error> {
        let units = time.as_micros().div_ceil(100);
        if threshold == 0 || units > u8::MAX as u128 {
            return Err(Error::BadOption(BadOption::Coalescing { threshold, time }));
        }
        Ok(Coalescing {
            threshold,
            time_100us: units as u8,
        })
    }

    /// The aggregation time.
    pub fn time(&self) -> Duration {
        Duration::from_micros(self.time_100us as u64 * 100)
    }
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            io_queues: 16,
            admin_entries: 32,
            admin_timeout: Duration::from_secs(10),
            prp_list_pages: 1,
            use_sgl: true,
            memory: MemoryOptions::default()
                .page(PageKind::Huge2M)
                .region_bytes(32 << 20)
                .allow_fallback(false),
            interrupts: true,
            coalescing: None,
            shadow_doorbells: false,
        }
    }
}

impl ControllerOptions {
    /// I/O queue pairs to ask the controller for.
    pub fn io_queues(mut self, n: u16) -> Self {
        self.io_queues = n;
        self
    }
    /// Admin queue entries.
    pub fn admin_entries(mut self, n: u32) -> Self {
        self.admin_entries = n;
        self
    }
    /// Deadline of each admin command.
    pub fn admin_timeout(mut self, t: Duration) -> Self {
        self.admin_timeout = t;
        self
    }
    /// PRP list pages each I/O slot owns.
    pub fn prp_list_pages(mut self, n: usize) -> Self {
        self.prp_list_pages = n;
        self
    }
    /// Use SGLs where the controller supports them and they save commands.
    pub fn use_sgl(mut self, on: bool) -> Self {
        self.use_sgl = on;
        self
    }
    /// DMA memory settings.
    pub fn memory(mut self, m: MemoryOptions) -> Self {
        self.memory = m;
        self
    }
    /// Enable MSI-X at bring-up (interrupt-mode queue pairs need it).
    pub fn interrupts(mut self, on: bool) -> Self {
        self.interrupts = on;
        self
    }
    /// Interrupt coalescing to program at bring-up and after resets.
    pub fn coalescing(mut self, c: Option<Coalescing>) -> Self {
        self.coalescing = c;
        self
    }

    /// Shadow doorbells on or off (see the field).
    pub fn shadow_doorbells(mut self, on: bool) -> Self {
        self.shadow_doorbells = on;
        self
    }
}

/// What Identify Controller and the registers said, for users and tools.
#[derive(Clone, Debug)]
pub struct ControllerInfo {
    /// PCI vendor id.
    pub vid: u16,
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
    /// Firmware revision.
    pub firmware: String,
    /// NVMe version (VS register).
    pub version: Version,
    /// CAP register.
    pub cap: Cap,
    /// MDTS as reported (0 = no limit).
    pub mdts: u8,
    /// Max transfer the driver uses per command, bytes.
    pub max_transfer: u32,
    /// Controller page size in use (CC.MPS).
    pub page_size: PageSize,
    /// I/O queue pairs granted.
    pub io_queues: u16,
    /// MSI-X vectors enabled.
    pub msix_vectors: u32,
    /// SGL support.
    pub sgl: bool,
    /// Shadow doorbells in use (asked for, and the controller offers them).
    pub shadow_doorbells: bool,
    /// Namespaces the controller supports at most (NN).
    pub max_namespaces: u32,
    /// How long a change of CSTS.RDY may take: CAP.TO, or CRTO's ready-with-media timeout
    /// where the controller reports one (NVMe 2.0); at least 500 ms.
    pub ready_timeout: Duration,
    /// How long an orderly shutdown may take: RTD3E where reported, else CAP.TO (1..=60 s).
    pub shutdown_timeout: Duration,
    /// Interrupt coalescing programmed (and programmed again after each reset).
    pub coalescing: Option<Coalescing>,
    /// The full Identify Controller page.
    pub identify: Arc<IdentifyController>,
}
