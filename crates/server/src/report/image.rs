//! The binary image of a pool's figures that snapshots carry, so the
//! figures outlive the process (see the parent module).
//!
//! Compact, because it is written with every snapshot: the bulk of seven
//! busy days is one balance sample per configured account per minute, which
//! takes about 22 bytes here. Layout (version 1, little-endian, `v` a
//! LEB128 varint): magic `QSREPRT\0`, `u32` version; the account ids, sorted
//! (`v` count, then `v` length and UTF-8 each), to which everything below
//! refers by index; the first minute seen (flag, `i64`); the last balance
//! sample (flag, `i64` nanoseconds, `v` count and the indices of the
//! accounts then free); then the stored minutes, ascending (`v` count; each
//! its minute as `i64` for the first and `v` steps after, the pool's four
//! counts as `v`, and its accounts: `v` count, each an index, a `v` field
//! mask, then only the fields the mask names).
//!
//! Decoding checks every count against the bytes left and every index,
//! level and bucket against its range, so bad bytes give an error (the pool
//! then starts its figures from the log), never a panic or a huge
//! allocation.

use std::collections::BTreeMap;
use std::sync::Arc;

use qscheduler_core::{NUM_PRIORITIES, Time};

use super::{
    AccountMinute, LEVELS, Minute, PoolFigures, PoolMinute, RETAINED_MINUTES, WAIT_BUCKETS,
};

const MAGIC: &[u8; 8] = b"QSREPRT\0";
const VERSION: u32 = 1;

/// Bits of an account-minute's field mask.
const BALANCE: u32 = 1;
const WAITS: u32 = 1 << 1;
const PROMOTIONS: u32 = 1 << 2;
const DEMOTIONS: u32 = 1 << 3;
const PREEMPTED: u32 = 1 << 4;
const PREEMPTING: u32 = 1 << 5;
const REFUNDS: u32 = 1 << 6;
const REFUNDED: u32 = 1 << 7;
const COMPLETED: u32 = 1 << 8;
const FREE_SECS: u32 = 1 << 9;
/// Then one bit per paid level's use, and one per level's assignments.
const USED0: u32 = 10;
const ASSIGNED0: u32 = USED0 + NUM_PRIORITIES as u32;
const ALL_FIELDS: u32 = (1 << (ASSIGNED0 + LEVELS as u32)) - 1;

/// What a snapshot takes of a pool's figures on the writer: the minutes are
/// shared, not copied.
pub(super) struct Image(PoolFigures);

