//! The compiled form of the settings a policy judges: each setting's IP allow list as a
//! sorted, merged interval table ([`IpSet`], a binary search per lookup) and its boxes.
//!
//! Not here: the decisions (`policy`), the index across settings (`index`).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::AllowedSenders;

/// A set of IP networks with fast membership tests.
#[derive(Clone, Debug, Default)]
pub struct IpSet {
    pub(super) v4: Vec<(u32, u32)>,
    pub(super) v6: Vec<(u128, u128)>,
}

impl IpSet {
    /// Builds the set; overlapping and adjacent networks are merged.
    pub fn new<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        Self {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    /// True when `ip` lies in one of the networks. IPv4-mapped IPv6 addresses are treated
    /// as the IPv4 address they carry (dual-stack listeners report them).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => lookup(&self.v4, u32::from(a)),
            IpAddr::V6(a) => lookup(&self.v6, u128::from(a)),
        }
    }
}

fn merge<T: Ord + Copy + num_like::Succ>(mut v: Vec<(T, T)>) -> Vec<(T, T)> {
    v.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(v.len());
    for (start, end) in v {
        match out.last_mut() {
            Some(last) if start <= last.1.succ() => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

fn lookup<T: Ord + Copy>(table: &[(T, T)], x: T) -> bool {
    let idx = table.partition_point(|&(start, _)| start <= x);
    idx > 0 && table[idx - 1].1 >= x
}

mod num_like {
    /// Saturating successor, for merging adjacent intervals.
    pub trait Succ {
        fn succ(self) -> Self;
    }
    impl Succ for u32 {
        fn succ(self) -> Self {
            self.saturating_add(1)
        }
    }
    impl Succ for u128 {
        fn succ(self) -> Self {
            self.saturating_add(1)
        }
    }
}

/// One setting, compiled.
#[derive(Clone, Debug)]
pub(super) struct CompiledSetting {
    pub(super) senders: AllowedSenders,
    pub(super) ips: Option<IpSet>,
    pub(super) require_auth: bool,
    pub(super) require_tls: bool,
}
