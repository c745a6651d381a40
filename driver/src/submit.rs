//! The submission path: one typed request ([`Io`]) and one way in ([`IoQueuePair::submit`]).
//!
//! An I/O goes: check the request (nothing reaches the device if it is bad) -> plan it
//! (`nvme_dio_queue::plan`: one command, the fast path, or a split) -> the core claims a
//! tracker -> the data pointer is built in that tracker's list pages ([`Placer`]) -> the
//! typed builder makes the entry -> the core sets the CID and [`Placer`] copies the entry into
//! the SQ slot. The doorbell is written later, once per batch ([`IoQueuePair::ring`]).

use nvme_dio_dma::{DmaBuf, PciFunction};
use nvme_dio_queue::cmd::{DatasetManagement, Dptr, DsmRange, Flush, Read, Write, WriteZeroes};
use nvme_dio_queue::plan::{self, Command, Plan};
use nvme_dio_queue::prp::{self, PrpListPages, Segment};
use nvme_dio_queue::queue_pair::{DptrError, Refusal, Sink, SplitKind, SplitMeta, SplitOp};
use nvme_dio_queue::{Iova, Lba, PageSize, Sqe, sgl};

use crate::completion::{Bufs, Rejected};
use crate::error::{AtomicRefusal, BadRequest, Error, Feature};
use crate::io::{Io, RwOptions};
use crate::namespace::Namespace;
use crate::qpair::IoQueuePair;
use crate::ring::SqMem;

/// All tracker list pages of a queue pair: one allocation, mapped once, sliced per tracker.
#[derive(Debug)]
pub(crate) struct ListMem {
    mem: DmaBuf,
    /// Bytes per tracker (`pages` controller pages).
    per_slot: usize,
    pages: usize,
    page: PageSize,
}

impl ListMem {
    pub(crate) fn new(mem: DmaBuf, pages: usize, page: PageSize) -> ListMem {
        ListMem {
            mem,
            per_slot: pages * page.bytes(),
            pages,
            page,
        }
    }

    pub(crate) fn leak(&mut self) {
        self.mem.leak_on_drop();
    }
}

/// One tracker's list pages, as the PRP and SGL builders see them.
struct SlotPages<'a> {
    list: &'a ListMem,
    base: usize,
}

impl PrpListPages for SlotPages<'_> {
    #[inline]
    fn page(&mut self, n: usize) -> Option<Iova> {
        (n < self.list.pages)
            .then(|| Iova(self.list.mem.iova() + (self.base + n * self.list.page.bytes()) as u64))
    }
    #[inline]
    fn set(&mut self, n: usize, i: usize, entry: u64) {
        self.list
            .mem
            .write_u64(self.base + n * self.list.page.bytes() + i * 8, entry);
    }
}

/// The core's [`Sink`]: entries go into the SQ ring, data pointers into the tracker's list
/// pages.
pub(crate) struct Placer<'a> {
    pub(crate) sq: &'a SqMem,
    pub(crate) lists: &'a ListMem,
}

impl Placer<'_> {
    fn pages(&self, slot: u16) -> SlotPages<'_> {
        SlotPages {
            list: self.lists,
            base: slot as usize * self.lists.per_slot,
        }
    }

    #[inline]
    fn range_dptr(&self, slot: u16, segs: &[Segment], cmd: &Command) -> Result<Dptr, DptrError> {
        let mut pages = self.pages(slot);
        let page = self.lists.page;
        if cmd.sgl {
            Ok(sgl::build_range(segs, &cmd.segs, page, &mut pages)?)
        } else {
            Ok(prp::build_range(segs, &cmd.segs, page, &mut pages)?)
        }
    }
}

impl Sink for Placer<'_> {
    #[inline]
    fn write_sqe(&mut self, index: u32, sqe: &Sqe) {
        self.sq.write(index, sqe);
    }

    #[inline]
    fn data_pointer(
        &mut self,
        slot: u16,
        segs: &[Segment],
        cmd: &Command,
    ) -> Result<Dptr, DptrError> {
        self.range_dptr(slot, segs, cmd)
    }
}

/// The planner's view of a buffer (its length was checked to fit a `u32`).
#[inline]
fn segment_of(b: &DmaBuf) -> Segment {
    Segment {
        iova: Iova(b.iova()),
        len: b.len() as u32,
    }
}

fn refusal<E>(r: Refusal<E>, qid: u16, into: impl FnOnce(E) -> Error) -> Error {
    match r {
        Refusal::Full { in_flight } => Error::QueueFull {
            qid,
            outstanding: in_flight,
        },
        Refusal::BehindSplit => Error::QueueFull {
            qid,
            outstanding: usize::MAX,
        },
        Refusal::Build(e) => into(e),
    }
}

