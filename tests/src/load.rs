//! A verified load: several queue pairs on several threads, random 4 KiB writes and reads at
//! a fixed queue depth, each request's outcome counted, each block's last successful write
//! remembered so a verify pass can read the data back after faults and recoveries.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_dio::{Controller, Error, IoQueuePair, Lba, PciFunction, QueuePairOptions};

use crate::io::pattern;

/// What one load run saw, summed over its queue pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests accepted by a queue pair.
    pub submitted: u64,
    /// Requests that completed successfully.
    pub success: u64,
    /// Requests that completed with an error.
    pub error: u64,
    /// Submissions refused up front (device gone, controller lost), not counted as submitted.
    pub refused: u64,
    /// Failed requests whose buffers were held, not returned (the device may still write
    /// them: `Error::BuffersHeld`); counted among `error` too.
    pub held: u64,
    /// Error messages seen, with counts.
    pub errors: Vec<(String, u64)>,
}

/// Load settings.
#[derive(Clone, Debug)]
pub struct Load {
    /// Queue pairs, one thread each.
    pub queues: usize,
    /// Requests in flight per queue pair.
    pub qd: usize,
    /// Requests to submit per queue pair.
    pub ios: u64,
    /// Blocks per queue pair region (each thread owns a disjoint range).
    pub region_blocks: u64,
    /// Queue pair options (timeouts, mode).
    pub qp: QueuePairOptions,
    /// Give up (and fail) if a queue pair makes no progress for this long.
    pub stall: Duration,
    /// The first queue pair calls the fault hook after submitting this many requests.
    pub fault_after: u64,
    /// Stop submitting after this long, whatever `ios` says.
    pub max_time: Duration,
}

