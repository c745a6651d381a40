//! Bad input at the API, as a table: each case, the exact error it gets, and a check that
//! nothing reached the device. (The CLI's table lives with the CLI tests.)

use std::sync::Arc;
use std::time::Duration;

use nvme_dio::{
    CompletionMode, Controller, ControllerOptions, DmaBuf, IoQueuePair, Lba, MemoryOptions,
    Namespace, PageKind, QueuePairOptions,
};
use nvme_dio_emu::{EmuConfig, EmuFunction, Fault, NsConfig};

fn mem_opts() -> MemoryOptions {
    MemoryOptions::any_pages(8 << 20)
}

fn controller(opts: ControllerOptions) -> Result<Controller<EmuFunction>, nvme_dio::Error> {
    let cfg = EmuConfig {
        namespaces: vec![NsConfig::ram(1024, 4096), NsConfig::ram(4096, 512)],
        ..EmuConfig::default()
    };
    Controller::new(Arc::new(EmuFunction::new(cfg).unwrap()), opts)
}

fn default_opts() -> ControllerOptions {
    ControllerOptions::default().memory(mem_opts()).io_queues(4)
}

struct Fixture {
    ctrl: Controller<EmuFunction>,
    qp: IoQueuePair<EmuFunction>,
    ns4k: Namespace,
    ns512: Namespace,
}

fn fixture() -> Fixture {
    let ctrl = controller(default_opts()).unwrap();
    let qp = ctrl
        .create_io_qpair(QueuePairOptions::default().entries(8))
        .unwrap();
    let ns4k = ctrl.namespace(1).unwrap().clone();
    let ns512 = ctrl.namespace(2).unwrap().clone();
    Fixture {
        ctrl,
        qp,
        ns4k,
        ns512,
    }
}

fn buf(f: &Fixture, offset: usize, len: usize) -> DmaBuf {
    let mut b = f.ctrl.memory().alloc(offset + len + 8, 4096).unwrap();
    b.set_view(offset, len).unwrap();
    b
}

type Case = (
    &'static str,
    &'static str,
    fn(&mut Fixture) -> Result<(), String>,
);

