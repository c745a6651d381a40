//! Admin commands (NVMe Base 2.0, 5): the ones a driver uses for bring-up, queue
//! management, features, logs, abort and shadow doorbells.

use std::collections::VecDeque;

use nvme_dio_queue::opcode::{admin, cns, feature, log};
use nvme_dio_queue::status::{csc, sc, sct};
use nvme_dio_queue::{Sqe, Status};

use crate::ctrl::{AERL, Cq, Dbbuf, Outcome, Sq, State, generic, st};
use crate::identify;
use crate::io::Dir;

fn cs(code: u8) -> Status {
    st(sct::COMMAND_SPECIFIC, code)
}

/// Feature Identifier Not Saveable (1/0x0d).
const FEATURE_NOT_SAVEABLE: u8 = 0x0d;
/// Invalid Queue Deletion (1/0x0c).
const INVALID_QUEUE_DELETION: u8 = 0x0c;
/// Asynchronous Event Request Limit Exceeded (1/0x05).
const AER_LIMIT: u8 = 0x05;
/// Invalid Log Page (1/0x09).
const INVALID_LOG_PAGE: u8 = 0x09;
/// Command Sequence Error (0/0x0c).
const COMMAND_SEQUENCE_ERROR: u8 = 0x0c;

impl State {
    /// Executes an admin command.
    pub(crate) fn admin(&mut self, s: &Sqe) -> Outcome {
        // Admin commands use PRPs on PCIe (Base 2.0, 4.1.2: PSDT shall be 00b), no fusing.
        if s.flags != 0 {
            return Outcome::Done(0, generic(sc::INVALID_FIELD));
        }
        let r = match s.opc {
            admin::IDENTIFY => self.identify(s),
            admin::SET_FEATURES => self.set_features(s),
            admin::GET_FEATURES => self.get_features(s),
            admin::CREATE_IO_CQ => self.create_cq(s),
            admin::CREATE_IO_SQ => self.create_sq(s),
            admin::DELETE_IO_SQ => self.delete_sq(s),
            admin::DELETE_IO_CQ => self.delete_cq(s),
            admin::ABORT => self.abort(s),
            admin::GET_LOG_PAGE => self.get_log_page(s),
            admin::DOORBELL_BUFFER_CONFIG if self.cfg.dbbuf => self.dbbuf_config(s),
            admin::ASYNC_EVENT_REQUEST => {
                if self.aers > AERL {
                    Err(cs(AER_LIMIT))
                } else if let Some(dw0) = self.take_event_for_aer() {
                    Ok(dw0)
                } else {
                    self.aers += 1;
                    return Outcome::Hold;
                }
            }
            _ => Err(generic(sc::INVALID_OPCODE)),
        };
        match r {
            Ok(result) => Outcome::Done(result, Status::SUCCESS),
            Err(status) => Outcome::Done(0, status),
        }
    }

    fn identify(&mut self, s: &Sqe) -> Result<u32, Status> {
        let page = match (s.cdw10 & 0xff) as u8 {
            cns::NAMESPACE => {
                let i = self.ns_index(s.nsid)?;
                identify::namespace(&self.ns[i])
            }
            cns::CONTROLLER => identify::controller(self),
            // CSI (CDW11 bits 31:24) must be the NVM command set's (0).
            cns::NVM_NAMESPACE if s.cdw11 >> 24 == 0 => {
                let i = self.ns_index(s.nsid)?;
                identify::nvm_namespace(&self.ns[i])
            }
            cns::NVM_CONTROLLER if s.cdw11 >> 24 == 0 => match &self.cfg.nvm_limits {
                Some(l) => identify::nvm_controller(l),
                None => return Err(generic(sc::INVALID_FIELD)),
            },
            cns::ACTIVE_NAMESPACES => {
                if s.nsid >= 0xffff_fffe {
                    return Err(generic(sc::INVALID_NAMESPACE));
                }
                let ids: Vec<u32> = (1..=self.ns.len() as u32)
                    .filter(|&id| self.ns[id as usize - 1].active)
                    .collect();
                identify::active_list(&ids, s.nsid)
            }
            _ => return Err(generic(sc::INVALID_FIELD)),
        };
        let mut page = page;
        self.transfer(s, false, Dir::ToHost, &mut page)?;
        Ok(0)
    }

