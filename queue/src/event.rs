//! Asynchronous events (NVMe Base 2.0, 5.2): what an Asynchronous Event Request's
//! completion says. DW0 bits 2:0 are the event type, bits 15:8 the event information, bits
//! 23:16 the log page that tells more; reading that log page (with RAE clear) is what
//! re-enables the event on the controller.

use crate::opcode::log;

/// An asynchronous event, decoded from the completion's DW0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AsyncEvent {
    /// Error status (type 000b): a general controller error, see the Error Information log.
    Error(ErrorEvent),
    /// SMART / Health status (type 001b): a critical warning; see the SMART / Health log.
    Health(HealthEvent),
    /// Notice (type 010b), Namespace Attribute Changed: namespaces were added, removed or
    /// changed (size, format); the Changed Namespace List log names them.
    NamespaceAttributeChanged,
    /// Notice (type 010b), Firmware Activation Starting; the Firmware Slot log tells which.
    FirmwareActivationStarting,
    /// Any other event.
    Other {
        /// Bits 2:0.
        event_type: u8,
        /// Bits 15:8.
        info: u8,
    },
}

/// The error status events (type 000b), by their event information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorEvent {
    /// 00h: a write to an invalid doorbell register.
    InvalidDoorbellRegister,
    /// 01h: an invalid doorbell value.
    InvalidDoorbellValue,
    /// 02h: a diagnostic failure.
    DiagnosticFailure,
    /// 03h: a persistent internal error.
    PersistentInternal,
    /// 04h: a transient internal error.
    TransientInternal,
    /// 05h: a firmware image load error.
    FirmwareImageLoad,
    /// Another value.
    Other(u8),
}

/// The SMART / Health status events (type 001b), by their event information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthEvent {
    /// 00h: NVM subsystem reliability degraded (media errors, read-only, backup failed).
    Reliability,
    /// 01h: a temperature is above its over-temperature threshold or below its
    /// under-temperature threshold.
    Temperature,
    /// 02h: available spare fell below the threshold.
    SpareBelowThreshold,
    /// Another value.
    Other(u8),
}

/// Event type values (DW0 bits 2:0).
pub mod event_type {
    /// Error status.
    pub const ERROR: u8 = 0;
    /// SMART / Health status.
    pub const HEALTH: u8 = 1;
    /// Notice.
    pub const NOTICE: u8 = 2;
}

/// Notice information values.
pub mod notice {
    /// Namespace Attribute Changed.
    pub const NAMESPACE_ATTRIBUTE: u8 = 0;
    /// Firmware Activation Starting.
    pub const FIRMWARE_ACTIVATION: u8 = 1;
}

/// The raw fields of an AER completion's DW0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncEventInfo {
    /// Asynchronous Event Type (bits 2:0).
    pub event_type: u8,
    /// Asynchronous Event Information (bits 15:8).
    pub info: u8,
    /// Log Page Identifier (bits 23:16): read it to learn more and to re-enable the event.
    pub log_page: u8,
}

impl AsyncEventInfo {
    /// Splits DW0 into its fields.
    pub fn from_dw0(dw0: u32) -> AsyncEventInfo {
        AsyncEventInfo {
            event_type: (dw0 & 7) as u8,
            info: (dw0 >> 8) as u8,
            log_page: (dw0 >> 16) as u8,
        }
    }

    /// DW0 as a controller posts it (the emulator's side).
    pub fn to_dw0(self) -> u32 {
        (self.event_type & 7) as u32 | (self.info as u32) << 8 | (self.log_page as u32) << 16
    }

    /// The event, typed.
    pub fn event(self) -> AsyncEvent {
        match (self.event_type, self.info) {
            (event_type::ERROR, i) => AsyncEvent::Error(match i {
                0 => ErrorEvent::InvalidDoorbellRegister,
                1 => ErrorEvent::InvalidDoorbellValue,
                2 => ErrorEvent::DiagnosticFailure,
                3 => ErrorEvent::PersistentInternal,
                4 => ErrorEvent::TransientInternal,
                5 => ErrorEvent::FirmwareImageLoad,
                o => ErrorEvent::Other(o),
            }),
            (event_type::HEALTH, i) => AsyncEvent::Health(match i {
                0 => HealthEvent::Reliability,
                1 => HealthEvent::Temperature,
                2 => HealthEvent::SpareBelowThreshold,
                o => HealthEvent::Other(o),
            }),
            (event_type::NOTICE, notice::NAMESPACE_ATTRIBUTE) => {
                AsyncEvent::NamespaceAttributeChanged
            }
            (event_type::NOTICE, notice::FIRMWARE_ACTIVATION) => {
                AsyncEvent::FirmwareActivationStarting
            }
            (event_type, info) => AsyncEvent::Other { event_type, info },
        }
    }