/// The submit-path cases: each must be refused with the expected message, hand its buffers
/// back (checked by the count), and queue nothing.
fn submit_cases() -> Vec<Case> {
    vec![
        ("readv of no buffers", "the I/O has no bytes", |f| {
            f.qp.readv(&f.ns4k, Lba(0), Vec::new(), 1)
                .map_err(|r| r.error.report())
        }),
        (
            "a write of 1000 bytes on 4 KiB blocks",
            "not a multiple of the 4096-byte block size",
            |f| {
                let b = buf(f, 0, 1000);
                f.qp.write(&f.ns4k, Lba(0), b, 1)
                    .map_err(|r| r.error.report())
            },
        ),
        (
            "a read of 513 bytes on 512-byte blocks",
            "not a multiple of the 512-byte block size",
            |f| {
                let b = buf(f, 0, 516);
                f.qp.read(&f.ns512, Lba(0), b, 1)
                    .map_err(|r| r.error.report())
            },
        ),
        (
            "a buffer starting 2 bytes into a page",
            "not 4-byte aligned",
            |f| {
                let b = buf(f, 2, 4096);
                f.qp.read(&f.ns4k, Lba(0), b, 1)
                    .map_err(|r| r.error.report())
            },
        ),
        (
            "a buffer starting at an odd address",
            "not 4-byte aligned",
            |f| {
                let b = buf(f, 1, 512);
                f.qp.read(&f.ns512, Lba(0), b, 1)
                    .map_err(|r| r.error.report())
            },
        ),
        (
            "a segment whose length is not a dword multiple",
            "not a multiple of 4",
            |f| {
                let v = vec![buf(f, 0, 510), buf(f, 0, 2)];
                f.qp.readv(&f.ns512, Lba(0), v, 1)
                    .map_err(|r| r.error.report())
            },
        ),
        ("an empty segment in an iovec set", "is empty", |f| {
            let v = vec![buf(f, 0, 512), buf(f, 0, 0)];
            f.qp.readv(&f.ns512, Lba(0), v, 1)
                .map_err(|r| r.error.report())
        }),
        (
            "a read starting at the namespace end",
            "blocks 1024..1024+1 run past the end of namespace 1 (1024 blocks)",
            |f| {
                let b = buf(f, 0, 4096);
                f.qp.read(&f.ns4k, Lba(1024), b, 1)
                    .map_err(|r| r.error.report())
            },
        ),
        (
            "a read crossing the namespace end",
            "blocks 1023..1023+2 run past the end of namespace 1",
            |f| {
                let b = buf(f, 0, 8192);
                f.qp.read(&f.ns4k, Lba(1023), b, 1)
                    .map_err(|r| r.error.report())
            },
        ),
        (
            "a write at LBA u64::MAX",
            "run past the end of namespace 1",
            |f| {
                let b = buf(f, 0, 4096);
                f.qp.write(&f.ns4k, Lba(u64::MAX), b, 1)
                    .map_err(|r| r.error.report())
            },
        ),
        (
            "an iovec set that splits mid-block",
            "cannot split the I/O at segment 1",
            |f| {
                // 2 KiB ending a page, then 2 KiB not starting one: the PRP rule breaks inside
                // the first 4 KiB block, and without SGLs no whole-block split exists.
                let v = vec![buf(f, 2048, 2048), buf(f, 256, 2048)];
                f.qp.readv(&f.ns4k, Lba(0), v, 1)
                    .map_err(|r| r.error.report())
            },
        ),
        (
            "eight 512-byte segments at odd offsets on 4 KiB blocks",
            "cannot split the I/O at segment 1",
            |f| {
                let v = (0..8).map(|i| buf(f, 8 + i * 4, 512)).collect();
                f.qp.readv(&f.ns4k, Lba(0), v, 1)
                    .map_err(|r| r.error.report())
            },
        ),
        (
            "a buffer from another controller's memory",
            "not from this controller's DMA memory",
            |f| {
                let other = controller(default_opts()).unwrap();
                let b = other.memory().alloc(4096, 4096).unwrap();
                f.qp.read(&f.ns4k, Lba(0), b, 1)
                    .map_err(|r| r.error.report())
            },
        ),
        (
            "an iovec set with one foreign buffer",
            "buffer 1 is not from this controller's DMA memory",
            |f| {
                let other = controller(default_opts()).unwrap();
                let v = vec![buf(f, 0, 4096), other.memory().alloc(4096, 4096).unwrap()];
                f.qp.writev(&f.ns4k, Lba(0), v, 1)
                    .map_err(|r| r.error.report())
            },
        ),
        (
            "write zeroes of 0 blocks",
            "invalid request: 0 blocks: one command takes 1..=65536",
            |f| {
                f.qp.write_zeroes(&f.ns4k, Lba(0), 0, 1)
                    .map_err(|r| r.error.report())
            },
        ),
        (
            "write zeroes past the end",
            "blocks 1000..1000+100 run past the end of namespace 1 (1024 blocks)",
            |f| {
                f.qp.write_zeroes(&f.ns4k, Lba(1000), 100, 1)
                    .map_err(|r| r.error.report())
            },
        ),
        (
            "write zeroes of more than 65536 blocks",
            "70000 blocks: one command takes 1..=65536",
            |f| {
                f.qp.write_zeroes(&f.ns512, Lba(0), 70_000, 1)
                    .map_err(|r| r.error.report())
            },
        ),
        (
            "deallocate with no ranges",
            "invalid request: 0 deallocate ranges: Dataset Management takes 1..=256",
            |f| {
                f.qp.deallocate(&f.ns4k, &[], 1)
                    .map_err(|r| r.error.report())
            },
        ),
        ("deallocate with 257 ranges", "257 deallocate ranges", |f| {
            let r: Vec<_> = (0..257).map(|i| (Lba(i), 1)).collect();
            f.qp.deallocate(&f.ns4k, &r, 1)
                .map_err(|r| r.error.report())
        }),
        (
            "deallocate past the end",
            "blocks 1020..1020+10 run past the end of namespace 1",
            |f| {
                f.qp.deallocate(&f.ns4k, &[(Lba(0), 1), (Lba(1020), 10)], 1)
                    .map_err(|r| r.error.report())
            },
        ),
        (
            "a request beyond the queue's depth",
            "queue pair 1 full (7 outstanding): poll for completions",
            |f| {
                for i in 0..7 {
                    let b = buf(f, 0, 4096);
                    f.qp.read(&f.ns4k, Lba(i), b, i)
                        .map_err(|r| r.error.report())?;
                }
                let b = buf(f, 0, 4096);
                f.qp.read(&f.ns4k, Lba(0), b, 99)
                    .map_err(|r| r.error.report())
            },
        ),
    ]
}

#[test]
fn bad_input_at_submit_is_refused_with_a_clear_error_and_nothing_queued() {
    let mut n = 0;
    for (what, want, case) in submit_cases() {
        let mut f = fixture();
        let err = case(&mut f).expect_err(what);
        println!("{what:60} -> {err}");
        assert!(
            err.contains(want),
            "{what}: got {err:?}, want it to contain {want:?}"
        );
        // Only the queue-full case accepted anything (the requests that filled the queue).
        let accepted = f.qp.stats().submitted;
        assert!(
            accepted == 0 || want.starts_with("queue pair 1 full"),
            "{what}: {accepted} accepted"
        );
        assert_eq!(
            f.qp.stats().commands,
            accepted,
            "{what}: only accepted requests reached the SQ"
        );
        n += 1;
    }
    assert!(n >= 21);
}

