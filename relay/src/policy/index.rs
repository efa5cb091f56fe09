//! The policy index: from a client address to what the settings that can identify it say,
//! so [`super::Policy::decide_mail`] costs one binary search and at most one sender check
//! per sender mode, however many settings and ranges the config has.
//!
//! Every setting's merged allow list cuts the address space (IPv4 and IPv6 apart) into
//! stretches, each covered by one set of settings; settings without an allow list cover
//! every stretch. A stretch does not store its settings but what [`super::combine`] needs
//! of them besides the sender checks, for each of the four kinds of client (authenticated
//! or not, TLS or not): whether a covering setting identifies the client, whether one of
//! those also has its TLS box satisfied, and for those usable settings which sender modes
//! they have and the mode of the first in config order (its reason is the one a refusal
//! quotes). A sender check depends on the mode alone, so that is the whole decision.
//!
//! Size: a list of settings per stretch could grow as ranges × settings when ranges
//! overlap; a summary is a few bytes, equal summaries are stored once, and neighbouring
//! stretches with one summary are one. A family's table holds at most 2R + 1 stretches for
//! R merged ranges, whatever they overlap. Built in O(R log R).
//!
//! Not here: the sender checks and the verdicts of `explain_mail` (that is `super`).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use super::compiled::{CompiledSetting, IpSet};
use crate::config::AllowedSenders;

/// Sender modes, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct ModeSet(u8);

const MODES: [AllowedSenders; 3] = [
    AllowedSenders::RegisteredUsers,
    AllowedSenders::OrganizationDomains,
    AllowedSenders::AnyAddress,
];

impl ModeSet {
    fn bit(mode: AllowedSenders) -> u8 {
        match mode {
            AllowedSenders::RegisteredUsers => 1,
            AllowedSenders::OrganizationDomains => 2,
            AllowedSenders::AnyAddress => 4,
        }
    }

    fn insert(&mut self, mode: AllowedSenders) {
        self.0 |= Self::bit(mode);
    }

    pub(super) fn contains(self, mode: AllowedSenders) -> bool {
        self.0 & Self::bit(mode) != 0
    }

    pub(super) fn iter(self) -> impl Iterator<Item = AllowedSenders> {
        MODES.into_iter().filter(move |&m| self.contains(m))
    }
}

/// What the settings covering an address say of one kind of client, before its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Reach {
    /// No covering setting has its authentication boxes satisfied.
    NotIdentified,
    /// Some do, and every one of those requires the TLS the client lacks.
    TlsRequired,
    /// Usable settings exist: `first` is the mode of the first in config order, `modes`
    /// the modes of them all.
    Usable {
        first: AllowedSenders,
        modes: ModeSet,
    },
}

/// One [`Reach`] per kind of client, indexed by [`kind`].
type Summary = [Reach; 4];

fn kind(auth: bool, tls: bool) -> usize {
    usize::from(auth) * 2 + usize::from(tls)
}

/// How big an index is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexSize {
    /// Stretches of the IPv4 and the IPv6 table.
    pub stretches: usize,
    /// Distinct summaries the stretches point to.
    pub summaries: usize,
    /// Bytes of the tables' entries.
    pub bytes: usize,
}

/// The compiled index of one policy.
#[derive(Clone, Debug)]
pub(super) struct PolicyIndex {
    v4: Stretches<u32>,
    v6: Stretches<u128>,
    summaries: Vec<Summary>,
}

/// A family's address space cut into stretches: stretch `i` runs from `starts[i]` up to
/// the next start; `starts[0]` is the family's lowest address.
#[derive(Clone, Debug)]
struct Stretches<T> {
    starts: Vec<T>,
    summary: Vec<u32>,
}

impl PolicyIndex {
    pub(super) fn new(settings: &[CompiledSetting]) -> Self {
        let mut summaries = Summaries::default();
        let v4 = stretches(settings, |set: &IpSet| &set.v4, &mut summaries);
        let v6 = stretches(settings, |set: &IpSet| &set.v6, &mut summaries);
        Self {
            v4,
            v6,
            summaries: summaries.list,
        }
    }

    /// What the settings covering `ip` say of a client with AUTH `auth` and TLS `tls`.
    /// IPv4-mapped IPv6 addresses count as the IPv4 address, as in [`IpSet::contains`].
    pub(super) fn reach(&self, ip: IpAddr, auth: bool, tls: bool) -> Reach {
        let summary = match ip.to_canonical() {
            IpAddr::V4(a) => self.v4.find(u32::from(a)),
            IpAddr::V6(a) => self.v6.find(u128::from(a)),
        };
        self.summaries
            .get(summary as usize)
            .map_or(Reach::NotIdentified, |s| s[kind(auth, tls)])
    }

    pub(super) fn size(&self) -> IndexSize {
        let stretches = self.v4.starts.len() + self.v6.starts.len();
        IndexSize {
            stretches,
            summaries: self.summaries.len(),
            bytes: self.v4.starts.len() * (size_of::<u32>() + size_of::<u32>())
                + self.v6.starts.len() * (size_of::<u128>() + size_of::<u32>())
                + self.summaries.len() * size_of::<Summary>(),
        }
    }
}

