//! Embedding hygiene (issue 16, item 7): a controller's whole life (bring-up, queue pairs in
//! poll and interrupt mode, I/O, a reset, the async face, teardown) starts no thread, installs
//! no signal handler and leaves the CPU affinity alone. Read from `/proc/self/status`, so the
//! test needs no `unsafe`. One test in this binary: nothing else runs in the process meanwhile.

use std::sync::Arc;
use std::time::Duration;

use nvme_dio::{
    CompletionMode, Controller, ControllerOptions, Lba, MemoryOptions, QueuePairOptions,
};
use nvme_dio_emu::{EmuConfig, EmuFunction, Mode, NsConfig};

/// The fields of /proc/self/status that say what a library did to its process.
#[derive(Debug, PartialEq, Eq)]
struct Footprint {
    threads: String,
    /// Signals with a handler installed (hex mask).
    sig_caught: String,
    /// Signals ignored (hex mask).
    sig_ignored: String,
    /// Blocked signals of this thread.
    sig_blocked: String,
    cpus_allowed: String,
}

fn footprint() -> Footprint {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
            .trim()
            .to_string()
    };
    Footprint {
        threads: field("Threads:"),
        sig_caught: field("SigCgt:"),
        sig_ignored: field("SigIgn:"),
        sig_blocked: field("SigBlk:"),
        cpus_allowed: field("Cpus_allowed_list:"),
    }
}

#[test]
fn a_controllers_whole_life_leaves_threads_signals_and_affinity_alone() {
    let before = footprint();
    {
        // Inline mode: the emulator runs on the caller's thread too (Mode::Thread would
        // start the emulated device's own thread, which is the device, not the library).
        let dev = Arc::new(
            EmuFunction::new(EmuConfig {
                mode: Mode::Inline,
                namespaces: vec![NsConfig::ram(1024, 4096)],
                ..EmuConfig::default()
            })
            .unwrap(),
        );
        let opts = ControllerOptions::default().memory(MemoryOptions::any_pages(8 << 20));
        let ctrl = Controller::new(dev, opts).unwrap();
        let ns = ctrl.namespace(1).unwrap().clone();
        for mode in [CompletionMode::Poll, CompletionMode::Interrupt] {
            let mut qp = ctrl
                .create_io_qpair(QueuePairOptions::default().mode(mode))
                .unwrap();
            for tag in 0..64 {
                let buf = ctrl.memory().alloc(4096, 4096).unwrap();
                qp.write(&ns, Lba(tag), buf, tag)
                    .map_err(|r| r.error)
                    .unwrap();
            }
            let done = qp.drain(Duration::from_secs(10)).unwrap();
            assert_eq!(done.len(), 64);
            assert!(done.iter().all(|c| c.result.is_ok()));
        }
        ctrl.reset().unwrap();
        let qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
        let aqp = nvme_dio::AsyncQueuePair::new(qp);
        let buf = ctrl.memory().alloc(4096, 4096).unwrap();
        let fut = aqp.read(&ns, Lba(3), buf);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The runtime is the test's (a current-thread runtime starts no thread either).
        rt.block_on(fut).map_err(|f| f.error).unwrap();
        assert_eq!(footprint(), before, "while the controller is alive");
    }
    assert_eq!(footprint(), before, "after everything was dropped");
}