impl Image {
    pub(super) fn of(f: &PoolFigures) -> Image {
        Image(f.clone())
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        encode(&self.0)
    }
}

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f32(&mut self, v: f32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn v(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn str(&mut self, s: &str) {
        self.v(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
}

fn mask_of(a: &AccountMinute) -> u32 {
    let mut m = 0;
    let mut set = |bit: u32, on: bool| {
        if on {
            m |= bit;
        }
    };
    set(BALANCE, a.balance.is_some());
    set(WAITS, !a.waits.is_empty());
    set(PROMOTIONS, a.promotions != 0);
    set(DEMOTIONS, a.demotions != 0);
    set(PREEMPTED, a.preempted != 0);
    set(PREEMPTING, a.preempting != 0);
    set(REFUNDS, a.refunds != 0);
    set(REFUNDED, a.refunded != 0.0);
    set(COMPLETED, a.completed != 0);
    set(FREE_SECS, a.free_secs != 0.0);
    for (p, u) in a.used.iter().enumerate() {
        set(1 << (USED0 + p as u32), *u != 0.0);
    }
    for (l, n) in a.assigned.iter().enumerate() {
        set(1 << (ASSIGNED0 + l as u32), *n != 0);
    }
    m
}

/// Encodes the figures; equal figures give equal bytes.
pub(super) fn encode(f: &PoolFigures) -> Vec<u8> {
    let mut minutes: Vec<&Minute> = f.ring.iter().flatten().map(|m| &**m).collect();
    minutes.sort_unstable_by_key(|m| m.minute);
    let mut ids: BTreeMap<&str, u64> = BTreeMap::new();
    for m in &minutes {
        for (id, _) in &m.accounts {
            ids.insert(&**id, 0);
        }
    }
    if let Some((_, free)) = &f.last_sample {
        for id in free {
            ids.insert(&**id, 0);
        }
    }
    for (i, v) in ids.values_mut().enumerate() {
        *v = i as u64;
    }
    let mut w = W(Vec::new());
    w.0.extend_from_slice(MAGIC);
    w.u32(VERSION);
    w.v(ids.len() as u64);
    for id in ids.keys() {
        w.str(id);
    }
    match f.first {
        Some(m) => {
            w.u8(1);
            w.i64(m);
        }
        None => w.u8(0),
    }
    match &f.last_sample {
        Some((t, free)) => {
            w.u8(1);
            w.i64(t.as_nanos());
            w.v(free.len() as u64);
            for a in free {
                w.v(ids[&**a]);
            }
        }
        None => w.u8(0),
    }
    w.v(minutes.len() as u64);
    let mut prev: Option<i64> = None;
    for m in minutes {
        match prev {
            None => w.i64(m.minute),
            Some(p) => w.v(m.minute.wrapping_sub(p) as u64),
        }
        prev = Some(m.minute);
        for n in [
            m.pool.assigned,
            m.pool.completed,
            m.pool.preempted,
            m.pool.enqueued,
        ] {
            w.v(n);
        }
        w.v(m.accounts.len() as u64);
        for (id, a) in &m.accounts {
            w.v(ids[&**id]);
            let mask = mask_of(a);
            w.v(u64::from(mask));
            if let Some(b) = &a.balance {
                for v in b {
                    w.f32(*v);
                }
            }
            if mask & WAITS != 0 {
                w.v(a.waits.len() as u64);
                for &(l, b, n) in &a.waits {
                    w.u8(l);
                    w.u8(b);
                    w.v(u64::from(n));
                }
            }
            for (bit, n) in [
                (PROMOTIONS, a.promotions),
                (DEMOTIONS, a.demotions),
                (PREEMPTED, a.preempted),
                (PREEMPTING, a.preempting),
                (REFUNDS, a.refunds),
            ] {
                if mask & bit != 0 {
                    w.v(u64::from(n));
                }
            }
            if mask & REFUNDED != 0 {
                w.f64(a.refunded);
            }
            if mask & COMPLETED != 0 {
                w.v(u64::from(a.completed));
            }
            if mask & FREE_SECS != 0 {
                w.f64(a.free_secs);
            }
            for (p, u) in a.used.iter().enumerate() {
                if mask & (1 << (USED0 + p as u32)) != 0 {
                    w.f64(*u);
                }
            }
            for (l, n) in a.assigned.iter().enumerate() {
                if mask & (1 << (ASSIGNED0 + l as u32)) != 0 {
                    w.v(u64::from(*n));
                }
            }
        }
    }
    w.0
}

struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "ends early: {n} bytes wanted, {} left",
                self.0.len()
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.arr::<1>()?[0])
    }
    fn flag(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(format!("flag {v}")),
        }
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.arr()?))
    }
    fn f64(&mut self) -> Result<f64, String> {
        let v = f64::from_le_bytes(self.arr()?);
        if v.is_finite() {
            Ok(v)
        } else {
            Err("a figure is not finite".into())
        }
    }
    fn f32(&mut self) -> Result<f32, String> {
        let v = f32::from_le_bytes(self.arr()?);
        if v.is_finite() {
            Ok(v)
        } else {
            Err("a balance is not finite".into())
        }
    }
    fn v(&mut self) -> Result<u64, String> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err("varint overflows".into());
            }
            out |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err("varint too long".into())
    }
    fn v32(&mut self) -> Result<u32, String> {
        u32::try_from(self.v()?).map_err(|_| "a count exceeds 32 bits".to_owned())
    }
    /// A count of items of at least `min_bytes` each, checked against the
    /// bytes left before anything is allocated for them.
    fn count(&mut self, min_bytes: usize) -> Result<usize, String> {
        let n = self.v()?;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_bytes) <= self.0.len() => Ok(n),
            _ => Err(format!("count {n} exceeds the bytes left")),
        }
    }
    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.count(1)?;
        std::str::from_utf8(self.take(n)?).map_err(|_| "an id is not UTF-8".to_owned())
    }
    fn id(&mut self, ids: &[Arc<str>]) -> Result<Arc<str>, String> {
        let i = self.v()?;
        usize::try_from(i)
            .ok()
            .and_then(|i| ids.get(i))
            .cloned()
            .ok_or_else(|| format!("account index {i} out of range"))
    }
}

