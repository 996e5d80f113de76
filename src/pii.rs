//! The PII classes of the catalog and the policy.
use std::fmt;

/// A class of customer PII. Bound into every token, so a token of one class never opens as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PiiClass {
    Name,
    Email,
    Phone,
    Address,
    TaxId,
    GiftMessage,
    Company,
    Other,
}

impl PiiClass {
    pub const ALL: [PiiClass; 8] =
        [PiiClass::Name, PiiClass::Email, PiiClass::Phone, PiiClass::Address, PiiClass::TaxId, PiiClass::GiftMessage, PiiClass::Company, PiiClass::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            PiiClass::Name => "name",
            PiiClass::Email => "email",
            PiiClass::Phone => "phone",
            PiiClass::Address => "address",
            PiiClass::TaxId => "tax_id",
            PiiClass::GiftMessage => "gift_message",
            PiiClass::Company => "company",
            PiiClass::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<PiiClass> {
        PiiClass::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Position in [`ALL`](Self::ALL), for per-class tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The accepted names, for error messages.
    pub fn names() -> String {
        PiiClass::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// One `T` per PII class, indexed by the class: the one table shape every per-class setting and
/// count uses (actions, counts, limits), so no code indexes a bare array with a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PerClass<T>([T; PiiClass::ALL.len()]);

impl<T: Copy> PerClass<T> {
    /// The same value for every class.
    pub const fn splat(value: T) -> Self {
        PerClass([value; PiiClass::ALL.len()])
    }
}

impl<T> PerClass<T> {
    /// `(class, value)` for every class, in [`PiiClass::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (PiiClass, &T)> {
        PiiClass::ALL.into_iter().zip(self.0.iter())
    }

    /// Every value, in [`PiiClass::ALL`] order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }
}

impl<T> std::ops::Index<PiiClass> for PerClass<T> {
    type Output = T;

    fn index(&self, class: PiiClass) -> &T {
        // `index()` is below the array's length by construction: one slot per variant.
        &self.0[class.index()]
    }
}

impl<T> std::ops::IndexMut<PiiClass> for PerClass<T> {
    fn index_mut(&mut self, class: PiiClass) -> &mut T {
        &mut self.0[class.index()]
    }
}

impl fmt::Display for PiiClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