    fn set_features(&mut self, s: &Sqe) -> Result<u32, Status> {
        if s.cdw10 & (1 << 31) != 0 {
            return Err(cs(FEATURE_NOT_SAVEABLE));
        }
        match (s.cdw10 & 0xff) as u8 {
            feature::NUMBER_OF_QUEUES => {
                let nsqr = s.cdw11 & 0xffff;
                let ncqr = s.cdw11 >> 16;
                if nsqr == 0xffff || ncqr == 0xffff {
                    return Err(generic(sc::INVALID_FIELD));
                }
                // Base 2.0, 5.27.1.5: not allowed once I/O queues exist.
                if self.sqs.iter().skip(1).any(Option::is_some)
                    || self.cqs.iter().skip(1).any(Option::is_some)
                {
                    return Err(generic(COMMAND_SEQUENCE_ERROR));
                }
                let max = self.cfg.max_ioqpairs as u32;
                let nsq = (nsqr + 1).min(max) as u16;
                let ncq = (ncqr + 1).min(max) as u16;
                self.nq = (nsq, ncq);
                Ok((nsq as u32 - 1) | (ncq as u32 - 1) << 16)
            }
            feature::INTERRUPT_COALESCING => {
                // Stored and reported; every completion batch still interrupts.
                self.int_coalescing = s.cdw11 & 0xffff;
                Ok(0)
            }
            feature::TEMPERATURE_THRESHOLD => self.set_temperature_threshold(s.cdw11),
            feature::ASYNC_EVENT_CONFIG => {
                self.events.config = s.cdw11;
                // Enabled notices may be waiting already.
                self.deliver_events();
                Ok(0)
            }
            feature::VOLATILE_WRITE_CACHE => {
                if !self.cfg.vwc {
                    return Err(generic(sc::INVALID_FIELD));
                }
                self.vwc_enabled = s.cdw11 & 1 != 0;
                if !self.vwc_enabled {
                    // Turning the cache off writes it back first.
                    for i in 0..self.ns.len() {
                        self.flush_cache(i);
                    }
                }
                Ok(0)
            }
            _ => Err(generic(sc::INVALID_FIELD)),
        }
    }

    fn get_features(&mut self, s: &Sqe) -> Result<u32, Status> {
        let sel = (s.cdw10 >> 8) & 0x7;
        let fid = (s.cdw10 & 0xff) as u8;
        if !matches!(
            fid,
            feature::NUMBER_OF_QUEUES
                | feature::INTERRUPT_COALESCING
                | feature::VOLATILE_WRITE_CACHE
                | feature::ASYNC_EVENT_CONFIG
                | feature::ARBITRATION
                | feature::POWER_MANAGEMENT
                | feature::TEMPERATURE_THRESHOLD
                | feature::ERROR_RECOVERY
                | feature::WRITE_ATOMICITY
        ) {
            return Err(generic(sc::INVALID_FIELD));
        }
        match sel {
            3 => return Ok(1 << 2), // supported capabilities: changeable, not saveable
            0..=2 => {}
            _ => return Err(generic(sc::INVALID_FIELD)),
        }
        let current = sel == 0;
        Ok(match fid {
            feature::NUMBER_OF_QUEUES => {
                let (nsq, ncq) = if current {
                    self.nq
                } else {
                    (self.cfg.max_ioqpairs, self.cfg.max_ioqpairs)
                };
                (nsq as u32 - 1) | (ncq as u32 - 1) << 16
            }
            feature::INTERRUPT_COALESCING => {
                if current {
                    self.int_coalescing
                } else {
                    0
                }
            }
            feature::ASYNC_EVENT_CONFIG => {
                if current {
                    self.events.config
                } else {
                    0
                }
            }
            // Fixed values, as QEMU reports them: arbitration burst 7 (no limit) with
            // weights 1; power state 0; over-temperature threshold of the composite sensor
            // at 343 K (70 C); no time-limited error recovery; normal atomicity on.
            feature::ARBITRATION => 7,
            feature::POWER_MANAGEMENT => 0,
            feature::TEMPERATURE_THRESHOLD => self.temperature_threshold(),
            feature::ERROR_RECOVERY => 0,
            feature::WRITE_ATOMICITY => 0,
            _ => {
                if current {
                    self.vwc_enabled as u32
                } else {
                    self.cfg.vwc as u32
                }
            }
        })
    }