/// Per-thread result: counts and the seed of each block's last successful write.
struct ThreadResult {
    counts: Counts,
    written: HashMap<u64, u64>,
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Runs the load on namespace 1 (4 KiB blocks expected). `during` is called once from the
/// first thread after `fault_after` of its requests were submitted: inject the fault there.
/// Returns the summed counts and the map of block -> seed of its last successful write.
pub fn run<D: PciFunction>(
    ctrl: &Controller<D>,
    load: &Load,
    during: impl FnOnce() + Send + 'static,
) -> (Counts, HashMap<u64, u64>) {
    let during = Arc::new(std::sync::Mutex::new(Some(
        Box::new(during) as Box<dyn FnOnce() + Send>
    )));
    // Every queue pair exists before any I/O starts, so the fault hits running queues.
    let ready = Arc::new(std::sync::Barrier::new(load.queues));
    let threads: Vec<_> = (0..load.queues)
        .map(|t| {
            let ctrl = ctrl.clone();
            let load = load.clone();
            let during = Arc::clone(&during);
            let ready = Arc::clone(&ready);
            std::thread::spawn(move || {
                let mut qp = ctrl.create_io_qpair(load.qp.clone()).expect("queue pair");
                ready.wait();
                let r = run_one(&ctrl, &mut qp, &load, t as u64, &during);
                (r, qp.stats().clone())
            })
        })
        .collect();
    let mut counts = Counts::default();
    let mut written = HashMap::new();
    let mut errors: HashMap<String, u64> = HashMap::new();
    for t in threads {
        let (r, _stats) = t.join().expect("load thread panicked");
        counts.submitted += r.counts.submitted;
        counts.success += r.counts.success;
        counts.error += r.counts.error;
        counts.refused += r.counts.refused;
        counts.held += r.counts.held;
        for (e, n) in r.counts.errors {
            *errors.entry(e).or_default() += n;
        }
        written.extend(r.written);
    }
    counts.errors = errors.into_iter().collect();
    counts.errors.sort();
    (counts, written)
}

#[allow(clippy::type_complexity)]
fn run_one<D: PciFunction>(
    ctrl: &Controller<D>,
    qp: &mut IoQueuePair<D>,
    load: &Load,
    t: u64,
    during: &std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
) -> ThreadResult {
    let ns = ctrl.namespace(1).expect("namespace 1").clone();
    let bs = ns.lba_size() as usize;
    let base = t * load.region_blocks;
    let pool = ctrl.memory().pool(bs, load.qd, 4096).expect("buffer pool");
    let mut rng = 0x9e37_79b9_7f4a_7c15 ^ (t + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut counts = Counts::default();
    let mut written: HashMap<u64, u64> = HashMap::new();
    // tag -> (lba, seed of a write, or None for a read)
    let mut in_flight: HashMap<u64, (u64, Option<u64>)> = HashMap::new();
    let mut done_tags: HashSet<u64> = HashSet::new();
    let mut busy_lbas: HashSet<u64> = HashSet::new();
    let mut errors: HashMap<String, u64> = HashMap::new();
    let mut next_tag = 0u64;
    let mut last_progress = Instant::now();
    let mut gave_up = false;
    let started = Instant::now();
    loop {
        if started.elapsed() > load.max_time {
            gave_up = true;
        }
        while !gave_up && next_tag < load.ios && in_flight.len() < load.qd {
            if t == 0 && next_tag == load.fault_after {
                if let Some(f) = during.lock().unwrap().take() {
                    f();
                }
            }
            let Some(buf) = pool.alloc() else {
                if in_flight.is_empty() {
                    // Every buffer of the pool is held (the device may still write them):
                    // nothing left to submit with.
                    gave_up = true;
                }
                break;
            };
            let lba = base + xorshift(&mut rng) % load.region_blocks;
            if busy_lbas.contains(&lba) {
                // One request per block at a time, so "the last write" is well defined.
                drop(buf);
                continue;
            }
            let is_write = !written.contains_key(&lba) || xorshift(&mut rng) % 2 == 0;
            let seed = xorshift(&mut rng);
            let r = if is_write {
                buf.copy_from_slice(0, &pattern(bs as u32, lba, seed, bs))
                    .unwrap();
                qp.write(&ns, Lba(lba), buf, next_tag)
            } else {
                qp.read(&ns, Lba(lba), buf, next_tag)
            };
            match r {
                Ok(()) => {
                    busy_lbas.insert(lba);
                    in_flight.insert(next_tag, (lba, is_write.then_some(seed)));
                    counts.submitted += 1;
                    next_tag += 1;
                }
                Err(rej) => match *rej.error {
                    Error::QueueFull { .. } => break,
                    e => {
                        // Refused up front: the controller is gone or lost; stop submitting.
                        *errors.entry(format!("refused: {e}")).or_default() += 1;
                        counts.refused += 1;
                        gave_up = true;
                    }
                },
            }
        }
        if in_flight.is_empty() && (gave_up || next_tag >= load.ios) {
            break;
        }
        qp.wait(Duration::from_millis(20)).expect("wait");
        // While requests are in flight, so that a lost or doubled delivery shows.
        qp.check_accounting().expect("queue pair accounting");
        while let Some(c) = qp.next_completion() {
            last_progress = Instant::now();
            let (lba, wseed) = in_flight.remove(&c.tag).unwrap_or_else(|| {
                panic!(
                    "tag {} completed but was not in flight (twice: {})",
                    c.tag,
                    done_tags.contains(&c.tag)
                )
            });
            done_tags.insert(c.tag);
            busy_lbas.remove(&lba);
            // The buffer comes back, unless the device may still write it: then the
            // completion says it is held, and it is never handed out again.
            let held = matches!(c.result, Err(Error::BuffersHeld { .. }));
            assert_eq!(
                held,
                c.bufs.is_none(),
                "held exactly when no buffer came back"
            );
            let buf = c.bufs.into_one();
            if held {
                counts.held += 1;
            }
            match c.result {
                Ok(()) => {
                    counts.success += 1;
                    match wseed {
                        Some(seed) => {
                            written.insert(lba, seed);
                        }
                        None => {
                            // A successful read of a block we wrote must return that data.
                            if let Some(&seed) = written.get(&lba) {
                                let mut got = vec![0u8; bs];
                                let buf = buf.as_ref().expect("a success returns its buffer");
                                buf.copy_to_slice(0, &mut got).unwrap();
                                assert!(
                                    got == pattern(bs as u32, lba, seed, bs),
                                    "read of lba {lba} returned wrong data"
                                );
                            }
                        }
                    }
                }
                Err(e) => {
                    counts.error += 1;
                    // A failed write leaves the block unknown: stop verifying it.
                    if wseed.is_some() {
                        written.remove(&lba);
                    }
                    *errors.entry(e.to_string()).or_default() += 1;
                }
            }
            drop(buf);
        }
        assert!(
            last_progress.elapsed() < load.stall,
            "queue pair {t} made no progress for {:?}: {} in flight, stats {:?}",
            load.stall,
            in_flight.len(),
            qp.stats()
        );
    }
    counts.errors = errors.into_iter().collect();
    ThreadResult { counts, written }
}

/// Reads back every block in `written` and checks it carries the seed of its last
/// successful write. Returns how many blocks were verified.
pub fn verify<D: PciFunction>(ctrl: &Controller<D>, written: &HashMap<u64, u64>) -> usize {
    read_back(ctrl, written, true)
}

fn read_back<D: PciFunction>(
    ctrl: &Controller<D>,
    written: &HashMap<u64, u64>,
    compare: bool,
) -> usize {
    let ns = ctrl.namespace(1).expect("namespace 1").clone();
    let bs = ns.lba_size() as usize;
    let mut qp = ctrl
        .create_io_qpair(QueuePairOptions::default())
        .expect("verify queue pair");
    let mut lbas: Vec<_> = written.iter().map(|(&l, &s)| (l, s)).collect();
    lbas.sort();
    for chunk in lbas.chunks(32) {
        for &(lba, _) in chunk {
            let buf = ctrl.memory().alloc(bs, 4096).unwrap();
            qp.read(&ns, Lba(lba), buf, lba)
                .map_err(|r| r.error)
                .expect("verify read");
        }
        let mut got = 0;
        while got < chunk.len() {
            qp.wait(Duration::from_millis(100)).unwrap();
            while let Some(c) = qp.next_completion() {
                c.result
                    .unwrap_or_else(|e| panic!("verify read of lba {}: {e}", c.tag));
                got += 1;
                if !compare {
                    continue;
                }
                let seed = written[&c.tag];
                let mut data = vec![0u8; bs];
                c.bufs
                    .into_one()
                    .unwrap()
                    .copy_to_slice(0, &mut data)
                    .unwrap();
                assert!(
                    data == pattern(bs as u32, c.tag, seed, bs),
                    "block {} lost its data",
                    c.tag
                );
            }
        }
    }
    lbas.len()
}
