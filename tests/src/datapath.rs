//! Data-path scenarios for namespaces with metadata and protection information, written
//! once and run against the emulated controller (`tests/emu_datapath.rs`) and QEMU in the VM
//! suite (`tests/vm_datapath.rs`): a write and read back of data and metadata, single and
//! split; PRACT; a wrong guard refused; a corrupted tuple caught on read.

use std::time::Duration;

use nvme_dio::spec::pi::{self, MetadataFormat, PiTags, Prinfo};
use nvme_dio::{
    Bufs, Controller, DmaBuf, Error, Io, IoQueuePair, Lba, Namespace, PciFunction, PiOptions,
};

use crate::io::{pattern, wait_one};

const LIMIT: Duration = Duration::from_secs(60);

/// The data and metadata of `blocks` blocks, as the host holds them apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocks {
    /// `blocks * lba_size` bytes.
    pub data: Vec<u8>,
    /// `blocks * ms` bytes.
    pub meta: Vec<u8>,
}

impl Blocks {
    /// A pattern for blocks at `lba`, with metadata bytes of their own, and (where the
    /// namespace has PI) valid tuples with `apptag`.
    pub fn pattern(ns: &Namespace, lba: u64, blocks: u64, seed: u64, apptag: u16) -> Blocks {
        let ms = ns.metadata_size() as usize;
        let data = pattern(
            ns.lba_size(),
            lba,
            seed,
            blocks as usize * ns.lba_size() as usize,
        );
        let mut meta: Vec<u8> = (0..blocks as usize * ms)
            .map(|i| (i as u64 ^ seed ^ lba).wrapping_mul(0x9e37) as u8)
            .collect();
        if let Some(f) = ns.metadata_format().filter(|f| f.pi.is_some()) {
            pi::generate(
                &f,
                ns.lba_size() as usize,
                &data,
                &mut meta,
                tags(ns, lba, apptag),
            )
            .expect("whole blocks");
        }
        Blocks { data, meta }
    }

    /// Extended LBA layout: each block's data, then its metadata.
    pub fn interleaved(&self, ns: &Namespace) -> Vec<u8> {
        let (l, m) = (ns.lba_size() as usize, ns.metadata_size() as usize);
        let mut out = Vec::with_capacity(self.data.len() + self.meta.len());
        for (d, md) in self.data.chunks(l).zip(self.meta.chunks(m.max(1))) {
            out.extend_from_slice(d);
            out.extend_from_slice(&md[..m]);
        }
        out
    }

    /// The inverse of [`Blocks::interleaved`].
    pub fn from_interleaved(ns: &Namespace, stream: &[u8]) -> Blocks {
        let (l, m) = (ns.lba_size() as usize, ns.metadata_size() as usize);
        let mut b = Blocks {
            data: Vec::new(),
            meta: Vec::new(),
        };
        for c in stream.chunks(l + m) {
            b.data.extend_from_slice(&c[..l]);
            b.meta.extend_from_slice(&c[l..]);
        }
        b
    }
}

/// The tags nvme-dio uses by default for blocks at `lba`: the LBA as the reference tag.
pub fn tags(ns: &Namespace, lba: u64, apptag: u16) -> PiTags {
    let mask = ns
        .metadata_format()
        .and_then(|f| f.pi)
        .map_or(0xffff_ffff, |p| p.format.ref_mask());
    PiTags {
        reftag: lba & mask,
        apptag,
        appmask: 0xffff,
    }
}

fn fmt(ns: &Namespace) -> MetadataFormat {
    ns.metadata_format().expect("a namespace with metadata")
}

fn alloc<D: PciFunction>(ctrl: &Controller<D>, len: usize) -> DmaBuf {
    ctrl.memory().alloc(len.max(4), 4096).expect("DMA memory")
}

/// Buffers holding `b` as `ns` wants it: extended -> one stream; separate -> data and, unless
/// `no_meta`, a metadata buffer. `pieces` > 1 cuts the data into that many buffers.
fn load<D: PciFunction>(
    ctrl: &Controller<D>,
    ns: &Namespace,
    b: &Blocks,
    pieces: usize,
    no_meta: bool,
) -> (Vec<DmaBuf>, Option<DmaBuf>) {
    let f = fmt(ns);
    let stream = if f.extended && !no_meta {
        b.interleaved(ns)
    } else {
        b.data.clone()
    };
    let bbs = if f.extended && !no_meta {
        ns.buffer_block_size() as usize
    } else {
        ns.lba_size() as usize
    };
    let blocks = stream.len() / bbs;
    let per = blocks.div_ceil(pieces.max(1));
    let mut bufs = Vec::new();
    for c in stream.chunks(per * bbs) {
        let d = alloc(ctrl, c.len());
        d.copy_from_slice(0, c).unwrap();
        bufs.push(d);
    }
    let md = (!f.extended && !no_meta).then(|| {
        let m = alloc(ctrl, b.meta.len());
        m.copy_from_slice(0, &b.meta).unwrap();
        m
    });
    (bufs, md)
}