    /// Create I/O Completion Queue (Base 2.0, 5.4), with QEMU's checks in QEMU's order.
    fn create_cq(&mut self, s: &Sqe) -> Result<u32, Status> {
        let qid = (s.cdw10 & 0xffff) as usize;
        let qsize = s.cdw10 >> 16; // zero-based
        let pc = s.cdw11 & 1 != 0;
        let ien = s.cdw11 & 2 != 0;
        let iv = (s.cdw11 >> 16) as u16;
        if qid == 0 || qid > self.nq.1 as usize || self.cqs[qid].is_some() {
            return Err(cs(csc::INVALID_QID));
        }
        if qsize == 0 || qsize > self.cfg.mqes - 1 {
            return Err(cs(csc::INVALID_QUEUE_SIZE));
        }
        if s.prp1 & (self.page - 1) != 0 || s.prp1 == 0 {
            return Err(generic(sc::INVALID_PRP_OFFSET));
        }
        // QEMU: a non-zero vector needs MSI-X enabled; any vector must exist.
        if (self.msix.is_empty() && iv != 0) || iv as u32 >= self.cfg.msix_vectors.max(1) {
            return Err(cs(csc::INVALID_VECTOR));
        }
        if !pc {
            return Err(generic(sc::INVALID_FIELD)); // CAP.CQR = 1
        }
        self.cqs[qid] = Some(Cq {
            base: s.prp1,
            size: qsize + 1,
            head: 0,
            tail: 0,
            phase: true,
            ien,
            iv,
            hint: 0,
            irq_pending: false,
            pending: VecDeque::new(),
            sqs: 0,
        });
        Ok(0)
    }

    /// Create I/O Submission Queue (Base 2.0, 5.5), with QEMU's checks in QEMU's order.
    fn create_sq(&mut self, s: &Sqe) -> Result<u32, Status> {
        let qid = (s.cdw10 & 0xffff) as usize;
        let qsize = s.cdw10 >> 16;
        let pc = s.cdw11 & 1 != 0;
        let cqid = (s.cdw11 >> 16) as usize;
        if cqid == 0 || cqid >= self.cqs.len() || self.cqs[cqid].is_none() {
            return Err(cs(csc::CQ_INVALID));
        }
        if qid == 0 || qid > self.nq.0 as usize || self.sqs[qid].is_some() {
            return Err(cs(csc::INVALID_QID));
        }
        if qsize == 0 || qsize > self.cfg.mqes - 1 {
            return Err(cs(csc::INVALID_QUEUE_SIZE));
        }
        if s.prp1 & (self.page - 1) != 0 || s.prp1 == 0 {
            return Err(generic(sc::INVALID_PRP_OFFSET));
        }
        if !pc {
            return Err(generic(sc::INVALID_FIELD));
        }
        self.sqs[qid] = Some(Sq {
            base: s.prp1,
            size: qsize + 1,
            head: 0,
            tail: 0,
            cqid: cqid as u16,
            hint: 0,
        });
        if let Some(cq) = self.cqs[cqid].as_mut() {
            cq.sqs += 1;
        }
        Ok(0)
    }

    /// Delete I/O Submission Queue (Base 2.0, 5.7): held commands complete with Command
    /// Aborted due to SQ Deletion before the queue goes.
    fn delete_sq(&mut self, s: &Sqe) -> Result<u32, Status> {
        let qid = (s.cdw10 & 0xffff) as usize;
        if qid == 0 || qid >= self.sqs.len() || self.sqs[qid].is_none() {
            return Err(cs(csc::INVALID_QID));
        }
        let held: Vec<u16> = self
            .held
            .iter()
            .filter(|h| h.sqid as usize == qid)
            .map(|h| h.cid)
            .collect();
        for cid in held {
            self.complete_held(
                qid as u16,
                cid,
                Status::new(sct::GENERIC, sc::ABORTED_SQ_DELETION),
            );
        }
        if let Some(sq) = self.sqs[qid].take() {
            if let Some(cq) = self.cqs[sq.cqid as usize].as_mut() {
                cq.sqs -= 1;
            }
        }
        Ok(0)
    }

    /// Delete I/O Completion Queue (Base 2.0, 5.6).
    fn delete_cq(&mut self, s: &Sqe) -> Result<u32, Status> {
        let qid = (s.cdw10 & 0xffff) as usize;
        if qid == 0 || qid >= self.cqs.len() || self.cqs[qid].is_none() {
            return Err(cs(csc::INVALID_QID));
        }
        if self.cqs[qid].as_ref().is_some_and(|c| c.sqs > 0) {
            return Err(cs(INVALID_QUEUE_DELETION));
        }
        self.cqs[qid] = None;
        Ok(0)
    }