#[test]
fn bad_input_at_setup_is_refused_with_a_clear_error() {
    let ctrl = controller(default_opts()).unwrap();
    let cases: Vec<(&str, &str, Result<(), String>)> = vec![
        (
            "namespace 0",
            "namespace 0 does not exist on this controller (active: [1, 2])",
            ctrl.namespace(0).map(|_| ()).map_err(|e| e.report()),
        ),
        (
            "namespace 99",
            "namespace 99 does not exist",
            ctrl.namespace(99).map(|_| ()).map_err(|e| e.report()),
        ),
        (
            "a queue pair of one entry",
            "invalid option: QueuePairOptions::entries 1",
            ctrl.create_io_qpair(QueuePairOptions::default().entries(1))
                .map(|_| ())
                .map_err(|e| e.report()),
        ),
        (
            "more queue pairs than granted",
            "no free I/O queue: the controller granted 4",
            {
                let _held: Vec<_> = (0..4)
                    .map(|_| ctrl.create_io_qpair(QueuePairOptions::default()).unwrap())
                    .collect();
                ctrl.create_io_qpair(QueuePairOptions::default())
                    .map(|_| ())
                    .map_err(|e| e.report())
            },
        ),
        (
            "interrupt mode without MSI-X",
            "Interrupt needs MSI-X vector 1, but 0 are enabled",
            controller(default_opts().interrupts(false))
                .unwrap()
                .create_io_qpair(QueuePairOptions::default().mode(CompletionMode::Interrupt))
                .map(|_| ())
                .map_err(|e| e.report()),
        ),
        (
            "an admin queue of one entry",
            "controller bring-up failed while setting up the admin queue: invalid option: ControllerOptions::admin_entries 1",
            controller(default_opts().admin_entries(1))
                .map(|_| ())
                .map_err(|e| e.report()),
        ),
        (
            "more hugepages than the machine has, without fallback",
            "hugepages",
            controller(
                default_opts().memory(
                    MemoryOptions::default()
                        .page(PageKind::Huge2M)
                        .region_bytes(1 << 40)
                        .allow_fallback(false),
                ),
            )
            .map(|_| ())
            .map_err(|e| e.report()),
        ),
        ("a request after the device was removed", "device gone", {
            let f = fixture();
            let Fixture {
                ctrl, mut qp, ns4k, ..
            } = f;
            ctrl.device().inject(Fault::SurpriseRemoval).unwrap();
            // The queue pair notices on its next deadline scan (or the next request after).
            let b = ctrl.memory().alloc(4096, 4096).unwrap();
            qp.read(&ns4k, Lba(0), b, 1).unwrap();
            let c = nvme_dio_tests::io::wait_one(&mut qp, Duration::from_secs(60));
            assert!(c.result.is_err());
            let b = ctrl.memory().alloc(4096, 4096).unwrap();
            qp.read(&ns4k, Lba(0), b, 2).map_err(|r| r.error.report())
        }),
        ("a PCI address that is not one", "0000:zz:00.0", {
            nvme_dio_dma::VfioFunction::open("0000:zz:00.0")
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        ("a PCI address with no device", "0000:7f:1f.7", {
            nvme_dio_dma::VfioFunction::open("0000:7f:1f.7")
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
    ];
    for (what, want, got) in cases {
        let err = got.expect_err(what);
        println!("{what:60} -> {err}");
        assert!(
            err.contains(want),
            "{what}: got {err:?}, want it to contain {want:?}"
        );
    }
}

#[test]
fn bad_input_io_on_a_namespace_with_metadata_and_no_metadata_buffer_is_refused() {
    let cfg = EmuConfig {
        namespaces: vec![NsConfig {
            metadata_size: 8,
            ..NsConfig::ram(1024, 512)
        }],
        ..EmuConfig::default()
    };
    let ctrl = Controller::new(Arc::new(EmuFunction::new(cfg).unwrap()), default_opts()).unwrap();
    let ns = ctrl.namespace(1).unwrap().clone();
    assert_eq!(ns.metadata_size(), 8);
    let mut qp = ctrl.create_io_qpair(QueuePairOptions::default()).unwrap();
    let r = qp
        .read(&ns, Lba(0), ctrl.memory().alloc(512, 4096).unwrap(), 1)
        .unwrap_err();
    assert_eq!(
        r.error.report(),
        "invalid request: namespace 1 is formatted with 8 bytes of separate metadata per block: \
         give the request a metadata buffer of 8 bytes (Io::metadata), or use PRACT where the \
         metadata is only the PI tuple"
    );
    assert_eq!(qp.stats().commands, 0);
}
