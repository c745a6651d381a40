//! A write-ahead log with group commit, the way a database embeds nvme-dio.
//!
//! ## Model
//!
//! - Many writer threads call [`WalHandle::append`]; each call blocks until its record is
//!   durable and returns the record's log sequence number ([`Lsn`]).
//! - One I/O thread owns the queue pair. It takes every record waiting in the channel,
//!   packs them into one block-aligned batch (group commit), and writes the batch with Force
//!   Unit Access ([`Durability::Fua`]) or a write then a Flush ([`Durability::Flush`]).
//!   Up to [`WalConfig::depth`] batches are in flight; acknowledgements go out strictly in
//!   LSN order, so "record n is acknowledged" always implies "records 1..n are durable".
//! - On disk, from [`WalConfig::start_lba`]: one header block (magic, epoch, CRC), then the
//!   batches. A batch is records packed back to back, each a 32-byte header (magic, length,
//!   LSN, epoch, CRC-32C of header and payload) and its payload, zero-padded to a whole
//!   block. Every fresh log gets a new epoch, so records of an older log never pass as this
//!   one's.
//! - [`recover`] reads the log back and returns the intact prefix: records with the log's
//!   epoch, consecutive LSNs from 1, valid CRCs. It stops at the first torn or missing
//!   batch; every acknowledged record lies before that point.
//!
//! ```
//! use std::sync::Arc;
//! use nvme_dio::{Controller, ControllerOptions, MemoryOptions};
//! use nvme_dio_emu::{EmuConfig, EmuFunction, NsConfig};
//! use nvme_dio_examples::wal::{Wal, WalConfig, recover};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Arc::new(EmuFunction::new(EmuConfig {
//!     namespaces: vec![NsConfig::ram(4096, 4096)],
//!     ..EmuConfig::default()
//! })?);
//! let opts = ControllerOptions::default().memory(MemoryOptions::any_pages(8 << 20));
//! let ctrl = Controller::new(dev, opts)?;
//! let cfg = WalConfig { log_blocks: 1024, ..WalConfig::default() };
//!
//! let wal = Wal::start(ctrl.clone(), cfg.clone())?;
//! let log = wal.handle();
//! let writers: Vec<_> = (0..4)
//!     .map(|w| {
//!         let log = log.clone();
//!         std::thread::spawn(move || log.append(format!("record from writer {w}").into_bytes()))
//!     })
//!     .collect();
//! for w in writers {
//!     w.join().unwrap()?; // durable once append returns
//! }
//! wal.shutdown()?;
//!
//! let found = recover(&ctrl, &cfg)?;
//! assert_eq!(found.records.len(), 4);
//! assert_eq!(found.last_lsn(), 4);
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nvme_dio::{Controller, DmaBuf, Lba, Namespace, PciFunction, QueuePairOptions};

/// A log sequence number: records are numbered 1, 2, 3... in log order.
pub type Lsn = u64;

const HEADER_MAGIC: u64 = u64::from_le_bytes(*b"NVDWALH1");
const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"WALR");
/// Bytes of a record header: magic 4, length 4, LSN 8, epoch 8, CRC 4, reserved 4.
pub const RECORD_HEADER: usize = 32;

/// How a batch is made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Each batch is written with Force Unit Access.
    #[default]
    Fua,
    /// Batches are written normally; a Flush after they complete makes them durable.
    Flush,
    /// Batches are written normally and acknowledged when the write completes, with neither
    /// FUA nor Flush: records still in the controller's volatile write cache are lost on a
    /// power cut. Only for tests that show what the other two buy; never for data.
    Volatile,
}

/// Where the log lives and how it commits.
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Namespace.
    pub nsid: u32,
    /// First block of the log (its header block).
    pub start_lba: u64,
    /// Blocks the log may use, header included (0: up to the end of the namespace).
    pub log_blocks: u64,
    /// Largest batch, bytes (rounded down to whole blocks; at most the namespace's max
    /// transfer).
    pub max_batch_bytes: usize,
    /// Batches in flight at once.
    pub depth: usize,
    /// FUA writes, or write + flush.
    pub durability: Durability,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            nsid: 1,
            start_lba: 0,
            log_blocks: 0,
            max_batch_bytes: 128 << 10,
            depth: 4,
            durability: Durability::Fua,
        }
    }
}