impl<D: PciFunction> IoQueuePair<D> {
    /// Submits one request under `tag`. It is queued, not yet sent: the doorbell is written
    /// once per batch by [`IoQueuePair::ring`], [`IoQueuePair::poll`] or
    /// [`IoQueuePair::wait`].
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use nvme_dio::{Controller, Io, Lba, QueuePairOptions};
    /// let ctrl = Controller::open("emu:ram", |_| {})?;
    /// let ns = ctrl.namespace(1)?.clone();
    /// let mut qp = ctrl.create_io_qpair(QueuePairOptions::default())?;
    /// let buf = ctrl.memory().alloc(8192, 4096)?;
    /// buf.fill(0xa5);
    /// qp.submit(Io::write(&ns, Lba(16), buf).fua(), 1).map_err(|r| r.error)?;
    /// qp.submit(Io::flush(&ns), 2).map_err(|r| r.error)?; // both go with one doorbell
    /// let mut done = 0;
    /// while done < 2 {
    ///     qp.wait(Duration::from_secs(1))?;
    ///     for c in qp.completions() {
    ///         c.result?;
    ///         done += 1;
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// The request's buffers move in and come back in its [`crate::Completion`], so they
    /// cannot be freed or touched while the device owns them:
    ///
    /// ```compile_fail,E0382
    /// fn f<D: nvme_dio::PciFunction>(
    ///     qp: &mut nvme_dio::IoQueuePair<D>,
    ///     ns: &nvme_dio::Namespace,
    ///     buf: nvme_dio::DmaBuf,
    /// ) {
    ///     qp.submit(nvme_dio::Io::read(ns, nvme_dio::Lba(0), buf), 1).unwrap();
    ///     drop(buf); // the request owns it until it completes
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Rejected`], with the buffers inside, when the request is invalid (nothing reached
    /// the device), the queue pair is full ([`Error::QueueFull`]: poll, then resubmit), or
    /// the controller is lost.
    pub fn submit(&mut self, io: Io<'_>, tag: u64) -> Result<(), Rejected> {
        if let Err(e) = self.sync() {
            return Err(Rejected::new(e, io.into_bufs()));
        }
        match io {
            Io::Read {
                ns,
                lba,
                bufs,
                fua,
                opts,
            } => self.submit_rw(ns, lba, bufs, tag, false, fua, opts),
            Io::Write {
                ns,
                lba,
                bufs,
                fua,
                opts,
            } => self.submit_rw(ns, lba, bufs, tag, true, fua, opts),
            Io::Flush { ns } => {
                if let Err(e) = ns.check_present() {
                    return Err(Rejected::new(e, Bufs::None));
                }
                if !ns.has_volatile_write_cache() {
                    // Nothing to flush: without a volatile write cache a write is on the
                    // medium when it completes. Completed at once, no command, counted.
                    let qid = self.core.qid().0;
                    return self
                        .core
                        .complete_now(tag, Bufs::None)
                        .map_err(|(r, bufs)| Rejected::new(refusal(r, qid, |e| match e {}), bufs));
                }
                let sqe = Flush::new(ns.id()).build();
                self.submit_built(sqe, tag, Bufs::None)
            }
            Io::WriteZeroes { ns, lba, blocks } => {
                if !ns.supports_write_zeroes() {
                    return Err(Rejected::new(
                        Error::NotSupported(Feature::WriteZeroes),
                        Bufs::None,
                    ));
                }
                if let Err(e) = ns
                    .check_present()
                    .and_then(|()| check_range(ns, lba, blocks as u64, 65_536))
                {
                    return Err(Rejected::new(e, Bufs::None));
                }
                let per = per_command(ns.command_limits().write_zeroes_blocks, ns);
                if (blocks as u64) <= per {
                    let sqe = WriteZeroes::new(ns.id(), lba, blocks).build();
                    return self.submit_built(sqe, tag, Bufs::None);
                }
                // WZSL is smaller than the request: a split of Write Zeroes commands.
                let children = no_data_children(lba.0, blocks as u64, per);
                let op = no_data_op(ns, SplitKind::WriteZeroes, SplitMeta::default());
                self.submit_children(tag, Bufs::None, op, Vec::new(), children)
            }
            Io::Verify {
                ns,
                lba,
                blocks,
                pi,
            } => self.submit_verify(ns, lba, blocks, pi, tag),
            Io::Copy { ns, ranges, dest } => self.submit_copy(ns, ranges, dest, tag),
            Io::Deallocate { ns, ranges } => self.submit_deallocate(ns, ranges, tag),
            Io::Raw { sqe, buf } => self.submit_raw_io(sqe, buf, tag),
        }
    }

    /// `submit(Io::Read | Io::Write)` without building and matching the `Io` value: what the
    /// sugar methods call, so the hot path is the same code with one move less.
    #[inline]
    fn rw(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        bufs: Bufs,
        tag: u64,
        write: bool,
        fua: bool,
    ) -> Result<(), Rejected> {
        if let Err(e) = self.sync() {
            return Err(Rejected::new(e, bufs));
        }
        self.submit_rw(ns, lba, bufs, tag, write, fua, RwOptions::NONE)
    }

    /// Read or write of an iovec set: plan, then one command (fast path) or a split.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn submit_rw(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        bufs: Bufs,
        tag: u64,
        write: bool,
        fua: bool,
        opts: RwOptions,
    ) -> Result<(), Rejected> {
        if let Err(e) = ns.check_present() {
            return Err(Rejected::new(e, bufs));
        }
        if ns.metadata_format().is_some() || !opts.is_none() || bufs.metadata().is_some() {
            return self.submit_rw_ext(ns, lba, bufs, tag, write, fua, opts);
        }
        if let Err(e) = self.check_buffers(&bufs) {
            return Err(Rejected::new(e, bufs));
        }
        let one;
        let segs: &[Segment] = match &bufs {
            Bufs::One(b) => {
                one = [segment_of(b)];
                &one
            }
            Bufs::Many(v) => {
                self.scratch.clear();
                self.scratch.extend(v.iter().map(segment_of));
                &self.scratch
            }
            // Buffers with metadata took the path above.
            Bufs::None | Bufs::WithMetadata(_) => &[],
        };
        let qid = self.core.qid().0;
        match plan::plan(segs, lba, ns.limits()) {
            Err(e) => Err(Rejected::new(plan_error(ns, e), bufs)),
            Ok(Plan::One(cmd)) => {
                let nsid = ns.id();
                let mut placer = Placer {
                    sq: &self.sq,
                    lists: &self.lists,
                };
                self.core
                    .submit(&mut placer, tag, bufs, |p, slot| {
                        let dptr = p.range_dptr(slot, segs, &cmd)?;
                        Ok(if write {
                            Write::new(nsid, cmd.slba, cmd.nlb).fua(fua).build(dptr)
                        } else {
                            Read::new(nsid, cmd.slba, cmd.nlb).fua(fua).build(dptr)
                        })
                    })
                    .map_err(|(r, bufs)| {
                        // The planner only emits commands that fit the rules and the list
                        // pages, so a build failure here is a driver bug, reported.
                        Rejected::new(
                            refusal(r, qid, |source| Error::DataPointer { qid, source }),
                            bufs,
                        )
                    })
            }
            Ok(Plan::Split(children)) => {
                let op = SplitOp {
                    write,
                    fua,
                    nsid: ns.id(),
                    meta: SplitMeta::default(),
                    kind: SplitKind::Rw,
                };
                let segs = segs.to_vec();
                let mut placer = Placer {
                    sq: &self.sq,
                    lists: &self.lists,
                };
                self.core
                    .submit_split(&mut placer, tag, bufs, op, segs, children)
                    .map_err(|(r, bufs)| {
                        Rejected::new(
                            refusal(r, qid, |source| Error::DataPointer { qid, source }),
                            bufs,
                        )
                    })
            }
        }
    }

    /// Every buffer must be mapped for this controller (another device's buffers have IOVAs
    /// that mean something else here) and fit a segment length.
    #[inline]
    fn check_buffers(&self, bufs: &Bufs) -> Result<(), Error> {
        let check = |index: usize, b: &DmaBuf| {
            if b.domain() != self.domain {
                return Err(Error::ForeignBuffer { index });
            }
            if b.len() > u32::MAX as usize {
                return Err(Error::Bad(BadRequest::BufferTooLarge {
                    index,
                    bytes: b.len(),
                }));
            }
            Ok(())
        };
        match bufs {
            Bufs::None => Ok(()),
            Bufs::One(b) => check(0, b),
            Bufs::Many(v) => v.iter().enumerate().try_for_each(|(i, b)| check(i, b)),
            Bufs::WithMetadata(w) => {
                let n = match &w.data {
                    Bufs::One(b) => check(0, b).map(|_| 1)?,
                    Bufs::Many(v) => {
                        v.iter().enumerate().try_for_each(|(i, b)| check(i, b))?;
                        v.len()
                    }
                    _ => 0,
                };
                check(n, &w.metadata)
            }
        }
    }

    /// A read or write with metadata, PI options or marked atomic (out of line: the plain
    /// path above stays as it was). Every check that can be made here is made before
    /// anything is queued.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn submit_rw_ext(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        bufs: Bufs,
        tag: u64,
        write: bool,
        fua: bool,
        opts: RwOptions,
    ) -> Result<(), Rejected> {
        if let Err(e) = self.check_buffers(&bufs) {
            return Err(Rejected::new(e, bufs));
        }
        let (op, limits) = match rw_meta(ns, lba, &bufs, write, fua, opts) {
            Ok(x) => x,
            Err(e) => return Err(Rejected::new(e, bufs)),
        };
        let segs: Vec<Segment> = match data_of(&bufs) {
            Bufs::One(b) => vec![segment_of(b)],
            Bufs::Many(v) => v.iter().map(segment_of).collect(),
            _ => Vec::new(),
        };
        let planned = match plan::plan(&segs, lba, &limits) {
            Ok(p) => p,
            Err(e) => return Err(Rejected::new(plan_error(ns, e), bufs)),
        };
        let blocks: u64 = planned.commands().iter().map(|c| c.nlb as u64).sum();
        if let Err(e) = check_meta_len(ns, &bufs, blocks, op.meta.mptr != 0) {
            return Err(Rejected::new(e, bufs));
        }
        if write && opts.atomic {
            if let Err(r) = check_atomic(ns, lba, blocks, planned.len()) {
                return Err(Rejected::new(Error::Bad(BadRequest::NotAtomic(r)), bufs));
            }
        }
        let qid = self.core.qid().0;
        let mut placer = Placer {
            sq: &self.sq,
            lists: &self.lists,
        };
        match planned {
            Plan::One(cmd) => self
                .core
                .submit(&mut placer, tag, bufs, |p, slot| {
                    let dptr = p.range_dptr(slot, &segs, &cmd)?;
                    Ok(nvme_dio_queue::queue_pair::child_sqe(op, &cmd, dptr))
                })
                .map_err(|(r, bufs)| {
                    Rejected::new(
                        refusal(r, qid, |source| Error::DataPointer { qid, source }),
                        bufs,
                    )
                }),
            Plan::Split(children) => self
                .core
                .submit_split(&mut placer, tag, bufs, op, segs, children)
                .map_err(|(r, bufs)| {
                    Rejected::new(
                        refusal(r, qid, |source| Error::DataPointer { qid, source }),
                        bufs,
                    )
                }),
        }
    }

    fn submit_deallocate(
        &mut self,
        ns: &Namespace,
        ranges: &[(Lba, u32)],
        tag: u64,
    ) -> Result<(), Rejected> {
        let reject = |error: Error| Err(Rejected::new(error, Bufs::None));
        if let Err(e) = ns.check_present() {
            return reject(e);
        }
        if !ns.supports_deallocate() {
            return reject(Error::NotSupported(Feature::Deallocate));
        }
        if ranges.is_empty() || ranges.len() > 256 {
            return reject(Error::Bad(BadRequest::DeallocateRanges {
                ranges: ranges.len(),
            }));
        }
        for &(lba, n) in ranges {
            if let Err(e) = check_range(ns, lba, n as u64, u32::MAX as u64) {
                return reject(e);
            }
        }
        let l = ns.command_limits();
        let cut = nvme_dio_queue::ranges::split_dsm(
            &ranges.iter().map(|&(l, n)| (l.0, n)).collect::<Vec<_>>(),
            nvme_dio_queue::ranges::DsmLimits {
                ranges: l.dsm_ranges.unwrap_or(256),
                range_blocks: l.dsm_range_blocks.unwrap_or(u32::MAX),
                blocks: l.dsm_blocks.unwrap_or(u64::MAX),
            },
        );
        if cut.len() > 1 {
            // DMRL/DMRSL/DMSL cut the list: one DSM command per piece, each piece's ranges
            // at their own page in one list buffer.
            return self.submit_range_lists(
                ns,
                tag,
                SplitKind::Deallocate,
                Lba(0),
                cut.iter()
                    .map(|c| {
                        (
                            0u64,
                            c.iter()
                                .map(|&(slba, nlb)| {
                                    DsmRange {
                                        context: 0,
                                        nlb,
                                        slba,
                                    }
                                    .to_bytes()
                                    .to_vec()
                                })
                                .collect::<Vec<_>>(),
                        )
                    })
                    .collect(),
            );
        }
        let list = match self.shared.mem.alloc(ranges.len() * 16, self.page.bytes()) {
            Ok(b) => b,
            Err(e) => return reject(e.into()),
        };
        for (i, &(lba, n)) in ranges.iter().enumerate() {
            let r = DsmRange {
                context: 0,
                nlb: n,
                slba: lba.0,
            }
            .to_bytes();
            if let Err(e) = list.copy_from_slice(i * 16, &r) {
                return reject(e.into());
            }
        }
        let sqe = DatasetManagement::deallocate(ns.id(), ranges.len() as u32).build(Dptr::Prp {
            prp1: list.iova(),
            prp2: 0,
        });
        // The range list travels as the request's buffer so it lives until completion.
        self.submit_built(sqe, tag, Bufs::One(list))
    }

    fn submit_raw_io(&mut self, sqe: Sqe, buf: Option<DmaBuf>, tag: u64) -> Result<(), Rejected> {
        let bufs = buf.map_or(Bufs::None, Bufs::One);
        if let Err(e) = self.check_buffers(&bufs) {
            return Err(Rejected::new(e, bufs));
        }
        let seg = match &bufs {
            Bufs::One(b) => Some([segment_of(b)]),
            _ => None,
        };
        let page = self.page;
        let qid = self.core.qid().0;
        let mut placer = Placer {
            sq: &self.sq,
            lists: &self.lists,
        };
        self.core
            .submit(&mut placer, tag, bufs, |p, slot| {
                let mut sqe = sqe;
                if let Some(seg) = seg {
                    match prp::build(&seg, page, &mut p.pages(slot))? {
                        Dptr::Prp { prp1, prp2 } => {
                            sqe.prp1 = prp1;
                            sqe.prp2 = prp2;
                            sqe.flags &= !nvme_dio_queue::entry::PSDT_SGL;
                        }
                        _ => unreachable!("prp::build returns PRPs"),
                    }
                }
                Ok::<_, nvme_dio_queue::PrpError>(sqe)
            })
            .map_err(|(r, bufs)| {
                Rejected::new(
                    refusal(r, qid, |e| Error::Bad(BadRequest::NotDescribable(e))),
                    bufs,
                )
            })
    }

    /// Places planned no-data or range-list children: one command directly, several as a
    /// split.
    fn submit_children(
        &mut self,
        tag: u64,
        bufs: Bufs,
        op: SplitOp,
        segs: Vec<Segment>,
        mut children: Vec<Command>,
    ) -> Result<(), Rejected> {
        let qid = self.core.qid().0;
        let mut placer = Placer {
            sq: &self.sq,
            lists: &self.lists,
        };
        if children.len() == 1 {
            let cmd = children.pop().expect("one");
            return self
                .core
                .submit(&mut placer, tag, bufs, |p, slot| {
                    let dptr = if op.kind.has_data() {
                        p.range_dptr(slot, &segs, &cmd)?
                    } else {
                        Dptr::None
                    };
                    Ok(nvme_dio_queue::queue_pair::child_sqe(op, &cmd, dptr))
                })
                .map_err(|(r, bufs)| {
                    Rejected::new(
                        refusal(r, qid, |source| Error::DataPointer { qid, source }),
                        bufs,
                    )
                });
        }
        self.core
            .submit_split(&mut placer, tag, bufs, op, segs, children)
            .map_err(|(r, bufs)| {
                Rejected::new(
                    refusal(r, qid, |source| Error::DataPointer { qid, source }),
                    bufs,
                )
            })
    }

    /// Commands whose data is a range list (Dataset Management, Copy): `pieces` are
    /// `(slba of the child, its entries)`; each piece's list sits at its own 8 KiB-aligned
    /// offset of one buffer (at most 256 * 32 bytes: PRP1 and PRP2), which travels as the
    /// request's buffer so it lives until the last child completes.
    fn submit_range_lists(
        &mut self,
        ns: &Namespace,
        tag: u64,
        kind: SplitKind,
        _first: Lba,
        pieces: Vec<(u64, Vec<Vec<u8>>)>,
    ) -> Result<(), Rejected> {
        const STRIDE: usize = 8192;
        let reject = |error: Error| Err(Rejected::new(error, Bufs::None));
        let list = match self
            .shared
            .mem
            .alloc(pieces.len() * STRIDE, self.page.bytes())
        {
            Ok(b) => b,
            Err(e) => return reject(e.into()),
        };
        let mut children = Vec::with_capacity(pieces.len());
        for (k, (slba, entries)) in pieces.iter().enumerate() {
            let base = k * STRIDE;
            let mut len = 0;
            for e in entries {
                if let Err(e) = list.copy_from_slice(base + len, e) {
                    return reject(e.into());
                }
                len += e.len();
            }
            children.push(Command {
                slba: Lba(*slba),
                nlb: entries.len() as u32,
                sgl: false,
                segs: nvme_dio_queue::SegRange {
                    first: 0,
                    first_offset: base as u32,
                    last: 0,
                    last_end: (base + len) as u32,
                },
            });
        }
        let segs = vec![segment_of(&list)];
        let op = no_data_op(ns, kind, SplitMeta::default());
        self.submit_children(tag, Bufs::One(list), op, segs, children)
    }

    fn submit_verify(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        blocks: u32,
        pi: Option<crate::io::PiOptions>,
        tag: u64,
    ) -> Result<(), Rejected> {
        let reject = |error: Error| Err(Rejected::new(error, Bufs::None));
        if !ns.supports_verify() {
            return reject(Error::NotSupported(Feature::Verify));
        }
        if let Err(e) = check_range(ns, lba, blocks as u64, 65_536) {
            return reject(e);
        }
        if pi.is_some_and(|p| p.prinfo.pract) {
            return reject(Error::Bad(BadRequest::PiOption {
                nsid: ns.id(),
                what: "Verify takes no PRACT (nothing is transferred): use the PRCHK checks",
            }));
        }
        // The PI checks as a read's (the same refusals, no buffers).
        let opts = RwOptions { pi, atomic: false };
        let meta = if let Some(o) = pi {
            match rw_meta(ns, lba, &Bufs::None, false, false, opts) {
                Ok((op, _)) => SplitMeta {
                    mptr: 0,
                    ms: 0,
                    ..op.meta
                },
                // A separate format "needs" a metadata buffer for a read; Verify moves none.
                Err(Error::Bad(BadRequest::MetadataMissing { .. })) => {
                    let m = ns.metadata_format().and_then(|m| m.pi).expect("checked PI");
                    let mask = m.format.ref_mask();
                    SplitMeta {
                        slba: lba,
                        prinfo: o.prinfo,
                        tags: nvme_dio_queue::pi::PiTags {
                            reftag: o.reftag.unwrap_or(lba.0) & mask,
                            apptag: o.apptag,
                            appmask: o.appmask,
                        },
                        ref_increments: m.kind.increments(),
                        ref_mask: mask,
                        ..SplitMeta::default()
                    }
                }
                Err(e) => return reject(e),
            }
        } else {
            SplitMeta::default()
        };
        let per = per_command(ns.command_limits().verify_blocks, ns);
        let children = no_data_children(lba.0, blocks as u64, per);
        let op = no_data_op(ns, SplitKind::Verify, meta);
        self.submit_children(tag, Bufs::None, op, Vec::new(), children)
    }

    fn submit_copy(
        &mut self,
        ns: &Namespace,
        ranges: &[(Lba, u32)],
        dest: Lba,
        tag: u64,
    ) -> Result<(), Rejected> {
        let reject = |error: Error| Err(Rejected::new(error, Bufs::None));
        let Some(limits) = ns.copy_limits() else {
            return reject(Error::NotSupported(Feature::Copy));
        };
        if ns
            .metadata_format()
            .and_then(|m| m.pi)
            .is_some_and(|p| p.format != nvme_dio_queue::pi::PiFormat::Guard16)
        {
            // Format 0 source ranges carry 32-bit reference tags; the 64-bit guard needs
            // format 1, which nvme-dio does not build.
            return reject(Error::NotSupported(Feature::Copy));
        }
        if ranges.is_empty() || ranges.len() > 256 {
            return reject(Error::Bad(BadRequest::CopyRanges {
                ranges: ranges.len(),
            }));
        }
        let mut total = 0u64;
        for &(lba, n) in ranges {
            if let Err(e) = check_range(ns, lba, n as u64, u32::MAX as u64) {
                return reject(e);
            }
            total += n as u64;
        }
        if let Err(e) = check_range(ns, dest, total, u64::MAX) {
            return reject(e);
        }
        let cut = nvme_dio_queue::ranges::split_copy(
            &ranges.iter().map(|&(l, n)| (l.0, n)).collect::<Vec<_>>(),
            dest.0,
            nvme_dio_queue::ranges::CopyCut {
                range_blocks: if limits.max_range_blocks == 0 {
                    65_536
                } else {
                    limits.max_range_blocks
                },
                blocks: if limits.max_blocks == 0 {
                    u64::MAX
                } else {
                    limits.max_blocks as u64
                },
                ranges: limits.max_ranges,
            },
        );
        let pieces = cut
            .into_iter()
            .map(|p| {
                let entries = p
                    .ranges
                    .iter()
                    .map(|&(slba, nlb)| {
                        nvme_dio_queue::cmd::CopyRange {
                            slba,
                            nlb,
                            ..Default::default()
                        }
                        .to_bytes()
                        .to_vec()
                    })
                    .collect();
                (p.sdlba, entries)
            })
            .collect();
        self.submit_range_lists(ns, tag, SplitKind::Copy, dest, pieces)
    }

    /// Submits a command built whole (flush, write zeroes, deallocate).
    fn submit_built(&mut self, sqe: Sqe, tag: u64, bufs: Bufs) -> Result<(), Rejected> {
        let qid = self.core.qid().0;
        let mut placer = Placer {
            sq: &self.sq,
            lists: &self.lists,
        };
        self.core
            .submit(&mut placer, tag, bufs, |_, _| {
                Ok::<_, std::convert::Infallible>(sqe)
            })
            .map_err(|(r, bufs)| Rejected::new(refusal(r, qid, |e| match e {}), bufs))
    }

    // ---- sugar: each is `submit` with the matching `Io` -------------------------------

    /// Reads `buf.len()` bytes starting at block `lba` into `buf`: `submit(Io::read(..))`, the
    /// same path without building the `Io`.
    ///
    /// # Errors
    ///
    /// As [`IoQueuePair::submit`].
    #[inline]
    pub fn read(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        buf: DmaBuf,
        tag: u64,
    ) -> Result<(), Rejected> {
        self.rw(ns, lba, Bufs::One(buf), tag, false, false)
    }

    /// Writes `buf` to the blocks starting at `lba`: `submit(Io::write(..))`.
    ///
    /// # Errors
    ///
    /// As [`IoQueuePair::submit`].
    #[inline]
    pub fn write(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        buf: DmaBuf,
        tag: u64,
    ) -> Result<(), Rejected> {
        self.rw(ns, lba, Bufs::One(buf), tag, true, false)
    }

    /// Writes `buf` with Force Unit Access: durable when it completes.
    ///
    /// # Errors
    ///
    /// As [`IoQueuePair::submit`].
    pub fn write_fua(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        buf: DmaBuf,
        tag: u64,
    ) -> Result<(), Rejected> {
        self.rw(ns, lba, Bufs::One(buf), tag, true, true)
    }

    /// Reads into an iovec set, in order, starting at `lba`.
    ///
    /// # Errors
    ///
    /// As [`IoQueuePair::submit`].
    pub fn readv(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        bufs: Vec<DmaBuf>,
        tag: u64,
    ) -> Result<(), Rejected> {
        self.rw(ns, lba, Bufs::Many(bufs), tag, false, false)
    }

    /// Writes an iovec set, in order, starting at `lba`.
    ///
    /// # Errors
    ///
    /// As [`IoQueuePair::submit`].
    pub fn writev(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        bufs: Vec<DmaBuf>,
        tag: u64,
    ) -> Result<(), Rejected> {
        self.rw(ns, lba, Bufs::Many(bufs), tag, true, false)
    }

    /// Writes an iovec set with Force Unit Access.
    ///
    /// # Errors
    ///
    /// As [`IoQueuePair::submit`].
    pub fn writev_fua(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        bufs: Vec<DmaBuf>,
        tag: u64,
    ) -> Result<(), Rejected> {
        self.rw(ns, lba, Bufs::Many(bufs), tag, true, true)
    }

    /// Flushes the volatile write cache of the namespace.
    ///
    /// # Errors
    ///
    /// As [`IoQueuePair::submit`].
    pub fn flush(&mut self, ns: &Namespace, tag: u64) -> Result<(), Rejected> {
        self.submit(Io::flush(ns), tag)
    }

    /// Writes zeroes to `blocks` blocks starting at `lba` (no data transfer).
    ///
    /// # Errors
    ///
    /// As [`IoQueuePair::submit`]; also when the command is unsupported.
    pub fn write_zeroes(
        &mut self,
        ns: &Namespace,
        lba: Lba,
        blocks: u32,
        tag: u64,
    ) -> Result<(), Rejected> {
        self.submit(Io::write_zeroes(ns, lba, blocks), tag)
    }

    /// Deallocates (trims) the given ranges of `(first block, block count)`.
    ///
    /// # Errors
    ///
    /// As [`IoQueuePair::submit`]; also when a range is invalid, there are more than 256 or
    /// none, the command is unsupported, or the range list cannot be allocated.
    pub fn deallocate(
        &mut self,
        ns: &Namespace,
        ranges: &[(Lba, u32)],
        tag: u64,
    ) -> Result<(), Rejected> {
        self.submit(Io::deallocate(ns, ranges), tag)
    }

    /// Submits a command as built by the caller: `submit(Io::raw(..))`, see [`Io::raw`].
    ///
    /// # Errors
    ///
    /// [`Rejected`] if the queue is full, the buffer is foreign, or it cannot be described
    /// by PRPs (not dword aligned, or larger than the list pages hold).
    pub fn submit_raw(&mut self, sqe: Sqe, buf: Option<DmaBuf>, tag: u64) -> Result<(), Rejected> {
        self.submit(Io::raw(sqe, buf), tag)
    }
}

/// A planner refusal as the driver's error: a range past the end reads the same whichever
/// call found it.
fn plan_error(ns: &Namespace, e: plan::PlanError) -> Error {
    match e {
        plan::PlanError::OutOfRange {
            slba,
            blocks,
            ns_blocks,
        } => Error::OutOfRange {
            nsid: ns.id(),
            slba: Lba(slba),
            blocks,
            ns_blocks,
        },
        e => Error::Invalid(e),
    }
}

fn check_range(ns: &Namespace, lba: Lba, blocks: u64, max: u64) -> Result<(), Error> {
    if blocks == 0 || blocks > max {
        return Err(Error::Bad(BadRequest::BlockCount { blocks, max }));
    }
    if lba
        .0
        .checked_add(blocks)
        .is_none_or(|end| end > ns.blocks())
    {
        return Err(Error::OutOfRange {
            nsid: ns.id(),
            slba: lba,
            blocks,
            ns_blocks: ns.blocks(),
        });
    }
    Ok(())
}

/// The split operation (metadata pointer, PRINFO, tags) and the planner limits of a read or
/// write on `ns`, or why it is refused.
fn rw_meta(
    ns: &Namespace,
    lba: Lba,
    bufs: &Bufs,
    write: bool,
    fua: bool,
    opts: RwOptions,
) -> Result<(SplitOp, nvme_dio_queue::Limits), Error> {
    let nsid = ns.id();
    let bad = |b| Err(Error::Bad(b));
    let mut meta = SplitMeta {
        slba: lba,
        ..SplitMeta::default()
    };
    let mut limits = *ns.limits();
    match ns.metadata_format() {
        None => {
            if bufs.metadata().is_some() {
                return bad(BadRequest::MetadataWithoutFormat { nsid });
            }
            if opts.pi.is_some() {
                return bad(BadRequest::PiWithoutProtection { nsid });
            }
        }
        Some(m) => {
            let mut strips = false;
            if let Some(o) = opts.pi {
                let Some(p) = m.pi else {
                    return bad(BadRequest::PiWithoutProtection { nsid });
                };
                if p.format == nvme_dio_queue::pi::PiFormat::Guard32 {
                    return Err(Error::NotSupported(Feature::Guard32));
                }
                let mask = p.format.ref_mask();
                let reftag = match (p.kind, o.reftag) {
                    (nvme_dio_queue::pi::PiType::Type1, Some(r)) if r & mask != lba.0 & mask => {
                        return bad(BadRequest::RefTagNotLba {
                            nsid,
                            given: r,
                            want: lba.0 & mask,
                        });
                    }
                    (nvme_dio_queue::pi::PiType::Type3, _) if o.prinfo.ref_tag => {
                        return bad(BadRequest::PiOption {
                            nsid,
                            what: "PI type 3 has no reference tag to check: drop the reference tag check",
                        });
                    }
                    (_, Some(r)) => r & mask,
                    (_, None) => lba.0 & mask,
                };
                meta.prinfo = o.prinfo;
                meta.tags = nvme_dio_queue::pi::PiTags {
                    reftag,
                    apptag: o.apptag,
                    appmask: o.appmask,
                };
                meta.ref_increments = p.kind.increments();
                meta.ref_mask = mask;
                strips = o.prinfo.pract && m.pract_strips();
            }
            if m.extended {
                if bufs.metadata().is_some() {
                    return bad(BadRequest::MetadataInDataBuffer {
                        nsid,
                        block_bytes: ns.buffer_block_size(),
                    });
                }
                if !strips {
                    limits = *ns.ext_limits().expect("extended formats have ext limits");
                }
            } else if !strips {
                let Some(md) = bufs.metadata() else {
                    return bad(BadRequest::MetadataMissing {
                        nsid,
                        metadata_bytes: m.size,
                        // The data length in blocks, for the message.
                        needed: data_len(bufs) / ns.lba_size() as u64 * m.size as u64,
                    });
                };
                if md.iova() & 3 != 0 {
                    return bad(BadRequest::MetadataNotDwordAligned { iova: md.iova() });
                }
                meta.mptr = md.iova();
                meta.ms = m.size;
            }
        }
    }
    Ok((
        SplitOp {
            write,
            fua,
            nsid,
            meta,
            kind: SplitKind::Rw,
        },
        limits,
    ))
}

fn data_len(bufs: &Bufs) -> u64 {
    match data_of(bufs) {
        Bufs::One(b) => b.len() as u64,
        Bufs::Many(v) => v.iter().map(|b| b.len() as u64).sum(),
        _ => 0,
    }
}

/// The data buffers of a request, without its metadata buffer.
fn data_of(bufs: &Bufs) -> &Bufs {
    match bufs {
        Bufs::WithMetadata(w) => &w.data,
        b => b,
    }
}

/// The separate metadata buffer must hold every block's metadata.
fn check_meta_len(ns: &Namespace, bufs: &Bufs, blocks: u64, used: bool) -> Result<(), Error> {
    let (Some(md), true) = (bufs.metadata(), used) else {
        return Ok(());
    };
    let needed = blocks * ns.metadata_size() as u64;
    if (md.len() as u64) < needed {
        return Err(Error::Bad(BadRequest::MetadataTooSmall {
            have: md.len(),
            needed,
        }));
    }
    Ok(())
}

/// A write marked atomic: within the power-fail atomic unit, inside one boundary, one
/// command.
fn check_atomic(
    ns: &Namespace,
    lba: Lba,
    blocks: u64,
    commands: usize,
) -> Result<(), AtomicRefusal> {
    let a = ns.atomic_limits();
    if blocks > a.power_fail as u64 {
        return Err(AtomicRefusal::TooLarge {
            blocks,
            limit: a.power_fail,
        });
    }
    if a.crosses_power_fail_boundary(lba.0, blocks) {
        return Err(AtomicRefusal::CrossesBoundary {
            slba: lba.0,
            blocks,
            boundary: a.boundary_power_fail,
            offset: a.boundary_offset,
        });
    }
    if commands != 1 {
        return Err(AtomicRefusal::WouldSplit { commands });
    }
    Ok(())
}

/// Blocks per command of a no-data command: NLB's 65 536, or fewer where the controller's
/// byte limit (VSL, WZSL) says so.
fn per_command(limit_bytes: Option<u64>, ns: &Namespace) -> u64 {
    let nlb_max = nvme_dio_queue::plan::MAX_BLOCKS_PER_COMMAND as u64;
    limit_bytes.map_or(nlb_max, |b| (b / ns.lba_size() as u64).clamp(1, nlb_max))
}

fn no_data_children(slba: u64, blocks: u64, per: u64) -> Vec<Command> {
    nvme_dio_queue::ranges::split_blocks(slba, blocks, per)
        .into_iter()
        .map(|(s, n)| Command {
            slba: Lba(s),
            nlb: n,
            sgl: false,
            segs: nvme_dio_queue::SegRange {
                first: 0,
                first_offset: 0,
                last: 0,
                last_end: 0,
            },
        })
        .collect()
}

fn no_data_op(ns: &Namespace, kind: SplitKind, meta: SplitMeta) -> SplitOp {
    SplitOp {
        write: false,
        fua: false,
        nsid: ns.id(),
        meta,
        kind,
    }
}