    /// The info for `event` with the log page the spec pairs it with (the emulator's side).
    pub fn for_event(event: AsyncEvent) -> AsyncEventInfo {
        let (event_type, info, log_page) = match event {
            AsyncEvent::Error(e) => {
                let i = match e {
                    ErrorEvent::InvalidDoorbellRegister => 0,
                    ErrorEvent::InvalidDoorbellValue => 1,
                    ErrorEvent::DiagnosticFailure => 2,
                    ErrorEvent::PersistentInternal => 3,
                    ErrorEvent::TransientInternal => 4,
                    ErrorEvent::FirmwareImageLoad => 5,
                    ErrorEvent::Other(o) => o,
                };
                (event_type::ERROR, i, log::ERROR_INFORMATION)
            }
            AsyncEvent::Health(h) => {
                let i = match h {
                    HealthEvent::Reliability => 0,
                    HealthEvent::Temperature => 1,
                    HealthEvent::SpareBelowThreshold => 2,
                    HealthEvent::Other(o) => o,
                };
                (event_type::HEALTH, i, log::SMART_HEALTH)
            }
            AsyncEvent::NamespaceAttributeChanged => (
                event_type::NOTICE,
                notice::NAMESPACE_ATTRIBUTE,
                log::CHANGED_NAMESPACES,
            ),
            AsyncEvent::FirmwareActivationStarting => (
                event_type::NOTICE,
                notice::FIRMWARE_ACTIVATION,
                log::FIRMWARE_SLOT,
            ),
            AsyncEvent::Other { event_type, info } => (event_type, info, 0),
        };
        AsyncEventInfo {
            event_type,
            info,
            log_page,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dw0_layout_and_decoding() {
        // Namespace Attribute Changed: type 2, info 0, log 04h (Base 2.0, Figure 146/150).
        let i = AsyncEventInfo::from_dw0(0x0004_0002);
        assert_eq!((i.event_type, i.info, i.log_page), (2, 0, 4));
        assert_eq!(i.event(), AsyncEvent::NamespaceAttributeChanged);
        // Temperature threshold: type 1, info 1, log 02h.
        let i = AsyncEventInfo::from_dw0(0x0002_0101);
        assert_eq!(i.event(), AsyncEvent::Health(HealthEvent::Temperature));
        assert_eq!(
            AsyncEventInfo::from_dw0(0x0002_0201).event(),
            AsyncEvent::Health(HealthEvent::SpareBelowThreshold)
        );
        assert_eq!(
            AsyncEventInfo::from_dw0(0x0003_0102).event(),
            AsyncEvent::FirmwareActivationStarting
        );
        assert_eq!(
            AsyncEventInfo::from_dw0(0x0001_0400).event(),
            AsyncEvent::Error(ErrorEvent::TransientInternal)
        );
        assert_eq!(
            AsyncEventInfo::from_dw0(0x0000_0906).event(),
            AsyncEvent::Other {
                event_type: 6,
                info: 9
            }
        );
        for e in [
            AsyncEvent::NamespaceAttributeChanged,
            AsyncEvent::FirmwareActivationStarting,
            AsyncEvent::Health(HealthEvent::Reliability),
            AsyncEvent::Health(HealthEvent::Temperature),
            AsyncEvent::Health(HealthEvent::SpareBelowThreshold),
            AsyncEvent::Error(ErrorEvent::PersistentInternal),
        ] {
            let i = AsyncEventInfo::for_event(e);
            assert_eq!(AsyncEventInfo::from_dw0(i.to_dw0()), i);
            assert_eq!(i.event(), e);
        }
    }
}
