//! Asynchronous events and namespaces that change at run time.
//!
//! The controller side of Asynchronous Event Requests (Base 2.0, 5.2): AERs are held (up to
//! AERL + 1), an event completes the oldest one, or waits for the next AER when none is
//! outstanding. After an event of a type is reported, events of that type are masked until
//! the host reads the log page the event named (Get Log Page with RAE clear), as the spec
//! says; events raised meanwhile wait. Notices (namespace attribute, firmware activation)
//! and SMART critical warnings are only reported when the host enabled them with Set
//! Features Asynchronous Event Configuration (0Bh); [`crate::EmuFunction::raise_event`]
//! reports any event regardless, for tests of the host's decoding.
//!
//! Namespaces can be added, resized and removed while the controller runs; each change is
//! recorded in the Changed Namespace List log (04h) and raises a Namespace Attribute
//! Changed notice.

use std::collections::VecDeque;

use nvme_dio_queue::Status;
use nvme_dio_queue::event::{AsyncEvent, AsyncEventInfo, event_type};
use nvme_dio_queue::opcode::log;

use crate::EmuError;
use crate::config::{Backing, NsConfig};
use crate::ctrl::{Namespace, State};
use crate::function::EmuFunction;

/// The emulated SMART / Health state ([`crate::EmuFunction::set_health`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    /// Critical Warning byte of the SMART log (bit 0 spare, 1 temperature, 2 reliability,
    /// 3 read only, 4 volatile backup).
    pub critical_warning: u8,
    /// Composite temperature, kelvin.
    pub temperature_kelvin: u16,
    /// Available spare, percent.
    pub available_spare: u8,
    /// Available spare threshold, percent.
    pub spare_threshold: u8,
    /// Percentage used (endurance).
    pub percentage_used: u8,
    /// Media and data integrity errors.
    pub media_errors: u64,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            critical_warning: 0,
            temperature_kelvin: 273 + 40,
            available_spare: 100,
            spare_threshold: 10,
            percentage_used: 0,
            media_errors: 0,
        }
    }
}

/// One entry of the emulated Error Information log ([`crate::EmuFunction::log_error`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ErrorEntry {
    /// Submission queue of the failed command.
    pub sqid: u16,
    /// Its command identifier.
    pub cid: u16,
    /// Its status (without the phase bit).
    pub status: Status,
    /// The LBA it failed at.
    pub lba: u64,
    /// The namespace.
    pub nsid: u32,
}

/// Event state kept by the controller.
#[derive(Debug, Default)]
pub(crate) struct Events {
    /// Events waiting for an AER or for their type to be unmasked (DW0 values).
    pub(crate) queued: VecDeque<u32>,
    /// Event types (bit per type) reported and not yet unmasked by a log page read.
    pub(crate) masked: u8,
    /// Set Features Asynchronous Event Configuration (0Bh) CDW11.
    pub(crate) config: u32,
    /// Changed Namespace List (cleared when read).
    pub(crate) changed: Vec<u32>,
    /// Error Information log entries, newest first, and the error count.
    pub(crate) errors: Vec<ErrorEntry>,
    pub(crate) error_count: u64,
    pub(crate) health: Health,
    /// Over-temperature threshold of the composite sensor (Set Features 04h), kelvin;
    /// 0 until set (then 343 K is reported).
    pub(crate) temp_threshold: u16,
    /// Events delivered through AER completions.
    pub(crate) delivered: u64,
}

/// Events the Error log keeps at most (ELPE + 1).
pub(crate) const ERROR_LOG_ENTRIES: usize = 4;

impl State {
    /// Reports `dw0`: completes an outstanding AER, or queues it.
    pub(crate) fn raise(&mut self, dw0: u32) {
        self.events.queued.push_back(dw0);
        self.deliver_events();
    }

    /// Completes outstanding AERs with queued events whose type is not masked.
    pub(crate) fn deliver_events(&mut self) {
        loop {
            let Some(pos) = self
                .events
                .queued
                .iter()
                .position(|&d| self.events.masked & 1 << (d & 7) == 0)
            else {
                return;
            };
            let Some(h) = self.held.iter().position(|h| h.aer && h.sqid == 0) else {
                return;
            };
            let held = self.held.remove(h);
            self.aers -= 1;
            let dw0 = self.events.queued.remove(pos).expect("position found");
            self.events.masked |= 1 << (dw0 & 7);
            self.events.delivered += 1;
            self.post(0, 0, held.cid, dw0, Status::SUCCESS);
            self.flush_irqs();
        }
    }

    /// An AER arrived: complete it at once if an event waits. Returns the DW0 to complete
    /// it with.
    pub(crate) fn take_event_for_aer(&mut self) -> Option<u32> {
        let pos = self
            .events
            .queued
            .iter()
            .position(|&d| self.events.masked & 1 << (d & 7) == 0)?;
        let dw0 = self.events.queued.remove(pos)?;
        self.events.masked |= 1 << (dw0 & 7);
        self.events.delivered += 1;
        Some(dw0)
    }

