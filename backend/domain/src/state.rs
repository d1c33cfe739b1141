use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ParseError;

macro_rules! text_enum {
    ($(#[$doc:meta])* $ty:ident, $field:literal { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $ty {
            $($(#[$vdoc])* $variant),+
        }

        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The value as stored in SQL and shown in URLs and JSON.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                match s {
                    $($text => Ok($ty::$variant),)+
                    _ => Err(ParseError::new(
                        $field,
                        format!("{s:?} is not one of: {}", [$($text),+].join(", ")),
                    )),
                }
            }
        }
    };
}

text_enum!(
    /// What a user may do: customers act on their own tenant, operators read
    /// everything and suspend, admins do everything.
    Role, "role" {
        /// A hosting customer, bound to one tenant.
        Customer => "customer",
        /// Provider staff with read access and suspend/unsuspend.
        Operator => "operator",
        /// Provider staff with every right.
        Admin => "admin",
    }
);

impl Role {
    /// Whether this role belongs to the provider's staff.
    pub fn is_staff(self) -> bool {
        matches!(self, Role::Operator | Role::Admin)
    }
}

text_enum!(
    /// A tenant's account status.
    TenantStatus, "status" {
        /// Jails run as their desired state says.
        Active => "active",
        /// Jails are stopped until the tenant is unsuspended.
        Suspended => "suspended",
        /// Jails are destroyed; the row stays for billing and audit.
        Terminated => "terminated",
    }
);

text_enum!(
    /// What a jail should be, as set by users; the agent converges to it.
    DesiredState, "desired_state" {
        /// Created and running.
        Running => "running",
        /// Created (volume kept) but not running.
        Stopped => "stopped",
        /// Destroyed: no volume, cgroup, mount or process left.
        Deleted => "deleted",
    }
);

text_enum!(
    /// What the agent last saw of a jail on its node.
    ObservedState, "observed_state" {
        /// Not yet seen by an agent.
        Pending => "pending",
        /// The agent is starting it.
        Starting => "starting",
        /// The jail's processes run.
        Running => "running",
        /// Its command keeps ending soon after each start: restarted with
        /// a growing pause (see its restart count, last exit and next try).
        CrashLooping => "crash_looping",
        /// The volume exists, no process runs.
        Stopped => "stopped",
        /// The last step failed; see the jail's last error.
        Failed => "failed",
        /// Nothing of the jail is left on the node.
        Deleted => "deleted",
    }
);

text_enum!(
    /// What a running jail's health check last said.
    Health, "health" {
        /// No check, or no answer yet.
        Unknown => "unknown",
        /// The check passed.
        Healthy => "healthy",
        /// The check failed as many times in a row as it allows.
        Unhealthy => "unhealthy",
    }
);

text_enum!(
    /// How a jail runs.
    JailKind, "kind" {
        /// One command; the jail ends when it exits.
        App => "app",
        /// Long-running: the image's init or a configured service.
        System => "system",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), *r);
        }
        for s in ObservedState::ALL {
            assert_eq!(s.as_str().parse::<ObservedState>().unwrap(), *s);
        }
    }

    #[test]
    fn unknown_text_lists_the_choices() {
        let err = "root".parse::<Role>().unwrap_err();
        assert!(err.to_string().contains("customer, operator, admin"));
    }
}
