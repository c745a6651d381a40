//! Asynchronous events: Asynchronous Event Requests kept outstanding on the admin queue,
//! their completions delivered as typed [`Event`]s, and the namespace list refreshed when
//! the controller says namespaces changed.
//!
//! ## Model
//!
//! At bring-up (and after every reset) the driver enables the events the controller
//! supports (Set Features Asynchronous Event Configuration: every SMART critical warning,
//! plus namespace attribute and firmware activation notices where OAES lists them) and
//! places up to [`AERS`] Asynchronous Event Requests on the admin queue. They complete only
//! when something happens, each holding one admin slot meanwhile.
//!
//! Nothing runs behind the caller's back: an event is handed out by
//! [`Controller::poll_events`], which reaps the admin queue without waiting, reads the log
//! page each event names (the read is what re-enables that event type on the controller),
//! refreshes the namespace list on a Namespace Attribute Changed notice, and places new
//! AERs. Call it now and then (a reactor's timer, a health thread), or when
//! [`Controller::event_fd`] (the admin queue's MSI-X vector) is readable.
//!
//! A namespace refresh re-identifies the active namespaces: new ones appear in
//! [`Controller::namespaces`], resized ones are replaced there by their new description,
//! and removed ones leave it; every clone of a removed [`Namespace`] refuses new I/O with
//! [`Error::NamespaceRemoved`], and commands on it still in flight fail with the device's
//! status (Invalid Namespace or Format).

use nvme_dio_dma::{Bar0, PciFunction};
use nvme_dio_queue::cmd::{GetLogPage, SetFeatures};
use nvme_dio_queue::event::AsyncEventInfo;
pub use nvme_dio_queue::event::{AsyncEvent, ErrorEvent, HealthEvent};
use nvme_dio_queue::opcode::log;
use nvme_dio_queue::{Nsid, PageSize};
use vmm_sys_util::eventfd::EventFd;

use crate::admin::AdminQueue;
use crate::controller::{Controller, NsContext, Shared, identify_namespaces};
use crate::error::Error;
use crate::namespace::Namespace;
use crate::recovery::lock_admin;

/// Asynchronous Event Requests kept outstanding (fewer if the controller's AERL allows
/// fewer). Events queue in the controller, so one would do; a few spare a round trip when
/// events come in bursts.
pub const AERS: u32 = 4;

/// An asynchronous event, as [`Controller::poll_events`] hands it out.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A SMART / Health critical warning (reliability, temperature, spare). The SMART /
    /// Health log says more (`Controller::smart_log`).
    Health(HealthEvent),
    /// A controller error (see the Error Information log).
    Error(ErrorEvent),
    /// Namespaces were added, resized or removed; the namespace list was refreshed.
    Namespaces(NamespaceChanges),
    /// A firmware activation is starting (the controller may pause I/O meanwhile).
    FirmwareActivation,
    /// An event this driver does not decode.
    Other {
        /// Asynchronous Event Type.
        event_type: u8,
        /// Asynchronous Event Information.
        info: u8,
        /// The log page it names.
        log_page: u8,
    },
}

/// What a namespace refresh found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceChanges {
    /// Namespaces that appeared.
    pub added: Vec<Nsid>,
    /// Namespaces whose size changed: `(nsid, blocks before, blocks now)`.
    pub resized: Vec<(Nsid, u64, u64)>,
    /// Namespaces that are gone (their I/O now fails with [`Error::NamespaceRemoved`]).
    pub removed: Vec<Nsid>,
}

impl NamespaceChanges {
    /// True if nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.resized.is_empty() && self.removed.is_empty()
    }
}

/// How many AERs to keep for a controller that allows `aerl` outstanding.
pub(crate) fn aers_for(aerl: u16) -> u32 {
    (aerl as u32).clamp(1, AERS)
}

/// Enables the events the controller supports and places the AERs (bring-up and resets).
/// A controller that refuses the configuration still gets its AERs: SMART warnings are
/// reported by default on many.
pub(crate) fn arm_events<B: Bar0>(
    bar: &B,
    admin: &mut AdminQueue,
    id: &nvme_dio_queue::IdentifyController,
    t: std::time::Duration,
) {
    let oaes = id.oaes();
    let cfg = SetFeatures::async_event_config(0xff, oaes & 1 << 8 != 0, oaes & 1 << 9 != 0);
    let _ = admin.execute(bar, cfg.build(), t);
    admin.arm_aers(bar, aers_for(id.aerl()), t);
}

