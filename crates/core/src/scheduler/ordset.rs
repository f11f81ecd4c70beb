//! A sorted set that stays a small vector until it grows.
//!
//! The queue index keeps one ordered set per bucket, per container and per
//! (base labels, level) cell. Most of them hold one to a few elements, where
//! a `BTreeSet` would allocate a whole node; large ones need logarithmic
//! updates. This type switches representation at [`SPILL`] elements. A set
//! of one element, the most common case when every task has its own labels,
//! holds it inline and allocates nothing.

use std::collections::BTreeSet;

/// Size above which the set becomes a B-tree.
const SPILL: usize = 16;
/// Size below which a B-tree set goes back to a vector (hysteresis).
const UNSPILL: usize = 8;

/// An ordered set of `K`. `Small` never holds exactly one element.
#[derive(Clone, Debug)]
pub(crate) enum OrdSet<K: Ord> {
    One(K),
    Small(Vec<K>),
    Large(BTreeSet<K>),
}

impl<K: Ord> Default for OrdSet<K> {
    fn default() -> Self {
        OrdSet::Small(Vec::new())
    }
}

impl<K: Ord + Clone> OrdSet<K> {
    pub(crate) fn len(&self) -> usize {
        match self {
            OrdSet::One(_) => 1,
            OrdSet::Small(v) => v.len(),
            OrdSet::Large(s) => s.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn first(&self) -> Option<&K> {
        match self {
            OrdSet::One(k) => Some(k),
            OrdSet::Small(v) => v.first(),
            OrdSet::Large(s) => s.first(),
        }
    }

    /// Inserts `k`; returns false if it was already present.
    pub(crate) fn insert(&mut self, k: K) -> bool {
        match self {
            OrdSet::One(a) => {
                let pair = match (*a).cmp(&k) {
                    std::cmp::Ordering::Equal => return false,
                    std::cmp::Ordering::Less => [a.clone(), k],
                    std::cmp::Ordering::Greater => [k, a.clone()],
                };
                let mut v = Vec::with_capacity(2);
                v.extend(pair);
                *self = OrdSet::Small(v);
                true
            }
            OrdSet::Small(v) if v.is_empty() => {
                *self = OrdSet::One(k);
                true
            }
            OrdSet::Small(v) => match v.binary_search(&k) {
                Ok(_) => false,
                Err(i) => {
                    if v.len() >= SPILL {
                        let mut s: BTreeSet<K> = std::mem::take(v).into_iter().collect();
                        s.insert(k);
                        *self = OrdSet::Large(s);
                    } else {
                        if v.capacity() == v.len() {
                            // Grow gently: most sets stay tiny.
                            v.reserve_exact(if v.len() < 4 { 1 } else { v.len() });
                        }
                        v.insert(i, k);
                    }
                    true
                }
            },
            OrdSet::Large(s) => s.insert(k),
        }
    }

    /// Removes `k`; returns false if it was absent.
    pub(crate) fn remove(&mut self, k: &K) -> bool {
        match self {
            OrdSet::One(a) => {
                if a != k {
                    return false;
                }
                *self = OrdSet::Small(Vec::new());
                true
            }
            OrdSet::Small(v) => match v.binary_search(k) {
                Ok(i) => {
                    v.remove(i);
                    if v.len() == 1 {
                        let last = v.pop();
                        if let Some(last) = last {
                            *self = OrdSet::One(last);
                        }
                    }
                    true
                }
                Err(_) => false,
            },
            OrdSet::Large(s) => {
                let removed = s.remove(k);
                if s.len() < UNSPILL {
                    let v: Vec<K> = std::mem::take(s).into_iter().collect();
                    *self = OrdSet::Small(v);
                }
                removed
            }
        }
    }

    /// Visits elements in ascending order until `f` returns false.
    pub(crate) fn for_each_while(&self, mut f: impl FnMut(&K) -> bool) {
        match self {
            OrdSet::One(k) => {
                f(k);
            }
            OrdSet::Small(v) => {
                for k in v {
                    if !f(k) {
                        return;
                    }
                }
            }
            OrdSet::Large(s) => {
                for k in s {
                    if !f(k) {
                        return;
                    }
                }
            }
        }
    }

    /// A set of the elements of `v`, which must be sorted and distinct.
    pub(crate) fn from_sorted(mut v: Vec<K>) -> Self {
        debug_assert!(v.windows(2).all(|w| w[0] < w[1]));
        if v.len() > SPILL {
            OrdSet::Large(v.into_iter().collect())
        } else if v.len() == 1 {
            match v.pop() {
                Some(k) => OrdSet::One(k),
                None => OrdSet::Small(v),
            }
        } else {
            OrdSet::Small(v)
        }
    }

    /// All elements in ascending order.
    pub(crate) fn to_vec(&self) -> Vec<K> {
        match self {
            OrdSet::One(k) => vec![k.clone()],
            OrdSet::Small(v) => v.clone(),
            OrdSet::Large(s) => s.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn behaves_like_btreeset(ops in proptest::collection::vec((any::<bool>(), 0u8..40), 0..300)) {
            let mut a = OrdSet::default();
            let mut b = BTreeSet::new();
            for (ins, k) in ops {
                if ins {
                    prop_assert_eq!(a.insert(k), b.insert(k));
                } else {
                    prop_assert_eq!(a.remove(&k), b.remove(&k));
                }
                prop_assert_eq!(a.len(), b.len());
                prop_assert_eq!(a.first(), b.first());
                prop_assert_eq!(a.to_vec(), b.iter().cloned().collect::<Vec<_>>());
                prop_assert!(!matches!(&a, OrdSet::Small(v) if v.len() == 1));
            }
        }
    }
}
