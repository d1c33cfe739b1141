//! Bounds on interactive sessions (consoles, SSH sessions): each holds a
//! thread of the agent's blocking pool while its command runs, which the
//! engine steps of every jail share, so no jail may hold too many.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use uuid::Uuid;

/// Places for sessions: at most `per_jail` open in one jail and
/// `per_node` on the node.
pub(crate) struct Permits {
    open: Mutex<BTreeMap<Uuid, usize>>,
    per_jail: usize,
    per_node: usize,
}

/// A place for one session; given back when dropped.
pub(crate) struct Permit {
    of: &'static Permits,
    jail: Uuid,
}

impl Permits {
    pub(crate) const fn new(per_jail: usize, per_node: usize) -> Self {
        Self {
            open: Mutex::new(BTreeMap::new()),
            per_jail,
            per_node,
        }
    }

    /// A place in `jail`, if there is one left there and on the node.
    pub(crate) fn take(&'static self, jail: Uuid) -> Option<Permit> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let total: usize = open.values().sum();
        let here = open.entry(jail).or_default();
        if *here >= self.per_jail || total >= self.per_node {
            if *here == 0 {
                open.remove(&jail);
            }
            return None;
        }
        *here += 1;
        Some(Permit { of: self, jail })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.of.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.jail) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.jail);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_per_jail_and_per_node_and_come_back() {
        static P: Permits = Permits::new(2, 3);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let a1 = P.take(a).unwrap();
        let _a2 = P.take(a).unwrap();
        assert!(P.take(a).is_none(), "a third in one jail");
        let _b1 = P.take(b).unwrap();
        assert!(P.take(b).is_none(), "a fourth on the node");
        drop(a1);
        assert!(P.take(b).is_some());
    }
}