    /// Get Log Page `lid` with RAE clear: unmask the event types that point at it.
    pub(crate) fn log_read(&mut self, lid: u8, rae: bool) {
        if rae {
            return;
        }
        let ty = match lid {
            log::ERROR_INFORMATION => event_type::ERROR,
            log::SMART_HEALTH => event_type::HEALTH,
            log::CHANGED_NAMESPACES | log::FIRMWARE_SLOT => event_type::NOTICE,
            _ => return,
        };
        self.events.masked &= !(1 << ty);
        self.deliver_events();
    }

    /// Set Features Temperature Threshold (04h), composite sensor, over-temperature: as
    /// QEMU does, a temperature above the new threshold sets the critical warning and
    /// raises a temperature event (if the host enabled it).
    pub(crate) fn set_temperature_threshold(&mut self, cdw11: u32) -> Result<u32, Status> {
        let (tmpsel, thsel) = ((cdw11 >> 16) & 0xf, (cdw11 >> 20) & 0x3);
        if tmpsel != 0 || thsel != 0 {
            return Err(Status::new(0, 0x02)); // only the composite over-temperature one
        }
        self.events.temp_threshold = cdw11 as u16;
        let h = &mut self.events.health;
        if h.temperature_kelvin > cdw11 as u16 && h.critical_warning & 2 == 0 {
            h.critical_warning |= 2;
            if self.events.config & 2 != 0 {
                let e = AsyncEvent::Health(nvme_dio_queue::event::HealthEvent::Temperature);
                self.raise(AsyncEventInfo::for_event(e).to_dw0());
            }
        }
        Ok(0)
    }

    /// Get Features Temperature Threshold (04h), current value.
    pub(crate) fn temperature_threshold(&self) -> u32 {
        match self.events.temp_threshold {
            0 => 343,
            t => t as u32,
        }
    }

    /// A Namespace Attribute Changed notice for `nsid`, if the host enabled them.
    fn namespace_changed(&mut self, nsid: u32) {
        if !self.events.changed.contains(&nsid) {
            self.events.changed.push(nsid);
        }
        if self.events.config & 1 << 8 != 0 {
            self.raise(AsyncEventInfo::for_event(AsyncEvent::NamespaceAttributeChanged).to_dw0());
        }
    }

    /// The Changed Namespace List log page (and clears it).
    pub(crate) fn changed_namespace_log(&mut self) -> Vec<u8> {
        let mut p = vec![0u8; 4096];
        let mut list = std::mem::take(&mut self.events.changed);
        list.sort_unstable();
        if list.len() > 1024 {
            // More than 1 024 changed: the first entry is FFFFFFFFh (Base 2.0, 5.16.1.5).
            list = vec![u32::MAX];
        }
        for (i, id) in list.iter().enumerate() {
            p[i * 4..i * 4 + 4].copy_from_slice(&id.to_le_bytes());
        }
        p
    }

    /// The Firmware Slot Information log: slot 1 active, holding the firmware revision.
    pub(crate) fn firmware_slot_log(&self) -> Vec<u8> {
        let mut p = vec![0u8; 512];
        p[0] = 1; // AFI: slot 1 active, no activation pending
        let fw = self.cfg.firmware.as_bytes();
        p[8..8 + fw.len()].copy_from_slice(fw);
        for b in &mut p[8 + fw.len()..16] {
            *b = b' ';
        }
        p
    }

    /// The Error Information log: ERROR_LOG_ENTRIES entries of 64 bytes, newest first.
    pub(crate) fn error_log(&self) -> Vec<u8> {
        let mut p = vec![0u8; ERROR_LOG_ENTRIES * 64];
        let n = self.events.errors.len();
        for (i, e) in self.events.errors.iter().enumerate() {
            let o = i * 64;
            // Error counts: the newest entry has the highest.
            let count = self.events.error_count - (i as u64).min(n as u64);
            p[o..o + 8].copy_from_slice(&count.to_le_bytes());
            p[o + 8..o + 10].copy_from_slice(&e.sqid.to_le_bytes());
            p[o + 10..o + 12].copy_from_slice(&e.cid.to_le_bytes());
            // Status field: bit 0 phase (0 here), bits 15:1 the status, as in a CQE.
            let sf = e.status.raw() & !1;
            p[o + 12..o + 14].copy_from_slice(&sf.to_le_bytes());
            p[o + 14..o + 16].copy_from_slice(&0xffffu16.to_le_bytes()); // no parameter location
            p[o + 16..o + 24].copy_from_slice(&e.lba.to_le_bytes());
            p[o + 24..o + 28].copy_from_slice(&e.nsid.to_le_bytes());
        }
        p
    }
}

impl Namespace {
    pub(crate) fn from_config(n: &NsConfig, vwc: bool) -> Namespace {
        let ram = n.backing == Backing::Ram;
        let bytes = |per: u64| {
            if ram {
                vec![0; (n.blocks * per) as usize]
            } else {
                Vec::new()
            }
        };
        Namespace {
            blocks: n.blocks,
            lba_shift: n.lba_size.trailing_zeros(),
            ms: n.metadata_size,
            ram,
            noiob: n.noiob,
            cfg: n.clone(),
            data: bytes(n.lba_size as u64),
            meta: bytes(n.metadata_size as u64),
            // Zeroed lazily by the allocator, like `data`: only flushed blocks cost memory.
            durable: if vwc {
                bytes(n.lba_size as u64)
            } else {
                Vec::new()
            },
            dirty: Default::default(),
            active: true,
        }
    }
}