impl<D: PciFunction> Shared<D> {
    /// Re-identifies the namespaces and replaces the list (caller holds the admin lock).
    fn refresh_namespaces(&self, admin: &mut AdminQueue) -> Result<NamespaceChanges, Error> {
        let bar = self.dev.bar0();
        let idbuf = self.mem.alloc(4096, self.page.bytes())?;
        let cap = self.info.cap;
        let cx = NsContext {
            id: &self.info.identify,
            mpsmin: cap.mpsmin().unwrap_or(PageSize::SIZE_4K),
            page: self.page,
            list_pages: self.prp_list_pages,
            sgl: self.info.sgl,
            command_limits: self.command_limits,
            verify_logged: self.verify_logged,
        };
        let fresh = identify_namespaces(bar, admin, &idbuf, self.admin_timeout, &cx)?;
        let mut list = self.namespaces.write().expect("namespace list poisoned");
        let mut changes = NamespaceChanges::default();
        let mut next: Vec<Namespace> = Vec::with_capacity(fresh.len());
        for ns in fresh {
            match list.iter().find(|o| o.id() == ns.id()) {
                Some(old) => {
                    if old.blocks() != ns.blocks() {
                        changes.resized.push((ns.id(), old.blocks(), ns.blocks()));
                    }
                    next.push(old.updated(ns));
                }
                None => {
                    changes.added.push(ns.id());
                    next.push(ns);
                }
            }
        }
        for old in list.iter() {
            if !next.iter().any(|n| n.id() == old.id()) {
                old.mark_removed();
                changes.removed.push(old.id());
            }
        }
        *list = next;
        Ok(changes)
    }
}

impl<D: PciFunction> Controller<D> {
    /// Hands out the asynchronous events the controller reported since the last call,
    /// without waiting: reaps the admin queue, reads each event's log page (which
    /// re-enables that event type), refreshes the namespace list on a namespace change,
    /// and places new Asynchronous Event Requests. See the [module documentation](self).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use nvme_dio::{Controller, Event};
    /// let ctrl = Controller::open("emu:ram", |_| {})?;
    /// for e in ctrl.poll_events()? {
    ///     match e {
    ///         Event::Namespaces(c) => println!("namespaces changed: {c:?}"),
    ///         Event::Health(h) => eprintln!("health warning: {h:?}"),
    ///         other => println!("{other:?}"),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::DeviceGone`] and friends when the controller is not live; the error of a
    /// log page read or of the namespace refresh (the events before it are lost then; the
    /// AERs are placed again on the next call).
    pub fn poll_events(&self) -> Result<Vec<Event>, Error> {
        let s = self.shared();
        s.check_live()?;
        let mut admin = lock_admin(s)?;
        let bar = s.dev.bar0();
        admin.reap(bar, None);
        let raw = std::mem::take(&mut admin.events);
        let mut out = Vec::with_capacity(raw.len());
        let mut refresh = false;
        if !raw.is_empty() {
            let buf = s.mem.alloc(4096, s.page.bytes())?;
            for dw0 in raw {
                let info = AsyncEventInfo::from_dw0(dw0);
                // Reading the page (RAE clear) is what unmasks the event type.
                let len = match info.log_page {
                    log::ERROR_INFORMATION => Some(GetLogPage::ERROR_ENTRY_LEN),
                    log::SMART_HEALTH => Some(GetLogPage::SMART_LEN),
                    log::FIRMWARE_SLOT => Some(GetLogPage::FIRMWARE_SLOT_LEN),
                    log::CHANGED_NAMESPACES => Some(GetLogPage::CHANGED_NAMESPACES_LEN),
                    _ => None,
                };
                if let Some(len) = len {
                    let nsid = if info.log_page == log::CHANGED_NAMESPACES {
                        Nsid(0)
                    } else {
                        Nsid::ALL
                    };
                    let page = GetLogPage::new(info.log_page, nsid, len);
                    admin.execute_with_buf(bar, |d| page.build(d), &buf, s.admin_timeout)?;
                }
                match info.event() {
                    AsyncEvent::Health(h) => out.push(Event::Health(h)),
                    AsyncEvent::Error(e) => out.push(Event::Error(e)),
                    AsyncEvent::FirmwareActivationStarting => out.push(Event::FirmwareActivation),
                    AsyncEvent::NamespaceAttributeChanged => refresh = true,
                    _ => out.push(Event::Other {
                        event_type: info.event_type,
                        info: info.info,
                        log_page: info.log_page,
                    }),
                }
            }
        }
        if refresh {
            let changes = s.refresh_namespaces(&mut admin)?;
            out.push(Event::Namespaces(changes));
        }
        admin.arm_aers(bar, aers_for(s.info.identify.aerl()), s.admin_timeout);
        Ok(out)
    }

    /// Re-identifies the namespaces now (what a Namespace Attribute Changed event does),
    /// and reports what changed.
    ///
    /// # Errors
    ///
    /// The controller is not live, or an Identify failed.
    pub fn refresh_namespaces(&self) -> Result<NamespaceChanges, Error> {
        let s = self.shared();
        s.check_live()?;
        let mut admin = lock_admin(s)?;
        s.refresh_namespaces(&mut admin)
    }

    /// The admin queue's interrupt (MSI-X vector 0), readable when an admin completion (an
    /// event) was posted; `None` without MSI-X. Shared with nothing else: reset it
    /// (`read`) before [`Controller::poll_events`].
    pub fn event_fd(&self) -> Option<&EventFd> {
        self.shared().vectors.first().map(|f| f.as_ref())
    }
}
