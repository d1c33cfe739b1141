//! Domain types shared by every part of Stockade.
//!
//! Raw strings from forms, the API, the CLI or configuration are parsed into
//! these types on the first line that sees them; past that line there are no
//! raw names, sizes or states.

mod domain_name;
mod email;
mod file_name;
pub mod health;
pub mod limits;
mod name;
mod port;
pub mod program;
mod quantity;
pub mod ssh_key;
mod state;

pub use domain_name::DomainName;
pub use email::Email;
pub use file_name::FileName;
pub use health::{HealthCheck, ProbeKind};
pub use limits::Limits;
pub use name::{JailName, TenantSlug, image_name};
pub use port::{Protocol, Publish};
pub use program::{EnvVar, command_line, parse_command_line};
pub use quantity::{ByteSize, Millicores};
pub use ssh_key::SshPublicKey;
pub use state::{DesiredState, Health, JailKind, ObservedState, Role, TenantStatus};

/// Why a value given by a user was refused; the message is shown to them as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ParseError {
    /// The name of the field, as the user knows it ("name", "memory", ...).
    pub field: &'static str,
    /// What is wrong and what is accepted.
    pub reason: String,
}

impl ParseError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}