impl<T: Ord + Copy> Stretches<T> {
    fn find(&self, address: T) -> u32 {
        // starts[0] is the lowest address, so at least one start is <= address.
        let i = self.starts.partition_point(|&s| s <= address);
        self.summary.get(i.wrapping_sub(1)).copied().unwrap_or(0)
    }
}

/// Interval bounds of one address family.
trait Address: Ord + Copy {
    const LOWEST: Self;
    /// The next address, `None` after the highest.
    fn next(self) -> Option<Self>;
}

impl Address for u32 {
    const LOWEST: Self = 0;
    fn next(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Address for u128 {
    const LOWEST: Self = 0;
    fn next(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// Summaries stored once each.
#[derive(Default)]
struct Summaries {
    list: Vec<Summary>,
    ids: HashMap<Summary, u32>,
}

impl Summaries {
    fn id(&mut self, summary: Summary) -> u32 {
        *self.ids.entry(summary).or_insert_with(|| {
            self.list.push(summary);
            // A summary is one of at most 14^4 values, far below u32::MAX.
            u32::try_from(self.list.len() - 1).unwrap_or(u32::MAX)
        })
    }
}

/// Sweeps one family's address space from its lowest address, adding a setting where one
/// of its ranges starts and removing it after the range ends.
fn stretches<T: Address>(
    settings: &[CompiledSetting],
    table: impl Fn(&IpSet) -> &Vec<(T, T)>,
    summaries: &mut Summaries,
) -> Stretches<T> {
    let mut covering = Covering::new(settings);
    // (address, adds, setting): at one address removals come first (false < true).
    let mut events: Vec<(T, bool, usize)> = Vec::new();
    for (i, s) in settings.iter().enumerate() {
        match &s.ips {
            None => covering.add(i),
            Some(set) => {
                for &(start, end) in table(set) {
                    events.push((start, true, i));
                    if let Some(after) = end.next() {
                        events.push((after, false, i));
                    }
                }
            }
        }
    }
    events.sort_unstable();
    let mut out = Stretches {
        starts: vec![T::LOWEST],
        summary: vec![summaries.id(covering.summary())],
    };
    let mut events = events.into_iter().peekable();
    while let Some(&(at, ..)) = events.peek() {
        while let Some((_, adds, i)) = events.next_if(|e| e.0 == at) {
            if adds {
                covering.add(i);
            } else {
                covering.remove(i);
            }
        }
        let id = summaries.id(covering.summary());
        if at == T::LOWEST {
            // Only the first group can start at the lowest address.
            out.summary[0] = id;
        } else if out.summary.last() != Some(&id) {
            out.starts.push(at);
            out.summary.push(id);
        }
    }
    out
}

/// The settings covering the sweep's current address, per kind of client.
struct Covering<'a> {
    settings: &'a [CompiledSetting],
    /// How many covering settings identify each kind of client.
    identifying: [usize; 4],
    /// The covering settings usable by each kind of client, by config index.
    usable: [BTreeSet<usize>; 4],
    /// How many of those have each mode (by [`ModeSet::bit`] position).
    modes: [[usize; 3]; 4],
}

impl<'a> Covering<'a> {
    fn new(settings: &'a [CompiledSetting]) -> Self {
        Self {
            settings,
            identifying: [0; 4],
            usable: Default::default(),
            modes: [[0; 3]; 4],
        }
    }

    fn add(&mut self, i: usize) {
        self.update(i, true);
    }

    fn remove(&mut self, i: usize) {
        self.update(i, false);
    }

    fn update(&mut self, i: usize, adds: bool) {
        let Some(s) = self.settings.get(i) else {
            return;
        };
        let mode = ModeSet::bit(s.senders).trailing_zeros() as usize;
        for auth in [false, true] {
            if s.require_auth && !auth {
                continue;
            }
            for tls in [false, true] {
                let k = kind(auth, tls);
                bump(&mut self.identifying[k], adds);
                if s.require_tls && !tls {
                    continue;
                }
                if adds {
                    self.usable[k].insert(i);
                } else {
                    self.usable[k].remove(&i);
                }
                bump(&mut self.modes[k][mode], adds);
            }
        }
    }

    fn summary(&self) -> Summary {
        std::array::from_fn(|k| {
            let first = self.usable[k]
                .first()
                .and_then(|&i| self.settings.get(i))
                .map(|s| s.senders);
            match first {
                Some(first) => {
                    let mut modes = ModeSet::default();
                    for (m, &count) in MODES.iter().zip(&self.modes[k]) {
                        if count > 0 {
                            modes.insert(*m);
                        }
                    }
                    Reach::Usable { first, modes }
                }
                None if self.identifying[k] > 0 => Reach::TlsRequired,
                None => Reach::NotIdentified,
            }
        })
    }
}

fn bump(count: &mut usize, up: bool) {
    if up {
        *count += 1;
    } else {
        *count = count.saturating_sub(1);
    }
}