/// Errors of the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The driver failed (bring-up, submission or a completion).
    #[error("nvme-dio: {}", .0.report())]
    Driver(#[from] nvme_dio::Error),
    /// DMA memory failed.
    #[error("DMA memory: {0}")]
    Dma(#[from] nvme_dio_dma::Error),
    /// The log region is full.
    #[error("the log is full ({blocks} blocks); start a new log or give it more blocks")]
    LogFull {
        /// Blocks in the log region.
        blocks: u64,
    },
    /// A record does not fit in one batch.
    #[error("a record of {len} bytes does not fit a batch (at most {max}); raise max_batch_bytes")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The largest payload.
        max: usize,
    },
    /// The configuration cannot work.
    #[error("bad WAL configuration: {0}")]
    Config(String),
    /// The I/O thread is gone (shut down, crashed, or failed: see `Wal::shutdown`).
    #[error("the log's I/O thread has stopped")]
    Closed,
    /// The durability hook asked for a simulated crash.
    #[error("simulated crash after LSN {lsn}")]
    Crashed {
        /// The last LSN acknowledged before the crash.
        lsn: Lsn,
    },
}

// ---- CRC-32C (Castagnoli), table-driven ----------------------------------------------------

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0x82f6_3b78 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32C of `data`, continuing from `crc` (start with 0).
pub fn crc32c(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

fn record_crc(len: u32, lsn: Lsn, epoch: u64, payload: &[u8]) -> u32 {
    let mut h = [0u8; 20];
    h[..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..16].copy_from_slice(&lsn.to_le_bytes());
    h[16..20].copy_from_slice(&(epoch as u32).to_le_bytes());
    crc32c(crc32c(0, &h), payload)
}

fn encode_record(out: &mut Vec<u8>, lsn: Lsn, epoch: u64, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&record_crc(len, lsn, epoch, payload).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(payload);
}

fn header_block(epoch: u64, block: usize) -> Vec<u8> {
    let mut b = vec![0u8; block];
    b[..8].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
    b[8..16].copy_from_slice(&epoch.to_le_bytes());
    let crc = crc32c(0, &b[..16]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    b
}

fn parse_header(b: &[u8]) -> Option<u64> {
    let magic = u64::from_le_bytes(b[..8].try_into().ok()?);
    let crc = u32::from_le_bytes(b[16..20].try_into().ok()?);
    (magic == HEADER_MAGIC && crc == crc32c(0, &b[..16]))
        .then(|| u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")))
}

// ---- geometry ------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Geometry {
    ns: Namespace,
    block: usize,
    /// First record block.
    first: u64,
    /// One past the last block of the log.
    end: u64,
    /// Batch size limit, bytes (whole blocks).
    batch: usize,
}

fn geometry<D: PciFunction>(ctrl: &Controller<D>, cfg: &WalConfig) -> Result<Geometry, WalError> {
    let ns = ctrl.namespace(cfg.nsid)?.clone();
    let block = ns.lba_size() as usize;
    let end = match cfg.log_blocks {
        0 => ns.blocks(),
        n => cfg.start_lba.saturating_add(n).min(ns.blocks()),
    };
    if cfg.start_lba + 2 > end {
        return Err(WalError::Config(format!(
            "log at block {} of {} blocks leaves no room for records",
            cfg.start_lba,
            ns.blocks()
        )));
    }
    let batch = cfg.max_batch_bytes.min(ns.max_transfer() as usize) / block * block;
    if batch < block || cfg.depth == 0 {
        return Err(WalError::Config(format!(
            "max_batch_bytes {} is under one block ({block}), or depth is 0",
            cfg.max_batch_bytes
        )));
    }
    Ok(Geometry {
        ns,
        block,
        first: cfg.start_lba + 1,
        end,
        batch,
    })
}

// ---- appending -----------------------------------------------------------------------------

struct Append {
    payload: Vec<u8>,
    ack: SyncSender<Result<Lsn, WalError>>,
}

/// What writers (and shutdown) send the I/O thread.
enum Msg {
    Append(Append),
    /// Finish what was sent before this, then stop.
    Stop,
}

/// Called on the I/O thread for every record as it becomes durable, in LSN order, before
/// its writer is told. Return `false` to simulate a crash right there: the I/O thread stops
/// at once, acknowledging nothing more and abandoning the batches in flight.
pub type DurableHook = Box<dyn FnMut(Lsn) -> bool + Send>;

/// A running log: the I/O thread and the way to reach it.
#[derive(Debug)]
pub struct Wal {
    tx: Option<Sender<Msg>>,
    thread: Option<JoinHandle<Result<WalStats, WalError>>>,
    epoch: u64,
    max_payload: usize,
}

/// A cheap, cloneable, `Send` handle for writer threads.
#[derive(Clone, Debug)]
pub struct WalHandle {
    tx: Sender<Msg>,
    max_payload: usize,
}

/// What the I/O thread did.
#[derive(Clone, Debug, Default)]
pub struct WalStats {
    /// Records made durable and acknowledged.
    pub records: u64,
    /// Batches written.
    pub batches: u64,
    /// Flush commands (with [`Durability::Flush`]).
    pub flushes: u64,
    /// Payload bytes.
    pub payload_bytes: u64,
    /// Blocks written, padding included.
    pub blocks: u64,
    /// The last LSN acknowledged.
    pub last_lsn: Lsn,
}

impl WalHandle {
    /// Appends a record and blocks until it is durable; returns its LSN.
    ///
    /// # Errors
    ///
    /// [`WalError::TooLarge`] for a payload over the batch size; [`WalError::Closed`] if the
    /// I/O thread stopped before the record was durable (the record may or may not be in
    /// the log; it was not acknowledged); [`WalError::LogFull`] when the region is full.
    pub fn append(&self, payload: Vec<u8>) -> Result<Lsn, WalError> {
        if payload.len() > self.max_payload {
            return Err(WalError::TooLarge {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        let (ack, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Msg::Append(Append { payload, ack }))
            .map_err(|_| WalError::Closed)?;
        rx.recv().map_err(|_| WalError::Closed)?
    }
}

impl Wal {
    /// Starts a fresh log: writes its header (new epoch, durable) and starts the I/O thread
    /// with its own queue pair.
    ///
    /// # Errors
    ///
    /// [`WalError::Config`] for a region or batch size that cannot work; driver errors from
    /// creating the queue pair or writing the header.
    pub fn start<D: PciFunction>(ctrl: Controller<D>, cfg: WalConfig) -> Result<Wal, WalError> {
        Wal::start_with_hook(ctrl, cfg, None)
    }

    /// [`Wal::start`] with a hook called as each record becomes durable (see
    /// [`DurableHook`]).
    ///
    /// # Errors
    ///
    /// As [`Wal::start`].
    pub fn start_with_hook<D: PciFunction>(
        ctrl: Controller<D>,
        cfg: WalConfig,
        hook: Option<DurableHook>,
    ) -> Result<Wal, WalError> {
        let geo = geometry(&ctrl, &cfg)?;
        let mut qp = ctrl
            .create_io_qpair(QueuePairOptions::default().entries((cfg.depth as u32 + 2).max(8)))?;
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (std::process::id() as u64) << 40
            | 1;
        // The header, durable before any record: recovery finds the epoch there.
        let hdr = ctrl.memory().alloc(geo.block, geo.block.min(4096))?;
        hdr.copy_from_slice(0, &header_block(epoch, geo.block))?;
        qp.write_fua(&geo.ns, Lba(cfg.start_lba), hdr, 0)
            .map_err(|r| WalError::Driver(*r.error))?;
        loop {
            qp.wait(Duration::from_millis(100))?;
            if let Some(c) = qp.next_completion() {
                c.result?;
                break;
            }
        }
        let mut bufs = Vec::with_capacity(cfg.depth);
        for _ in 0..cfg.depth {
            bufs.push(ctrl.memory().alloc(geo.batch, geo.block.min(4096))?);
        }
        let (tx, rx) = mpsc::channel();
        let max_payload = geo.batch - RECORD_HEADER;
        let io = IoThread {
            qp,
            geo,
            cfg,
            epoch,
            rx,
            free: bufs,
            next_lba: 0,
            next_lsn: 1,
            next_batch: 0,
            inflight: VecDeque::new(),
            flush: None,
            written_upto: 0,
            stats: WalStats::default(),
            hook,
            scratch: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("wal-io".into())
            .spawn(move || io.run())
            .map_err(|e| WalError::Config(format!("cannot spawn the I/O thread: {e}")))?;
        Ok(Wal {
            tx: Some(tx),
            thread: Some(thread),
            epoch,
            max_payload,
        })
    }

    /// The log's epoch (printed by tools, checked by recovery).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A handle for a writer thread.
    pub fn handle(&self) -> WalHandle {
        WalHandle {
            tx: self.tx.clone().expect("running"),
            max_payload: self.max_payload,
        }
    }

    /// Stops accepting records, waits for every accepted one to be acknowledged, and stops
    /// the I/O thread (handles still held by writers then get [`WalError::Closed`]).
    ///
    /// # Errors
    ///
    /// The error that stopped the I/O thread, if one did.
    pub fn shutdown(mut self) -> Result<WalStats, WalError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<WalStats, WalError> {
        if let Some(tx) = self.tx.take() {
            // Fails only if the thread already stopped; join says why.
            let _ = tx.send(Msg::Stop);
        }
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| WalError::Closed)?,
            None => Err(WalError::Closed),
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop();
        }
    }
}

struct Batch {
    id: u64,
    first_lsn: Lsn,
    acks: Vec<SyncSender<Result<Lsn, WalError>>>,
    written: bool,
    buf: Option<DmaBuf>,
}

struct IoThread<D: PciFunction> {
    qp: nvme_dio::IoQueuePair<D>,
    geo: Geometry,
    cfg: WalConfig,
    epoch: u64,
    rx: Receiver<Msg>,
    free: Vec<DmaBuf>,
    /// Blocks used after `geo.first`.
    next_lba: u64,
    next_lsn: Lsn,
    next_batch: u64,
    /// Oldest first; acknowledged from the front only.
    inflight: VecDeque<Batch>,
    /// The flush in flight and the batch id it covers (every batch below it was written).
    flush: Option<u64>,
    /// With write+flush: batches below this id are durable.
    written_upto: u64,
    stats: WalStats,
    hook: Option<DurableHook>,
    scratch: Vec<u8>,
}

/// Tag of a flush command (batch ids count up from 0 and never get there).
const FLUSH_TAG: u64 = u64::MAX;

impl<D: PciFunction> IoThread<D> {
    fn run(mut self) -> Result<WalStats, WalError> {
        let mut waiting: VecDeque<Append> = VecDeque::new();
        let mut open = true;
        loop {
            // Gather: block only when nothing is in flight.
            if open {
                if self.inflight.is_empty() && waiting.is_empty() {
                    match self.rx.recv_timeout(Duration::from_millis(100)) {
                        Ok(Msg::Append(a)) => waiting.push_back(a),
                        Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => open = false,
                        Err(RecvTimeoutError::Timeout) => continue,
                    }
                }
                while open {
                    match self.rx.try_recv() {
                        Ok(Msg::Append(a)) => waiting.push_back(a),
                        Ok(Msg::Stop) | Err(TryRecvError::Disconnected) => open = false,
                        Err(TryRecvError::Empty) => break,
                    }
                }
            }
            if !open && waiting.is_empty() && self.inflight.is_empty() {
                return Ok(self.stats);
            }
            // Commit: one batch per free buffer, as big as what is waiting.
            while !waiting.is_empty() && !self.free.is_empty() {
                self.submit_batch(&mut waiting)?;
            }
            // Reap, then acknowledge in LSN order.
            self.qp.poll();
            while let Some(c) = self.qp.next_completion() {
                c.result?;
                if c.tag == FLUSH_TAG {
                    self.stats.flushes += 1;
                    self.written_upto = self.flush.take().expect("a flush was in flight");
                } else if let Some(b) = self.inflight.iter_mut().find(|b| b.id == c.tag) {
                    b.written = true;
                    b.buf = c.bufs.into_one();
                }
            }
            if self.cfg.durability == Durability::Flush && self.flush.is_none() {
                // Flush everything written so far, if something is waiting for it.
                let upto = self
                    .inflight
                    .iter()
                    .take_while(|b| b.written)
                    .last()
                    .map(|b| b.id + 1);
                if let Some(upto) = upto.filter(|&u| u > self.written_upto) {
                    self.qp
                        .flush(&self.geo.ns, FLUSH_TAG)
                        .map_err(|r| WalError::Driver(*r.error))?;
                    self.flush = Some(upto);
                }
            }
            self.acknowledge()?;
        }
    }

    fn submit_batch(&mut self, waiting: &mut VecDeque<Append>) -> Result<(), WalError> {
        let mut buf = self.free.pop().expect("a free buffer");
        self.scratch.clear();
        let first_lsn = self.next_lsn;
        let mut acks = Vec::new();
        while let Some(a) = waiting.front() {
            let need = RECORD_HEADER + a.payload.len();
            if need > self.geo.batch {
                let a = waiting.pop_front().expect("front");
                let _ = a.ack.send(Err(WalError::TooLarge {
                    len: a.payload.len(),
                    max: self.geo.batch - RECORD_HEADER,
                }));
                continue;
            }
            if self.scratch.len() + need > self.geo.batch {
                break;
            }
            let a = waiting.pop_front().expect("front");
            encode_record(&mut self.scratch, self.next_lsn, self.epoch, &a.payload);
            self.stats.payload_bytes += a.payload.len() as u64;
            self.next_lsn += 1;
            acks.push(a.ack);
        }
        if acks.is_empty() {
            self.free.push(buf);
            return Ok(());
        }
        let blocks = self.scratch.len().div_ceil(self.geo.block);
        self.scratch.resize(blocks * self.geo.block, 0);
        let lba = self.geo.first + self.next_lba;
        if lba + blocks as u64 > self.geo.end {
            let blocks = self.geo.end - self.cfg.start_lba;
            for a in acks {
                let _ = a.send(Err(WalError::LogFull { blocks }));
            }
            self.next_lsn = first_lsn;
            self.free.push(buf);
            return Err(WalError::LogFull { blocks });
        }
        buf.reset_view();
        buf.set_view(0, self.scratch.len())?;
        buf.copy_from_slice(0, &self.scratch)?;
        let id = self.next_batch;
        let r = match self.cfg.durability {
            Durability::Fua => self.qp.write_fua(&self.geo.ns, Lba(lba), buf, id),
            Durability::Flush | Durability::Volatile => {
                self.qp.write(&self.geo.ns, Lba(lba), buf, id)
            }
        };
        r.map_err(|r| WalError::Driver(*r.error))?;
        self.next_batch += 1;
        self.next_lba += blocks as u64;
        self.stats.batches += 1;
        self.stats.blocks += blocks as u64;
        self.inflight.push_back(Batch {
            id,
            first_lsn,
            acks,
            written: false,
            buf: None,
        });
        Ok(())
    }

    fn acknowledge(&mut self) -> Result<(), WalError> {
        while let Some(b) = self.inflight.front() {
            let durable =
                b.written && (self.cfg.durability != Durability::Flush || b.id < self.written_upto);
            if !durable {
                break;
            }
            let mut b = self.inflight.pop_front().expect("front");
            for (i, ack) in b.acks.drain(..).enumerate() {
                let lsn = b.first_lsn + i as u64;
                if let Some(hook) = self.hook.as_mut()
                    && !hook(lsn)
                {
                    // The simulated crash: nothing more is acknowledged; batches in flight
                    // are abandoned with the queue pair.
                    return Err(WalError::Crashed {
                        lsn: self.stats.last_lsn,
                    });
                }
                self.stats.records += 1;
                self.stats.last_lsn = lsn;
                let _ = ack.send(Ok(lsn));
            }
            if let Some(buf) = b.buf.take() {
                self.free.push(buf);
            }
        }
        Ok(())
    }
}

// ---- recovery ------------------------------------------------------------------------------

/// One record found by recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its LSN.
    pub lsn: Lsn,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// The intact prefix of a log.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// The log's epoch (None: no valid header, so no log).
    pub epoch: Option<u64>,
    /// The records, LSN 1 first, consecutive.
    pub records: Vec<Record>,
    /// Blocks the log occupies after the header (where the next batch would go).
    pub end_block: u64,
}

impl Recovered {
    /// The last intact LSN (0 if none).
    pub fn last_lsn(&self) -> Lsn {
        self.records.last().map_or(0, |r| r.lsn)
    }
}

/// Reads the log back and returns its intact prefix.
///
/// # Errors
///
/// [`WalError::Config`] for a region that cannot hold a log; driver errors from reading.
pub fn recover<D: PciFunction>(
    ctrl: &Controller<D>,
    cfg: &WalConfig,
) -> Result<Recovered, WalError> {
    let geo = geometry(ctrl, cfg)?;
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default())?;
    let chunk_blocks = (geo.batch / geo.block).max(1) as u64;
    let buf = ctrl.memory().alloc(geo.batch, geo.block.min(4096))?;
    let read = |qp: &mut nvme_dio::IoQueuePair<D>, lba: u64, blocks: u64, mut buf: DmaBuf| {
        buf.reset_view();
        buf.set_view(0, blocks as usize * geo.block)?;
        qp.read(&geo.ns, Lba(lba), buf, 0)
            .map_err(|r| WalError::Driver(*r.error))?;
        loop {
            qp.wait(Duration::from_millis(100))?;
            if let Some(c) = qp.next_completion() {
                c.result?;
                let buf = c.bufs.into_one().expect("one buffer");
                let mut bytes = vec![0u8; buf.len()];
                buf.copy_to_slice(0, &mut bytes)?;
                return Ok::<_, WalError>((buf, bytes));
            }
        }
    };
    let (mut buf, hdr) = read(&mut qp, cfg.start_lba, 1, buf)?;
    let mut out = Recovered::default();
    let Some(epoch) = parse_header(&hdr) else {
        return Ok(out);
    };
    out.epoch = Some(epoch);

    // The log as a byte stream from the first record block, read a chunk at a time.
    let total = geo.end - geo.first;
    let mut stream: Vec<u8> = Vec::new();
    let mut loaded = 0u64; // blocks in `stream`
    let mut pos = 0usize;
    let block = geo.block;
    let mut next_lsn = 1;
    loop {
        // Make sure a record header is loaded (the stream always holds whole blocks).
        if stream.len() < pos + RECORD_HEADER && loaded < total {
            let n = chunk_blocks.min(total - loaded);
            let (b, bytes) = read(&mut qp, geo.first + loaded, n, buf)?;
            buf = b;
            stream.extend_from_slice(&bytes);
            loaded += n;
            continue;
        }
        // Zero padding from here to the block's end ends a batch: the next starts there.
        if pos % block != 0 && pos < stream.len() {
            let boundary = pos.div_ceil(block) * block;
            if stream[pos..boundary].iter().all(|&b| b == 0) {
                pos = boundary;
                continue;
            }
        }
        if stream.len() < pos + RECORD_HEADER {
            break;
        }
        let h = &stream[pos..pos + RECORD_HEADER];
        let magic = u32::from_le_bytes(h[..4].try_into().expect("4"));
        if magic != RECORD_MAGIC {
            break; // nothing, or something else, where a batch should start: the end
        }
        let len = u32::from_le_bytes(h[4..8].try_into().expect("4")) as usize;
        let lsn = u64::from_le_bytes(h[8..16].try_into().expect("8"));
        let rec_epoch = u64::from_le_bytes(h[16..24].try_into().expect("8"));
        let crc = u32::from_le_bytes(h[24..28].try_into().expect("4"));
        if rec_epoch != epoch || lsn != next_lsn || len > geo.batch - RECORD_HEADER {
            break;
        }
        let end = pos + RECORD_HEADER + len;
        if stream.len() < end {
            if loaded < total {
                let n = chunk_blocks.min(total - loaded);
                let (b, bytes) = read(&mut qp, geo.first + loaded, n, buf)?;
                buf = b;
                stream.extend_from_slice(&bytes);
                loaded += n;
                continue;
            }
            break;
        }
        let payload = &stream[pos + RECORD_HEADER..end];
        if record_crc(len as u32, lsn, epoch, payload) != crc {
            break; // torn
        }
        out.records.push(Record {
            lsn,
            payload: payload.to_vec(),
        });
        next_lsn += 1;
        pos = end;
        // Drop consumed whole blocks now and then so memory stays bounded by the chunk.
        if pos > 4 * geo.batch {
            let cut = pos / block * block;
            stream.drain(..cut);
            pos -= cut;
            out.end_block += (cut / block) as u64;
        }
    }
    out.end_block += pos.div_ceil(block) as u64;
    Ok(out)
}

// ---- a deterministic workload, for the example and the tests --------------------------------

/// The payload writer `writer` appends as its `seq`-th record: 8 bytes of identity, then
/// 0..=`max - 8` bytes derived from them, so recovery can check every byte.
pub fn demo_payload(writer: u32, seq: u32, max: usize) -> Vec<u8> {
    let spread = (max.max(9) - 8) as u64;
    let len = 8 + ((writer as u64 * 7919 + seq as u64 * 104_729) % (spread + 1)) as usize;
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&writer.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend((8..len).map(|i| (i as u32 ^ writer.wrapping_mul(31) ^ seq.wrapping_mul(17)) as u8));
    p
}

/// True if `p` is exactly what [`demo_payload`] makes for the identity it carries.
pub fn check_demo_payload(p: &[u8], max: usize) -> bool {
    if p.len() < 8 {
        return false;
    }
    let writer = u32::from_le_bytes(p[..4].try_into().expect("4"));
    let seq = u32::from_le_bytes(p[4..8].try_into().expect("4"));
    demo_payload(writer, seq, max) == p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use nvme_dio::{ControllerOptions, MemoryOptions};
    use nvme_dio_emu::{EmuConfig, EmuFunction, Mode, NsConfig};

    fn controller(mode: Mode) -> Controller<EmuFunction> {
        controller_with(mode, 8192, 4096)
    }

    fn controller_with(mode: Mode, blocks: u64, lba: u32) -> Controller<EmuFunction> {
        let dev = Arc::new(
            EmuFunction::new(EmuConfig {
                mode,
                namespaces: vec![NsConfig::ram(blocks, lba)],
                ..EmuConfig::default()
            })
            .unwrap(),
        );
        Controller::new(
            dev,
            ControllerOptions::default().memory(MemoryOptions::any_pages(8 << 20)),
        )
        .unwrap()
    }

    /// `writers` threads append `each` demo records; returns every acknowledged LSN.
    fn write_load(wal: &Wal, writers: u32, each: u32, max: usize) -> Vec<Lsn> {
        let threads: Vec<_> = (0..writers)
            .map(|w| {
                let h = wal.handle();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    for s in 0..each {
                        match h.append(demo_payload(w, s, max)) {
                            Ok(lsn) => got.push(lsn),
                            Err(_) => break,
                        }
                    }
                    got
                })
            })
            .collect();
        let mut all: Vec<Lsn> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_unstable();
        all
    }

    fn check(found: &Recovered, max: usize) {
        for (i, r) in found.records.iter().enumerate() {
            assert_eq!(r.lsn, i as u64 + 1);
            assert!(check_demo_payload(&r.payload, max), "LSN {} corrupt", r.lsn);
        }
    }

    #[test]
    fn group_commit_then_recovery_fua_and_flush() {
        for (durability, mode) in [
            (Durability::Fua, Mode::Thread),
            (Durability::Flush, Mode::Inline),
        ] {
            let ctrl = controller(mode);
            let cfg = WalConfig {
                start_lba: 16,
                log_blocks: 4000,
                durability,
                max_batch_bytes: 32 << 10,
                ..WalConfig::default()
            };
            let wal = Wal::start(ctrl.clone(), cfg.clone()).unwrap();
            let lsns = write_load(&wal, 8, 200, 3000);
            let stats = wal.shutdown().unwrap();
            assert_eq!(
                lsns,
                (1..=1600).collect::<Vec<_>>(),
                "every record acknowledged once"
            );
            assert_eq!(stats.records, 1600);
            assert!(stats.batches < 1600, "records share batches: {stats:?}");
            if durability == Durability::Flush {
                assert!(stats.flushes > 0);
            }
            let found = recover(&ctrl, &cfg).unwrap();
            assert_eq!(found.last_lsn(), 1600, "{durability:?}");
            check(&found, 3000);
            assert_eq!(found.end_block, stats.blocks);
        }
    }

    #[test]
    fn a_crash_loses_nothing_acknowledged() {
        let ctrl = controller(Mode::Thread);
        let cfg = WalConfig {
            log_blocks: 8000,
            ..WalConfig::default()
        };
        let acked = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&acked);
        let hook: DurableHook = Box::new(move |lsn| {
            if lsn > 700 {
                return false;
            }
            seen.store(lsn, Ordering::SeqCst);
            true
        });
        let wal = Wal::start_with_hook(ctrl.clone(), cfg.clone(), Some(hook)).unwrap();
        let lsns = write_load(&wal, 8, 1000, 2000);
        assert!(matches!(
            wal.shutdown(),
            Err(WalError::Crashed { lsn: 700 })
        ));
        let last = acked.load(Ordering::SeqCst);
        assert_eq!(last, 700);
        assert_eq!(
            lsns.len() as u64,
            last,
            "writers saw exactly the acknowledged records"
        );
        let found = recover(&ctrl, &cfg).unwrap();
        assert!(
            found.last_lsn() >= last,
            "recovered {} < acknowledged {last}",
            found.last_lsn()
        );
        check(&found, 2000);
    }

    #[test]
    fn recovery_ignores_an_older_log_and_stops_at_a_torn_record() {
        let ctrl = controller(Mode::Inline);
        let cfg = WalConfig {
            log_blocks: 512,
            ..WalConfig::default()
        };
        let wal = Wal::start(ctrl.clone(), cfg.clone()).unwrap();
        write_load(&wal, 2, 100, 500);
        wal.shutdown().unwrap();
        // A new log over the old one: a new epoch; the old records are not its records.
        let wal = Wal::start(ctrl.clone(), cfg.clone()).unwrap();
        write_load(&wal, 1, 3, 500);
        wal.shutdown().unwrap();
        let found = recover(&ctrl, &cfg).unwrap();
        assert_eq!(found.last_lsn(), 3);
        // Corrupt a byte of the first record's payload: recovery stops before it.
        let dev = ctrl.device();
        let mut blk = vec![0u8; 4096];
        dev.read_blocks(1, 1, &mut blk).unwrap();
        blk[RECORD_HEADER + 3] ^= 0x40; // inside the 8 identity bytes every payload has
        dev.write_blocks(1, 1, &blk).unwrap();
        assert_eq!(recover(&ctrl, &cfg).unwrap().last_lsn(), 0);
        // No header: no log.
        dev.write_blocks(1, 0, &[0u8; 4096]).unwrap();
        assert_eq!(recover(&ctrl, &cfg).unwrap().epoch, None);
    }

    #[test]
    fn small_blocks_like_qemu_defaults() {
        // QEMU's NVMe namespaces default to 512-byte blocks: records span blocks there.
        let ctrl = controller_with(Mode::Thread, 1 << 16, 512);
        let cfg = WalConfig {
            start_lba: 100,
            log_blocks: 30_000,
            max_batch_bytes: 16 << 10,
            ..WalConfig::default()
        };
        let wal = Wal::start(ctrl.clone(), cfg.clone()).unwrap();
        let lsns = write_load(&wal, 4, 150, 3000);
        let stats = wal.shutdown().unwrap();
        assert_eq!(lsns.len(), 600);
        let found = recover(&ctrl, &cfg).unwrap();
        assert_eq!(found.last_lsn(), 600);
        check(&found, 3000);
        assert_eq!(found.end_block, stats.blocks);
    }

    #[test]
    fn a_power_cut_loses_nothing_acknowledged_with_fua_or_flush_and_loses_records_without() {
        for (durability, mode) in [
            (Durability::Fua, Mode::Thread),
            (Durability::Flush, Mode::Inline),
            (Durability::Volatile, Mode::Inline),
        ] {
            let dev = Arc::new(
                EmuFunction::new(EmuConfig {
                    mode,
                    vwc: true,
                    namespaces: vec![NsConfig::ram(8192, 4096)],
                    ..EmuConfig::default()
                })
                .unwrap(),
            );
            let opts = ControllerOptions::default()
                .memory(MemoryOptions::any_pages(8 << 20))
                .admin_timeout(std::time::Duration::from_millis(200));
            let ctrl = Controller::new(Arc::clone(&dev), opts.clone()).unwrap();
            let cfg = WalConfig {
                start_lba: 16,
                log_blocks: 4000,
                durability,
                max_batch_bytes: 32 << 10,
                ..WalConfig::default()
            };
            let wal = Wal::start(ctrl.clone(), cfg.clone()).unwrap();
            let acked = write_load(&wal, 4, 100, 3000);
            assert_eq!(acked.len(), 400, "{durability:?}");
            // The power goes: what the write cache held is gone, the controller is back in
            // its power-on state. The old handles can only be dropped.
            let lost = dev.power_cut();
            let _ = wal.shutdown();
            drop(ctrl);
            let ctrl = Controller::new(Arc::clone(&dev), opts).unwrap();
            let found = recover(&ctrl, &cfg).unwrap();
            check(&found, 3000);
            let last = *acked.last().unwrap();
            if durability == Durability::Volatile {
                assert!(lost > 0, "the cache held the records");
                assert!(
                    found.last_lsn() < last,
                    "without FUA or Flush acknowledged records are lost: recovered {} of {last}",
                    found.last_lsn()
                );
            } else {
                assert!(
                    found.last_lsn() >= last,
                    "{durability:?}: recovered {} < acknowledged {last} ({lost} blocks lost)",
                    found.last_lsn()
                );
            }
        }
    }

    #[test]
    fn crc32c_known_value() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(0, &[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(0, b"123456789"), 0xe306_9283);
    }
}