fn io<'a>(
    ns: &'a Namespace,
    lba: u64,
    write: bool,
    bufs: Vec<DmaBuf>,
    md: Option<DmaBuf>,
) -> Io<'a> {
    let io = if write {
        Io::writev(ns, Lba(lba), bufs)
    } else {
        Io::readv(ns, Lba(lba), bufs)
    };
    match md {
        Some(m) => io.metadata(m),
        None => io,
    }
}

/// Submits and waits for one request.
pub fn run<D: PciFunction>(
    qp: &mut IoQueuePair<D>,
    io: Io<'_>,
    tag: u64,
) -> (Result<(), Error>, Bufs) {
    qp.submit(io, tag).map_err(|r| r.error).expect("submitted");
    let c = wait_one(qp, LIMIT);
    assert_eq!(c.tag, tag);
    (c.result, c.bufs)
}

/// Reads `blocks` blocks at `lba` with `opts` (data and metadata as the format carries them).
pub fn read_blocks<D: PciFunction>(
    ctrl: &Controller<D>,
    qp: &mut IoQueuePair<D>,
    ns: &Namespace,
    lba: u64,
    blocks: u64,
    pieces: usize,
    opts: Option<PiOptions>,
) -> Result<Blocks, Error> {
    let f = fmt(ns);
    let strips = opts.is_some_and(|o| o.prinfo.pract) && f.pract_strips();
    let blank = Blocks {
        data: vec![0xa5; blocks as usize * ns.lba_size() as usize],
        meta: vec![0xa5; blocks as usize * f.size as usize],
    };
    let (bufs, md) = load(ctrl, ns, &blank, pieces, strips);
    let mut r = io(ns, lba, false, bufs, md);
    if let Some(o) = opts {
        r = r.pi(o);
    }
    let (res, bufs) = run(qp, r, 7);
    res?;
    let (data, md) = bufs.into_parts();
    let mut stream = Vec::new();
    for b in data.into_vec() {
        let mut v = vec![0u8; b.len()];
        b.copy_to_slice(0, &mut v).unwrap();
        stream.extend_from_slice(&v);
    }
    Ok(if f.extended && !strips {
        Blocks::from_interleaved(ns, &stream)
    } else {
        let mut meta = vec![0u8; if strips { 0 } else { blank.meta.len() }];
        if let Some(m) = md {
            m.copy_to_slice(0, &mut meta).unwrap();
        }
        Blocks { data: stream, meta }
    })
}

/// Writes `b` at `lba` with `opts`.
pub fn write_blocks<D: PciFunction>(
    ctrl: &Controller<D>,
    qp: &mut IoQueuePair<D>,
    ns: &Namespace,
    lba: u64,
    b: &Blocks,
    pieces: usize,
    opts: Option<PiOptions>,
) -> Result<(), Error> {
    let strips = opts.is_some_and(|o| o.prinfo.pract) && fmt(ns).pract_strips();
    let (bufs, md) = load(ctrl, ns, b, pieces, strips);
    let mut w = io(ns, lba, true, bufs, md);
    if let Some(o) = opts {
        w = w.pi(o);
    }
    run(qp, w, 8).0
}

/// Write, read back, compare data and metadata; with PI also checked by the controller
/// (PRCHK: guard, application tag and, but for type 3, reference tag) on the way in and
/// out. `pieces` buffers; returns the commands the two requests took.
pub fn roundtrip<D: PciFunction>(
    ctrl: &Controller<D>,
    qp: &mut IoQueuePair<D>,
    ns: &Namespace,
    lba: u64,
    blocks: u64,
    pieces: usize,
) -> u64 {
    let b = Blocks::pattern(ns, lba, blocks, 0x1234 ^ lba, 0x0042);
    let opts = check_all(ns, 0x0042);
    let before = qp.stats().commands;
    write_blocks(ctrl, qp, ns, lba, &b, pieces, opts)
        .unwrap_or_else(|e| panic!("write {blocks} blocks at {lba}: {}", e.report()));
    let got = read_blocks(ctrl, qp, ns, lba, blocks, pieces, opts)
        .unwrap_or_else(|e| panic!("read {blocks} blocks at {lba}: {}", e.report()));
    assert!(got.data == b.data, "data differs at lba {lba}");
    assert!(got.meta == b.meta, "metadata differs at lba {lba}");
    qp.stats().commands - before
}

/// PRCHK of every check the namespace's PI type has, or `None` without PI.
pub fn check_all(ns: &Namespace, apptag: u16) -> Option<PiOptions> {
    let p = ns.metadata_format()?.pi?;
    Some(
        PiOptions::check(Prinfo {
            ref_tag: p.kind != pi::PiType::Type3,
            ..Prinfo::CHECK_ALL
        })
        .app_tag(apptag, 0xffff),
    )
}