/// Decodes an image written by [`encode`].
pub(super) fn decode(bytes: &[u8]) -> Result<PoolFigures, String> {
    let mut r = R(bytes);
    if r.take(MAGIC.len())? != MAGIC {
        return Err("not a report image".into());
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(format!("report image version {version}"));
    }
    let n = r.count(1)?;
    let mut ids: Vec<Arc<str>> = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.str()?;
        if ids.last().is_some_and(|last| **last >= *id) {
            return Err("account ids out of order".into());
        }
        ids.push(Arc::from(id));
    }
    let mut f = PoolFigures::default();
    let first = if r.flag()? { Some(r.i64()?) } else { None };
    if r.flag()? {
        let t = Time::from_nanos(r.i64()?);
        let n = r.count(1)?;
        let mut free = Vec::with_capacity(n);
        for _ in 0..n {
            free.push(r.id(&ids)?);
        }
        f.last_sample = Some((t, free));
    }
    let minutes = r.count(6)?;
    if minutes > RETAINED_MINUTES {
        return Err(format!("{minutes} minutes, more than {RETAINED_MINUTES}"));
    }
    let mut last: Option<i64> = None;
    for _ in 0..minutes {
        let minute = match last {
            None => r.i64()?,
            Some(p) => {
                let step = r.v()?;
                match i64::try_from(step).ok().and_then(|s| p.checked_add(s)) {
                    Some(m) if m > p => m,
                    _ => return Err("minutes out of order".into()),
                }
            }
        };
        last = Some(minute);
        let pool = PoolMinute {
            assigned: r.v()?,
            completed: r.v()?,
            preempted: r.v()?,
            enqueued: r.v()?,
        };
        let n = r.count(2)?;
        let mut accounts: Vec<(Arc<str>, AccountMinute)> = Vec::with_capacity(n);
        for _ in 0..n {
            let id = r.id(&ids)?;
            if accounts.iter().any(|(a, _)| *a == id) {
                return Err(format!("account {id:?} twice in a minute"));
            }
            let mask = r.v32()?;
            if mask & !ALL_FIELDS != 0 {
                return Err(format!("unknown fields {mask:#x}"));
            }
            let mut a = AccountMinute::default();
            if mask & BALANCE != 0 {
                let mut b = [0f32; NUM_PRIORITIES];
                for v in b.iter_mut() {
                    *v = r.f32()?;
                }
                a.balance = Some(b);
            }
            if mask & WAITS != 0 {
                let waits = r.count(3)?;
                a.waits = Vec::with_capacity(waits);
                for _ in 0..waits {
                    let (l, b, c) = (r.u8()?, r.u8()?, r.v32()?);
                    if usize::from(l) >= LEVELS || usize::from(b) >= WAIT_BUCKETS {
                        return Err(format!("wait bucket ({l}, {b}) out of range"));
                    }
                    a.waits.push((l, b, c));
                }
            }
            for (bit, field) in [
                (PROMOTIONS, &mut a.promotions),
                (DEMOTIONS, &mut a.demotions),
                (PREEMPTED, &mut a.preempted),
                (PREEMPTING, &mut a.preempting),
                (REFUNDS, &mut a.refunds),
            ] {
                if mask & bit != 0 {
                    *field = r.v32()?;
                }
            }
            if mask & REFUNDED != 0 {
                a.refunded = r.f64()?;
            }
            if mask & COMPLETED != 0 {
                a.completed = r.v32()?;
            }
            if mask & FREE_SECS != 0 {
                a.free_secs = r.f64()?;
            }
            for (p, u) in a.used.iter_mut().enumerate() {
                if mask & (1 << (USED0 + p as u32)) != 0 {
                    *u = r.f64()?;
                }
            }
            for (l, n) in a.assigned.iter_mut().enumerate() {
                if mask & (1 << (ASSIGNED0 + l as u32)) != 0 {
                    *n = r.v32()?;
                }
            }
            accounts.push((id, a));
        }
        let slot = &mut f.ring[minute.rem_euclid(RETAINED_MINUTES as i64) as usize];
        // Ascending minutes: a later one in the same slot is the one the
        // ring would keep.
        *slot = Some(Arc::new(Minute {
            minute,
            pool,
            accounts,
        }));
    }
    if !r.0.is_empty() {
        return Err(format!("{} bytes after the image", r.0.len()));
    }
    if let (Some(fm), Some(lm)) = (first, last)
        && fm > lm
    {
        return Err("the first minute is after the last".into());
    }
    f.first = first;
    Ok(f)
}