    /// Abort (Base 2.0, 5.1): a held command (dropped, delayed, AER) completes with Command
    /// Abort Requested and the Abort's DW0 bit 0 is 0; otherwise bit 0 is 1 (not aborted).
    fn abort(&mut self, s: &Sqe) -> Result<u32, Status> {
        let sqid = (s.cdw10 & 0xffff) as u16;
        let cid = (s.cdw10 >> 16) as u16;
        if self.complete_held(sqid, cid, Status::new(sct::GENERIC, sc::ABORT_REQUESTED)) {
            Ok(0)
        } else {
            Ok(1)
        }
    }

    /// Get Log Page (Base 2.0, 5.16): Error Information and SMART / Health.
    fn get_log_page(&mut self, s: &Sqe) -> Result<u32, Status> {
        let lid = (s.cdw10 & 0xff) as u8;
        let numd = ((s.cdw11 & 0xffff) << 16 | s.cdw10 >> 16) as u64 + 1;
        let lpo = s.cdw12 as u64 | (s.cdw13 as u64) << 32;
        let data = match lid {
            log::ERROR_INFORMATION => self.error_log(),
            log::SMART_HEALTH => identify::smart_log(self),
            log::FIRMWARE_SLOT => self.firmware_slot_log(),
            log::CHANGED_NAMESPACES => self.changed_namespace_log(),
            log::COMMANDS_SUPPORTED => identify::commands_supported(self),
            _ => return Err(cs(INVALID_LOG_PAGE)),
        };
        if lpo & 3 != 0 || lpo > data.len() as u64 {
            return Err(generic(sc::INVALID_FIELD));
        }
        let len = numd * 4;
        // MDTS applies to admin data transfers too (QEMU checks it for Get Log Page).
        if len > 1 << 20 || (self.mdts_bytes != 0 && len > self.mdts_bytes) {
            return Err(generic(sc::INVALID_FIELD));
        }
        // Bytes past the end of the log read as zero.
        let mut buf = vec![0u8; len as usize];
        let from = &data[lpo as usize..];
        let n = from.len().min(buf.len());
        buf[..n].copy_from_slice(&from[..n]);
        self.transfer(s, false, Dir::ToHost, &mut buf)?;
        // RAE (CDW10 bit 15) clear: the events this page answers are unmasked.
        self.log_read(lid, s.cdw10 & 1 << 15 != 0);
        Ok(0)
    }

    /// Doorbell Buffer Config (Base 2.0, 5.8): PRP1 = shadow doorbells, PRP2 = EventIdx,
    /// both page aligned and mapped.
    fn dbbuf_config(&mut self, s: &Sqe) -> Result<u32, Status> {
        let (shadow, eventidx) = (s.prp1, s.prp2);
        if shadow & (self.page - 1) != 0 || eventidx & (self.page - 1) != 0 {
            return Err(generic(sc::INVALID_FIELD));
        }
        let mut h = 0;
        if !self.table.check(shadow, self.page, &mut h)
            || !self.table.check(eventidx, self.page, &mut h)
        {
            return Err(generic(sc::DATA_TRANSFER_ERROR));
        }
        self.dbbuf = Some(Dbbuf {
            shadow,
            eventidx,
            hint: h,
        });
        self.stats.dbbuf_configs += 1;
        // Existing I/O queues: as QEMU 7.2 (`nvme_dbbuf_config`), the controller writes its
        // current tails and heads into the shadow buffer, so the host's next shadow value
        // follows on from them; and publishes EventIdx = tail, so its first event check
        // asks for an MMIO write.
        for qid in 1..self.sqs.len() {
            if let Some(sq) = &self.sqs[qid] {
                let off = self.db_offset(2 * qid);
                let t = sq.tail;
                self.table.write_u32(shadow + off, t, &mut h);
                self.table.write_u32(eventidx + off, t, &mut h);
            }
            if let Some(cq) = self.cqs.get(qid).and_then(|c| c.as_ref()) {
                let off = self.db_offset(2 * qid + 1);
                let head = cq.head;
                self.table.write_u32(shadow + off, head, &mut h);
            }
        }
        Ok(0)
    }
}