impl EmuFunction {
    /// Reports `event` through the next outstanding Asynchronous Event Request (or the next
    /// one to arrive), whatever the host's Asynchronous Event Configuration says; its type
    /// is then masked until the host reads the log page it names.
    pub fn raise_event(&self, event: AsyncEvent) {
        let mut s = self.shared.lock();
        s.raise(AsyncEventInfo::for_event(event).to_dw0());
    }

    /// Events delivered through AER completions so far, and events still waiting (no AER
    /// outstanding, or their type masked until the host reads the log page).
    pub fn events(&self) -> (u64, usize) {
        let s = self.shared.lock();
        (s.events.delivered, s.events.queued.len())
    }

    /// Set Features Asynchronous Event Configuration (0Bh) as the host last set it.
    pub fn async_event_config(&self) -> u32 {
        self.shared.lock().events.config
    }

    /// Changes the SMART / Health state; critical warning bits that were clear and are set
    /// now raise a SMART / Health event if the host enabled that bit (Set Features 0Bh):
    /// temperature (bit 1) as a temperature event, spare (bit 0) as spare below
    /// threshold, the others as reliability.
    pub fn set_health(&self, h: Health) {
        use nvme_dio_queue::event::HealthEvent;
        let mut s = self.shared.lock();
        let new = h.critical_warning & !s.events.health.critical_warning;
        s.events.health = h;
        let enabled = new & s.events.config as u8;
        for bit in 0..8 {
            if enabled & 1 << bit == 0 {
                continue;
            }
            let e = match bit {
                0 => HealthEvent::SpareBelowThreshold,
                1 => HealthEvent::Temperature,
                _ => HealthEvent::Reliability,
            };
            s.raise(AsyncEventInfo::for_event(AsyncEvent::Health(e)).to_dw0());
        }
    }

    /// Adds an entry to the Error Information log (newest first, 4 kept).
    pub fn log_error(&self, e: ErrorEntry) {
        let mut s = self.shared.lock();
        s.events.error_count += 1;
        s.events.errors.insert(0, e);
        s.events.errors.truncate(ERROR_LOG_ENTRIES);
    }

    /// Adds a namespace at run time; returns its NSID. A Namespace Attribute Changed notice
    /// follows if the host enabled them.
    ///
    /// # Errors
    ///
    /// [`EmuError::InvalidConfig`] for a namespace the configuration would refuse.
    pub fn add_namespace(&self, n: NsConfig) -> Result<u32, EmuError> {
        let mut s = self.shared.lock();
        let mut cfg = s.cfg.clone();
        cfg.namespaces.push(n.clone());
        cfg.validate()?;
        let ns = Namespace::from_config(&n, s.cfg.vwc);
        s.ns.push(ns);
        s.cfg.namespaces.push(n);
        let nsid = s.ns.len() as u32;
        s.namespace_changed(nsid);
        Ok(nsid)
    }

    /// Changes the size of namespace `nsid` to `blocks` (a RAM namespace keeps the blocks
    /// that remain); a Namespace Attribute Changed notice follows if enabled.
    ///
    /// # Errors
    ///
    /// [`EmuError::NoSuchBlock`] if there is no such active namespace or `blocks` is 0.
    pub fn resize_namespace(&self, nsid: u32, blocks: u64) -> Result<(), EmuError> {
        let mut s = self.shared.lock();
        let i = s
            .ns_index(nsid)
            .map_err(|_| EmuError::NoSuchBlock { nsid, lba: blocks })?;
        if blocks == 0 {
            return Err(EmuError::NoSuchBlock { nsid, lba: 0 });
        }
        let ns = &mut s.ns[i];
        ns.blocks = blocks;
        if ns.ram {
            let shift = ns.lba_shift;
            ns.data.resize((blocks << shift) as usize, 0);
            ns.meta.resize((blocks * ns.ms as u64) as usize, 0);
            if !ns.durable.is_empty() {
                ns.durable.resize((blocks << shift) as usize, 0);
            }
        }
        s.namespace_changed(nsid);
        Ok(())
    }

    /// Detaches namespace `nsid`: it leaves the active list, and commands naming it fail
    /// with Invalid Namespace or Format; a Namespace Attribute Changed notice follows if
    /// enabled.
    ///
    /// # Errors
    ///
    /// [`EmuError::NoSuchBlock`] if there is no such active namespace.
    pub fn remove_namespace(&self, nsid: u32) -> Result<(), EmuError> {
        let mut s = self.shared.lock();
        let i = s
            .ns_index(nsid)
            .map_err(|_| EmuError::NoSuchBlock { nsid, lba: 0 })?;
        s.ns[i].active = false;
        s.namespace_changed(nsid);
        Ok(())
    }
}
