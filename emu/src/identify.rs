//! Identify data structures and log pages, written byte by byte at the spec's offsets.
//!
//! This is deliberately independent of `nvme_dio_queue::identify` (the driver's parser), so
//! a wrong offset on either side shows up as a test failure rather than cancelling out.
//! Offsets: Identify Controller, NVMe Base 2.0 section 5.17.2.1 (Figure 275); Identify
//! Namespace (NVM command set), NVM Command Set 1.0 section 4.1.5.1 (Figure 97, LBA Format
//! Figure 98); Active Namespace ID list, Base 2.0
//! 5.17.2.2; Error Information and SMART / Health logs, Base 2.0 5.16.1.2 and 5.16.1.3.

use crate::ctrl::{AERL, Namespace, State};

/// Every Identify data structure is 4096 bytes.
pub(crate) const IDENTIFY_LEN: usize = 4096;

fn put_str(page: &mut [u8], at: usize, len: usize, s: &str) {
    let f = &mut page[at..at + len];
    f.fill(b' ');
    f[..s.len()].copy_from_slice(s.as_bytes());
}

fn put16(page: &mut [u8], at: usize, v: u16) {
    page[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(page: &mut [u8], at: usize, v: u32) {
    page[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(page: &mut [u8], at: usize, v: u64) {
    page[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Identify Controller (CNS 01h).
pub(crate) fn controller(s: &State) -> Vec<u8> {
    let c = &s.cfg;
    let mut p = vec![0u8; IDENTIFY_LEN];
    put16(&mut p, 0, 0x1b36); // VID (as QEMU)
    put16(&mut p, 2, 0x1af4); // SSVID
    put_str(&mut p, 4, 20, &c.serial); // SN
    put_str(&mut p, 24, 40, &c.model); // MN
    put_str(&mut p, 64, 8, &c.firmware); // FR
    p[72] = 6; // RAB
    p[73..76].copy_from_slice(&[0x00, 0x54, 0x52]); // IEEE OUI
    p[77] = c.mdts; // MDTS
    put16(&mut p, 78, 0); // CNTLID
    put32(&mut p, 80, 0x0001_0400); // VER 1.4.0
    p[111] = 1; // CNTRLTYPE: I/O controller
    let oacs: u16 = if c.dbbuf { 1 << 8 } else { 0 };
    put16(&mut p, 256, oacs); // OACS
    p[258] = 3; // ACL (zero-based: 4 Aborts)
    p[259] = AERL as u8; // AERL (zero-based)
    p[260] = 0x02; // FRMW: one slot
    p[262] = 3; // ELPE (zero-based: 4 error log entries)
    put16(&mut p, 266, 343); // WCTEMP: warning composite temperature, 70 C
    put16(&mut p, 268, 358); // CCTEMP: critical composite temperature, 85 C
    p[263] = 0; // NPSS (zero-based: one power state)
    p[512] = 0x66; // SQES: 64 bytes min and max
    p[513] = 0x44; // CQES: 16 bytes min and max
    // NN: namespaces can be added at run time, up to the configuration's limit.
    put32(&mut p, 516, 1024); // NN
    put32(&mut p, 92, 1 << 8 | 1 << 9); // OAES: namespace attribute and firmware activation notices
    put16(&mut p, 526, c.awun - 1); // AWUN (zero-based)
    put16(&mut p, 528, c.awupf - 1); // AWUPF (zero-based)
    // ONCS: DSM, Write Zeroes, Copy. Verify is implemented but, as in QEMU 7.2, only listed
    // in the Commands Supported and Effects log, not in ONCS.
    let cv = if c.copy_verify { 1 << 8 } else { 0 };
    put16(&mut p, 520, 1 << 2 | 1 << 3 | cv);
    put16(&mut p, 534, if c.copy_verify { 0b11 } else { 0 }); // OCFS: formats 0 and 1
    p[525] = if c.vwc { 0x07 } else { 0 }; // VWC: present, FFFFFFFFh flush supported
    put32(&mut p, 536, if c.sgl { 0x1 } else { 0 }); // SGLS: supported, byte aligned
    put_str(
        &mut p,
        768,
        256,
        &format!("nqn.2024-01.invalid.nvme-dio:emu:{}", c.serial),
    ); // SUBNQN
    // Power state 0 descriptor: MP 25.00 W (centiwatts), like QEMU.
    put16(&mut p, 2048, 2500);
    // SUBNQN is NUL-padded, not space-padded.
    for b in &mut p[768..1024] {
        if *b == b' ' {
            *b = 0;
        }
    }
    p
}

/// Identify Namespace (CNS 00h) for the NVM command set.
pub(crate) fn namespace(ns: &Namespace) -> Vec<u8> {
    let c = &ns.cfg;
    let mut p = vec![0u8; IDENTIFY_LEN];
    put64(&mut p, 0, ns.blocks); // NSZE
    put64(&mut p, 8, ns.blocks); // NCAP
    put64(&mut p, 16, ns.blocks); // NUSE
    // NSFEAT: bit 1 NSABP (atomic fields valid), bit 4 OPTPERF (preferred sizes valid).
    p[24] = (c.atomic.is_some() as u8) << 1 | (c.optimal.is_some() as u8) << 4;
    p[25] = 0; // NLBAF (zero-based: one format)
    // FLBAS: format 0; bit 4 extended LBA (metadata at the end of each block's data).
    p[26] = (c.extended && ns.ms != 0) as u8 * 0b1_0000;
    p[27] = if ns.ms != 0 { 0b11 } else { 0 }; // MC: extended and separate, as QEMU
    p[28] = if ns.ms != 0 { 0x1f } else { 0 }; // DPC: types 1-3, first and last bytes
    if let Some(pi) = c.pi {
        p[29] = pi.kind.dps() | (pi.first as u8) << 3; // DPS
    }
    p[33] = if ns.ram { 0x01 } else { 0 }; // DLFEAT: deallocated blocks read as zeroes
    let zb = |n: u32| n.saturating_sub(1).min(0xffff) as u16;
    if let Some(a) = c.atomic {
        put16(&mut p, 34, zb(a.nawun)); // NAWUN
        put16(&mut p, 36, zb(a.nawupf)); // NAWUPF
        put16(&mut p, 40, zb(a.nabsn)); // NABSN (0 = no boundary)
        put16(&mut p, 42, a.nabo); // NABO
        put16(&mut p, 44, zb(a.nabspf)); // NABSPF
    }
    put16(&mut p, 46, ns.noiob); // NOIOB (bytes 47:46)
    if let Some(o) = c.optimal {
        put16(&mut p, 64, zb(o.npwg));
        put16(&mut p, 66, zb(o.npwa));
        put16(&mut p, 68, zb(o.npdg));
        put16(&mut p, 70, zb(o.npda));
        put16(&mut p, 72, zb(o.nows));
    }
    put16(&mut p, 74, c.copy.mssrl); // MSSRL
    put32(&mut p, 76, c.copy.mcl); // MCL
    p[80] = (c.copy.msrc - 1) as u8; // MSRC (zero-based)
    // LBAF0: MS 15:0, LBADS 23:16, RP 25:24.
    put32(&mut p, 128, ns.ms as u32 | ns.lba_shift << 16);
    p
}

/// I/O command set specific Identify Namespace (CNS 05h, CSI 0): ELBAF0's PIF (bits 8:7).
pub(crate) fn nvm_namespace(ns: &Namespace) -> Vec<u8> {
    let mut p = vec![0u8; IDENTIFY_LEN];
    let pif: u32 = match ns.cfg.pi.map(|p| p.format) {
        Some(crate::config::PiFormat::Guard64) => 2,
        Some(crate::config::PiFormat::Guard32) => 1,
        _ => 0,
    };
    put32(&mut p, 12, pif << 7);
    p
}

/// I/O command set specific Identify Controller (CNS 06h, CSI 0).
pub(crate) fn nvm_controller(l: &crate::config::NvmLimits) -> Vec<u8> {
    let mut p = vec![0u8; IDENTIFY_LEN];
    p[0] = l.vsl;
    p[1] = l.wzsl;
    p[3] = l.dmrl;
    put32(&mut p, 4, l.dmrsl);
    put64(&mut p, 8, l.dmsl);
    p
}

/// Active Namespace ID list (CNS 02h): active NSIDs greater than `after`, ascending.
pub(crate) fn active_list(active: &[u32], after: u32) -> Vec<u8> {
    let mut p = vec![0u8; IDENTIFY_LEN];
    let ids = active.iter().filter(|&&id| id > after).take(1024);
    for (i, &id) in ids.enumerate() {
        put32(&mut p, i * 4, id);
    }
    p
}

/// Commands Supported and Effects log (LID 05h), 4096 bytes: CSUPP (bit 0) for every
/// admin and I/O opcode the controller implements.
pub(crate) fn commands_supported(s: &State) -> Vec<u8> {
    use nvme_dio_queue::opcode::{admin, nvm};
    let mut p = vec![0u8; 4096];
    let admin_ops = [
        admin::DELETE_IO_SQ,
        admin::CREATE_IO_SQ,
        admin::GET_LOG_PAGE,
        admin::DELETE_IO_CQ,
        admin::CREATE_IO_CQ,
        admin::IDENTIFY,
        admin::ABORT,
        admin::SET_FEATURES,
        admin::GET_FEATURES,
        admin::ASYNC_EVENT_REQUEST,
    ];
    for op in admin_ops {
        p[4 * op as usize] = 1;
    }
    let mut io = vec![
        nvm::FLUSH,
        nvm::WRITE,
        nvm::READ,
        nvm::WRITE_ZEROES,
        nvm::DATASET_MANAGEMENT,
    ];
    if s.cfg.copy_verify {
        io.extend([nvm::VERIFY, nvm::COPY]);
    }
    for op in io {
        p[1024 + 4 * op as usize] = 1;
    }
    p
}

/// SMART / Health Information log (512 bytes), plausible values from the counters.
pub(crate) fn smart_log(s: &State) -> Vec<u8> {
    let mut p = vec![0u8; 512];
    let h = &s.events.health;
    // Critical warning: reliability degraded when fatal.
    p[0] = h.critical_warning | (s.cfs as u8 * 0x04);
    put16(&mut p, 1, h.temperature_kelvin); // composite temperature, kelvin
    p[3] = h.available_spare;
    p[4] = h.spare_threshold;
    p[5] = h.percentage_used;
    let put128 = |p: &mut [u8], at: usize, v: u64| p[at..at + 8].copy_from_slice(&v.to_le_bytes());
    // Data units are thousands of 512-byte units, rounded up.
    put128(&mut p, 32, s.bytes_read.div_ceil(512_000));
    put128(&mut p, 48, s.bytes_written.div_ceil(512_000));
    put128(&mut p, 64, s.stats.reads);
    put128(&mut p, 80, s.stats.writes);
    put128(&mut p, 112, 1); // power cycles
    put128(&mut p, 128, s.power_on.elapsed().as_secs() / 3600); // power-on hours
    put128(&mut p, 160, h.media_errors); // media and data integrity errors
    put128(&mut p, 176, s.events.error_count); // error information log entries
    p
}