/// PRACT write (the controller generates PI), then a plain read: the tuples are valid for
/// the data (checked on the host) and a checked read passes.
pub fn pract_write_reads_back_valid_pi<D: PciFunction>(
    ctrl: &Controller<D>,
    qp: &mut IoQueuePair<D>,
    ns: &Namespace,
    lba: u64,
    blocks: u64,
) {
    let f = fmt(ns);
    let b = Blocks::pattern(ns, lba, blocks, 77, 0x0042);
    let pract = PiOptions::pract().app_tag(0x0bad, 0xffff);
    write_blocks(ctrl, qp, ns, lba, &b, 1, Some(pract))
        .unwrap_or_else(|e| panic!("PRACT write: {}", e.report()));
    let got = read_blocks(ctrl, qp, ns, lba, blocks, 1, None).expect("plain read");
    assert!(got.data == b.data, "data differs after a PRACT write");
    let mut t = tags(ns, lba, 0x0bad);
    t.appmask = 0xffff;
    let checks = Prinfo {
        ref_tag: f.pi.unwrap().kind != pi::PiType::Type3,
        ..Prinfo::CHECK_ALL
    };
    pi::verify(&f, ns.lba_size() as usize, &got.data, &got.meta, checks, t)
        .expect("the controller's PI is valid");
    read_blocks(ctrl, qp, ns, lba, blocks, 1, check_all(ns, 0x0bad))
        .unwrap_or_else(|e| panic!("checked read after PRACT: {}", e.report()));
    // PRACT on the read strips (or passes) the PI; the data still comes back.
    let strip = read_blocks(ctrl, qp, ns, lba, blocks, 1, Some(PiOptions::pract())).unwrap();
    assert!(strip.data == b.data);
}

/// A write whose tuple has a wrong guard, with the guard check on, is refused with the
/// guard error, and the blocks keep their old contents.
pub fn wrong_guard_write_is_refused<D: PciFunction>(
    ctrl: &Controller<D>,
    qp: &mut IoQueuePair<D>,
    ns: &Namespace,
    lba: u64,
) {
    let f = fmt(ns);
    let off = f.pi_offset().unwrap();
    let old = Blocks::pattern(ns, lba, 2, 1, 0x0042);
    write_blocks(ctrl, qp, ns, lba, &old, 1, check_all(ns, 0x0042)).expect("good write");
    let mut bad = Blocks::pattern(ns, lba, 2, 2, 0x0042);
    bad.meta[f.size as usize + off] ^= 0x40; // block 1's guard
    let e = write_blocks(ctrl, qp, ns, lba, &bad, 1, check_all(ns, 0x0042)).unwrap_err();
    assert!(matches!(e, Error::GuardCheck { .. }), "got {}", e.report());
    let now = read_blocks(ctrl, qp, ns, lba, 2, 1, None).unwrap();
    assert!(now.data == old.data, "a refused write changed the data");
}

/// Blocks written with corrupted tuples (no checks on the way in, as a raw write) fail a
/// checked read with the matching error: guard, application tag, reference tag.
pub fn corrupted_pi_fails_the_read<D: PciFunction>(
    ctrl: &Controller<D>,
    qp: &mut IoQueuePair<D>,
    ns: &Namespace,
    lba: u64,
) {
    let f = fmt(ns);
    let p = f.pi.unwrap();
    let off = f.pi_offset().unwrap();
    let ms = f.size as usize;
    let mut b = Blocks::pattern(ns, lba, 3, 3, 0x0042);
    let (app, last) = if p.format == pi::PiFormat::Guard64 {
        (8, 15)
    } else {
        (2, 7)
    };
    b.meta[off] ^= 1; // block 0: guard
    b.meta[ms + off + app] ^= 1; // block 1: application tag
    b.meta[2 * ms + off + last] ^= 1; // block 2: reference tag (its last byte)
    write_blocks(ctrl, qp, ns, lba, &b, 1, None).expect("unchecked write");
    let check = |e: Result<Blocks, Error>| e.map(|_| ()).unwrap_err();
    let e = check(read_blocks(ctrl, qp, ns, lba, 1, 1, check_all(ns, 0x0042)));
    assert!(
        matches!(e, Error::GuardCheck { .. }),
        "guard: got {}",
        e.report()
    );
    let e = check(read_blocks(
        ctrl,
        qp,
        ns,
        lba + 1,
        1,
        1,
        check_all(ns, 0x0042),
    ));
    assert!(
        matches!(e, Error::AppTagCheck { .. }),
        "app tag: got {}",
        e.report()
    );
    if p.kind != pi::PiType::Type3 {
        let e = check(read_blocks(
            ctrl,
            qp,
            ns,
            lba + 2,
            1,
            1,
            check_all(ns, 0x0042),
        ));
        assert!(
            matches!(e, Error::RefTagCheck { .. }),
            "ref tag: got {}",
            e.report()
        );
    }
    // Unchecked, the blocks read back as written.
    let got = read_blocks(ctrl, qp, ns, lba, 3, 1, None).unwrap();
    assert!(got.meta == b.meta);
}
