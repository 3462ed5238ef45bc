//! The allocator: which slots are free, who owns the live ones, and their generations.
//!
//! Pure bookkeeping on offsets, in Rust heap memory only: nothing here reads or writes the
//! mapping, so nothing Lua writes into the mapping can corrupt it. All of it is allocated in
//! [`Allocator::new`]; leasing and releasing never allocate.
//!
//! - Pages: a bitmap of used pages (`used`), plus one [`Page`] record per page saying what the
//!   page holds. Small-class pages are taken from the top of the arena, page runs first-fit from
//!   the bottom, so long-lived small pages do not split the space big runs need. Freeing a run
//!   just clears its bits: neighbouring free pages coalesce by construction.
//! - Small classes: each class keeps a doubly linked list of its partially used pages and at most
//!   one empty "spare" page (so a lease/release ping-pong does not take and return a page every
//!   time). A page's free objects are a 256-bit bitmap. A page that empties while the class
//!   already has a spare goes back to the pool; spares are reclaimed when a page allocation
//!   would otherwise fail.
//! - Slots: one generation (`u32`) and one owner state per granule (256 bytes), indexed by the
//!   granule a slot starts at. The granule index survives a page changing class, so a stale
//!   handle never matches a newer slot at the same offset (until its generation wraps around,
//!   after 2^32 - 1 leases of that exact granule).

use super::error::ArenaError;
use super::layout::{Handle, Stats, CLASS_SIZES, DATA_OFFSET, GRANULE, PAGE_SIZE};

const NIL: u32 = u32::MAX;
const GRANULES_PER_PAGE: usize = PAGE_SIZE / GRANULE;
const NUM_CLASSES: usize = CLASS_SIZES.len();
const LARGEST_CLASS: usize = CLASS_SIZES[NUM_CLASSES - 1] as usize;

/// Who owns a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Owner {
    /// Not leased.
    Free,
    /// Owned by whoever holds a [`Handle`] (Lua, or the C ABI's caller).
    Raw,
    /// Owned by a Rust `Lease`; raw handles cannot release or claim it.
    Leased,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PageKind {
    Free,
    /// Objects of `CLASS_SIZES[class]`.
    Small(u8),
    /// First page of a run of this many pages.
    RunHead(u32),
    /// A later page of a run.
    RunTail,
}

#[derive(Clone, Copy, Debug)]
struct Page {
    kind: PageKind,
    /// Live objects on a small page.
    live: u16,
    /// Free objects on a small page, one bit each.
    free: [u64; 4],
    /// Links in the class's partial list.
    prev: u32,
    next: u32,
}

const FREE_PAGE: Page = Page {
    kind: PageKind::Free,
    live: 0,
    free: [0; 4],
    prev: NIL,
    next: NIL,
};

#[derive(Clone, Copy, Debug)]
struct Class {
    size: u32,
    per_page: u16,
    /// Head of the list of pages with at least one free and one live object.
    partial: u32,
    /// An empty page kept for this class, or `NIL`.
    spare: u32,
}

/// A slot the allocator handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Slot {
    pub offset: u32,
    pub cap: u32,
    pub gen: u32,
}

/// The size class for a small lease (`len <= LARGEST_CLASS`).
pub(super) fn class_for(len: usize) -> usize {
    if len <= GRANULE {
        0
    } else {
        let bits = usize::BITS - (len - 1).leading_zeros();
        bits as usize - GRANULE.trailing_zeros() as usize
    }
}

/// Pages a large lease takes.
pub(super) fn pages_for(len: usize) -> usize {
    len.div_ceil(PAGE_SIZE)
}

/// Capacity of the slot a lease of `len` bytes gets.
pub(super) fn capacity_for(len: usize) -> usize {
    if len <= LARGEST_CLASS {
        CLASS_SIZES[class_for(len)] as usize
    } else {
        pages_for(len) * PAGE_SIZE
    }
}

fn next_gen(gen: u32) -> u32 {
    match gen.wrapping_add(1) {
        0 => 1,
        g => g,
    }
}

/// One bit per page, set when the page is in use. Bits past the last page are set, so searches
/// never return them.
struct PageMap {
    words: Box<[u64]>,
    pages: usize,
}

impl PageMap {
    fn new(pages: usize) -> PageMap {
        let mut words = vec![0u64; pages.div_ceil(64)].into_boxed_slice();
        if !pages.is_multiple_of(64) {
            if let Some(last) = words.last_mut() {
                *last = !0u64 << (pages % 64);
            }
        }
        PageMap { words, pages }
    }

    #[cfg(test)]
    fn is_used(&self, page: usize) -> bool {
        self.words[page / 64] & (1 << (page % 64)) != 0
    }

    fn set_range(&mut self, start: usize, n: usize, used: bool) {
        for page in start..start + n {
            let bit = 1u64 << (page % 64);
            if used {
                self.words[page / 64] |= bit;
            } else {
                self.words[page / 64] &= !bit;
            }
        }
    }

    /// First page at or after `from` whose bit equals `used`, or `limit` if none before it.
    fn find_from(&self, from: usize, used: bool, limit: usize) -> usize {
        let mut w = from / 64;
        if from >= limit {
            return limit;
        }
        let mut word = if used { self.words[w] } else { !self.words[w] };
        word &= !0u64 << (from % 64);
        loop {
            if word != 0 {
                return (w * 64 + word.trailing_zeros() as usize).min(limit);
            }
            w += 1;
            if w * 64 >= limit || w >= self.words.len() {
                return limit;
            }
            word = if used { self.words[w] } else { !self.words[w] };
        }
    }

    /// First run of `n` free pages, lowest address first.
    fn find_run(&self, n: usize) -> Option<usize> {
        let mut from = 0;
        while from + n <= self.pages {
            let start = self.find_from(from, false, self.pages);
            if start + n > self.pages {
                return None;
            }
            let end = self.find_from(start, true, start + n);
            if end - start >= n {
                return Some(start);
            }
            from = end + 1;
        }
        None
    }

    /// Highest free page.
    fn find_highest(&self) -> Option<usize> {
        for (w, &word) in self.words.iter().enumerate().rev() {
            if word != !0 {
                return Some(w * 64 + 63 - (!word).leading_zeros() as usize);
            }
        }
        None
    }
}

/// The allocator state; lives behind the arena's mutex.
pub(super) struct Allocator {
    used: PageMap,
    free_pages: usize,
    pages: Box<[Page]>,
    classes: [Class; NUM_CLASSES],
    gens: Box<[u32]>,
    owners: Box<[Owner]>,
    max_message: usize,
    stats: Stats,
}

impl Allocator {
    /// An allocator for `page_count` pages starting at [`DATA_OFFSET`]; every offset it returns
    /// is below `DATA_OFFSET + page_count * PAGE_SIZE`, which the caller checked fits in `u32`.
    pub(super) fn new(page_count: usize, max_message: usize) -> Allocator {
        let classes = CLASS_SIZES.map(|size| Class {
            size,
            per_page: (PAGE_SIZE / size as usize) as u16,
            partial: NIL,
            spare: NIL,
        });
        Allocator {
            used: PageMap::new(page_count),
            free_pages: page_count,
            pages: vec![FREE_PAGE; page_count].into_boxed_slice(),
            classes,
            gens: vec![0u32; page_count * GRANULES_PER_PAGE].into_boxed_slice(),
            owners: vec![Owner::Free; page_count * GRANULES_PER_PAGE].into_boxed_slice(),
            max_message,
            stats: Stats::default(),
        }
    }

    pub(super) fn stats(&self) -> Stats {
        self.stats
    }

    fn capacity_bytes(&self) -> u64 {
        (self.pages.len() * PAGE_SIZE) as u64
    }

    /// Leases a slot of at least `len` bytes for `owner` (`Raw` or `Leased`).
    pub(super) fn alloc(&mut self, len: usize, owner: Owner) -> Result<Slot, ArenaError> {
        debug_assert!(owner != Owner::Free);
        if len > self.max_message {
            self.stats.failed_leases += 1;
            return Err(ArenaError::too_large(
                "arena lease larger than max_message",
                len,
                self.max_message,
            ));
        }
        let found = if len <= LARGEST_CLASS {
            self.alloc_small(class_for(len))
        } else {
            self.alloc_run(pages_for(len))
        };
        let Some((offset, cap)) = found else {
            self.stats.failed_leases += 1;
            return Err(ArenaError::exhausted(
                len,
                capacity_for(len),
                self.stats.bytes_in_use,
                self.capacity_bytes(),
            ));
        };
        let g = (offset - DATA_OFFSET) / GRANULE;
        debug_assert_eq!(self.owners[g], Owner::Free);
        let gen = next_gen(self.gens[g]);
        self.gens[g] = gen;
        self.owners[g] = owner;
        let stats = &mut self.stats;
        stats.leases_total += 1;
        stats.slots_in_use += 1;
        stats.bytes_in_use += cap as u64;
        stats.high_water_bytes = stats.high_water_bytes.max(stats.bytes_in_use);
        Ok(Slot {
            offset: offset as u32,
            cap: cap as u32,
            gen,
        })
    }

    /// Where the handle points: its granule and the capacity of the object starting there.
    /// Checks everything that does not depend on the owner or generation.
    fn locate(&self, h: &Handle) -> Result<(usize, usize), ArenaError> {
        if h.gen == 0 {
            return Err(ArenaError::bad(*h, "generation 0 is never issued"));
        }
        let off = h.offset as usize;
        let rel = match off.checked_sub(DATA_OFFSET) {
            Some(rel) if rel < self.pages.len() * PAGE_SIZE => rel,
            _ => return Err(ArenaError::bad(*h, "offset is outside the arena's pages")),
        };
        if rel % GRANULE != 0 {
            return Err(ArenaError::bad(*h, "offset is not at a slot boundary"));
        }
        let g = rel / GRANULE;
        let in_page = rel % PAGE_SIZE;
        let cap = match self.pages[rel / PAGE_SIZE].kind {
            PageKind::Free if self.gens[g] == 0 => {
                return Err(ArenaError::bad(
                    *h,
                    "no slot was ever leased at this offset",
                ));
            }
            PageKind::Free => return Err(ArenaError::stale(*h, "the slot was released")),
            PageKind::RunTail => {
                return Err(ArenaError::bad(
                    *h,
                    "offset is inside a page run, not at its start",
                ));
            }
            PageKind::RunHead(_) if in_page != 0 => {
                return Err(ArenaError::bad(
                    *h,
                    "offset is inside a page run, not at its start",
                ));
            }
            PageKind::RunHead(n) => n as usize * PAGE_SIZE,
            PageKind::Small(c) => {
                let size = CLASS_SIZES[c as usize] as usize;
                if !in_page.is_multiple_of(size) {
                    return Err(ArenaError::bad(
                        *h,
                        "offset is not at an object start of its page's size class",
                    ));
                }
                size
            }
        };
        Ok((g, cap))
    }

    /// Validates a handle held outside Rust: it must name a live, raw-owned slot of the same
    /// generation, with `len` within the slot's capacity. Returns the granule and capacity.
    pub(super) fn check_raw(&self, h: &Handle) -> Result<(usize, usize), ArenaError> {
        let (g, cap) = self.locate(h)?;
        match self.owners[g] {
            Owner::Free => return Err(ArenaError::stale(*h, "the slot was released")),
            _ if self.gens[g] != h.gen => {
                return Err(ArenaError::stale(
                    *h,
                    "the slot was released and leased again (newer generation)",
                ));
            }
            Owner::Leased => {
                return Err(ArenaError::bad(
                    *h,
                    "the slot is owned by a Rust lease; only that lease can release it",
                ));
            }
            Owner::Raw => {}
        }
        if h.len as usize > cap {
            return Err(ArenaError::bad(
                *h,
                "length is larger than the slot's capacity",
            ));
        }
        Ok((g, cap))
    }

    /// Releases a slot held outside Rust.
    pub(super) fn release_raw(&mut self, h: &Handle) -> Result<(), ArenaError> {
        let (g, cap) = self.check_raw(h)?;
        self.free_slot(g, cap);
        Ok(())
    }

    /// Moves a raw-owned slot to a Rust lease. The generation moves on, so the handle that was
    /// claimed (and any copy of it) is stale from now on.
    pub(super) fn claim(&mut self, h: &Handle) -> Result<Slot, ArenaError> {
        let (g, cap) = self.check_raw(h)?;
        let gen = next_gen(self.gens[g]);
        self.gens[g] = gen;
        self.owners[g] = Owner::Leased;
        Ok(Slot {
            offset: h.offset,
            cap: cap as u32,
            gen,
        })
    }

    /// Checks that `slot` is the live Rust lease it claims to be.
    fn check_leased(&self, slot: &Slot) -> Result<usize, ArenaError> {
        let h = Handle {
            offset: slot.offset,
            len: slot.cap,
            gen: slot.gen,
        };
        let (g, cap) = self.locate(&h)?;
        if self.owners[g] != Owner::Leased || self.gens[g] != slot.gen || cap != slot.cap as usize {
            return Err(ArenaError::internal(
                "a lease's slot changed owner under it",
            ));
        }
        Ok(g)
    }

    /// Releases a Rust lease's slot.
    pub(super) fn release_leased(&mut self, slot: &Slot) -> Result<(), ArenaError> {
        let g = self.check_leased(slot)?;
        self.free_slot(g, slot.cap as usize);
        Ok(())
    }

    /// Hands a Rust lease's slot to a raw handle holder (same generation).
    pub(super) fn hand_to_raw(&mut self, slot: &Slot) -> Result<(), ArenaError> {
        let g = self.check_leased(slot)?;
        self.owners[g] = Owner::Raw;
        Ok(())
    }

    fn free_slot(&mut self, g: usize, cap: usize) {
        self.owners[g] = Owner::Free;
        self.stats.slots_in_use -= 1;
        self.stats.bytes_in_use -= cap as u64;
        let p = g / GRANULES_PER_PAGE;
        match self.pages[p].kind {
            PageKind::RunHead(n) => self.free_pages_to_pool(p, n as usize),
            PageKind::Small(c) => self.free_object(p, c as usize, g % GRANULES_PER_PAGE),
            PageKind::Free | PageKind::RunTail => {
                unreachable!("free_slot on a granule that starts no object")
            }
        }
    }

    fn alloc_small(&mut self, c: usize) -> Option<(usize, usize)> {
        let mut p = self.classes[c].partial;
        if p == NIL {
            let spare = self.classes[c].spare;
            p = if spare != NIL {
                self.classes[c].spare = NIL;
                spare
            } else {
                let p = self.take_page()?;
                let per_page = self.classes[c].per_page as usize;
                let page = &mut self.pages[p];
                page.kind = PageKind::Small(c as u8);
                page.live = 0;
                for (w, word) in page.free.iter_mut().enumerate() {
                    let bits = per_page.saturating_sub(w * 64).min(64);
                    *word = if bits == 64 { !0 } else { (1u64 << bits) - 1 };
                }
                p as u32
            };
            self.link(c, p);
        }
        let size = self.classes[c].size as usize;
        let per_page = self.classes[c].per_page;
        let page = &mut self.pages[p as usize];
        let w = page.free.iter().position(|&w| w != 0)?;
        let bit = page.free[w].trailing_zeros() as usize;
        page.free[w] &= !(1u64 << bit);
        page.live += 1;
        let full = page.live == per_page;
        if full {
            self.unlink(c, p);
        }
        let offset = DATA_OFFSET + p as usize * PAGE_SIZE + (w * 64 + bit) * size;
        Some((offset, size))
    }

    fn free_object(&mut self, p: usize, c: usize, granule_in_page: usize) {
        let class = self.classes[c];
        let idx = granule_in_page * GRANULE / class.size as usize;
        let page = &mut self.pages[p];
        debug_assert!(page.free[idx / 64] & (1 << (idx % 64)) == 0);
        page.free[idx / 64] |= 1 << (idx % 64);
        let was_full = page.live == class.per_page;
        page.live -= 1;
        let empty = page.live == 0;
        if empty {
            if !was_full {
                self.unlink(c, p as u32);
            }
            if class.spare == NIL {
                self.classes[c].spare = p as u32;
            } else {
                self.free_pages_to_pool(p, 1);
            }
        } else if was_full {
            self.link(c, p as u32);
        }
    }

    fn link(&mut self, c: usize, p: u32) {
        let head = self.classes[c].partial;
        self.pages[p as usize].prev = NIL;
        self.pages[p as usize].next = head;
        if head != NIL {
            self.pages[head as usize].prev = p;
        }
        self.classes[c].partial = p;
    }

    fn unlink(&mut self, c: usize, p: u32) {
        let Page { prev, next, .. } = self.pages[p as usize];
        if prev == NIL {
            self.classes[c].partial = next;
        } else {
            self.pages[prev as usize].next = next;
        }
        if next != NIL {
            self.pages[next as usize].prev = prev;
        }
        self.pages[p as usize].prev = NIL;
        self.pages[p as usize].next = NIL;
    }

    /// One page for a small class, from the top of the arena.
    fn take_page(&mut self) -> Option<usize> {
        let p = match self.used.find_highest() {
            Some(p) => p,
            None => {
                self.reclaim_spares()?;
                self.used.find_highest()?
            }
        };
        self.used.set_range(p, 1, true);
        self.free_pages -= 1;
        Some(p)
    }

    fn alloc_run(&mut self, n: usize) -> Option<(usize, usize)> {
        if n > self.pages.len() {
            return None;
        }
        let start = match self.used.find_run(n) {
            Some(start) => start,
            None => {
                self.reclaim_spares()?;
                self.used.find_run(n)?
            }
        };
        self.used.set_range(start, n, true);
        self.free_pages -= n;
        self.pages[start].kind = PageKind::RunHead(n as u32);
        for page in &mut self.pages[start + 1..start + n] {
            page.kind = PageKind::RunTail;
        }
        Some((DATA_OFFSET + start * PAGE_SIZE, n * PAGE_SIZE))
    }

    fn free_pages_to_pool(&mut self, start: usize, n: usize) {
        for page in &mut self.pages[start..start + n] {
            *page = FREE_PAGE;
        }
        self.used.set_range(start, n, false);
        self.free_pages += n;
    }

    /// Returns every class's spare page to the pool; `None` if there was none.
    fn reclaim_spares(&mut self) -> Option<()> {
        let mut any = false;
        for c in 0..NUM_CLASSES {
            let spare = self.classes[c].spare;
            if spare != NIL {
                self.classes[c].spare = NIL;
                self.free_pages_to_pool(spare as usize, 1);
                any = true;
            }
        }
        any.then_some(())
    }

    /// Pages not in use by any class or run (spare pages count as used).
    #[cfg(test)]
    pub(super) fn free_pages(&self) -> usize {
        self.free_pages
    }

    /// Recomputes everything derivable and compares; panics on the first inconsistency.
    #[cfg(test)]
    pub(super) fn check_invariants(&self) {
        let mut bytes = 0u64;
        let mut slots = 0u64;
        let mut free_pages = 0;
        let mut p = 0;
        while p < self.pages.len() {
            let page = self.pages[p];
            match page.kind {
                PageKind::Free => {
                    assert!(!self.used.is_used(p), "free page {p} marked used");
                    free_pages += 1;
                    p += 1;
                }
                PageKind::RunTail => panic!("run tail {p} without a head"),
                PageKind::RunHead(n) => {
                    let g = p * GRANULES_PER_PAGE;
                    assert_ne!(self.owners[g], Owner::Free, "run at page {p} has no owner");
                    for q in p..p + n as usize {
                        assert!(self.used.is_used(q));
                        if q > p {
                            assert_eq!(self.pages[q].kind, PageKind::RunTail);
                        }
                    }
                    bytes += n as u64 * PAGE_SIZE as u64;
                    slots += 1;
                    p += n as usize;
                }
                PageKind::Small(c) => {
                    assert!(self.used.is_used(p));
                    let class = self.classes[c as usize];
                    let gpo = class.size as usize / GRANULE;
                    let mut live = 0;
                    for i in 0..class.per_page as usize {
                        let free = page.free[i / 64] & (1 << (i % 64)) != 0;
                        let owner = self.owners[p * GRANULES_PER_PAGE + i * gpo];
                        assert_eq!(free, owner == Owner::Free, "page {p} object {i}");
                        if !free {
                            live += 1;
                        }
                    }
                    assert_eq!(live, page.live as usize);
                    let listed = self.list_contains(c as usize, p as u32);
                    let spare = class.spare == p as u32;
                    assert_eq!(listed, live > 0 && live < class.per_page as usize);
                    assert_eq!(spare, live == 0, "page {p}: empty pages are the spare");
                    bytes += live as u64 * class.size as u64;
                    slots += live as u64;
                    p += 1;
                }
            }
        }
        assert_eq!(free_pages, self.free_pages);
        assert_eq!(bytes, self.stats.bytes_in_use);
        assert_eq!(slots, self.stats.slots_in_use);
    }

    #[cfg(test)]
    fn list_contains(&self, c: usize, p: u32) -> bool {
        let mut q = self.classes[c].partial;
        let mut prev = NIL;
        while q != NIL {
            assert_eq!(self.pages[q as usize].prev, prev);
            if q == p {
                return true;
            }
            prev = q;
            q = self.pages[q as usize].next;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_small_length() {
        assert_eq!(class_for(0), 0);
        assert_eq!(class_for(1), 0);
        assert_eq!(class_for(256), 0);
        assert_eq!(class_for(257), 1);
        assert_eq!(class_for(32768), NUM_CLASSES - 1);
        for len in (0..=LARGEST_CLASS).step_by(7).chain([LARGEST_CLASS]) {
            let c = class_for(len);
            assert!(CLASS_SIZES[c] as usize >= len, "{len}");
            assert!(c == 0 || (CLASS_SIZES[c - 1] as usize) < len, "{len}");
        }
        assert_eq!(capacity_for(LARGEST_CLASS + 1), PAGE_SIZE);
        assert_eq!(capacity_for(PAGE_SIZE + 1), 2 * PAGE_SIZE);
        assert_eq!(capacity_for(4 << 20), 4 << 20);
    }

    #[test]
    fn page_map_searches() {
        let mut m = PageMap::new(130);
        assert_eq!(m.find_run(130), Some(0));
        assert_eq!(m.find_run(131), None);
        assert_eq!(m.find_highest(), Some(129));
        m.set_range(0, 3, true);
        m.set_range(60, 10, true);
        assert_eq!(m.find_run(57), Some(3));
        assert_eq!(m.find_run(58), Some(70));
        assert_eq!(m.find_run(60), Some(70));
        assert_eq!(m.find_run(61), None);
        m.set_range(129, 1, true);
        assert_eq!(m.find_highest(), Some(128));
        m.set_range(0, 130, true);
        assert_eq!(m.find_highest(), None);
        assert_eq!(m.find_run(1), None);
        m.set_range(64, 1, false);
        assert_eq!(m.find_run(1), Some(64));
        assert_eq!(m.find_highest(), Some(64));
    }

    #[test]
    fn empty_small_pages_go_back_to_the_pool() {
        let mut a = Allocator::new(8, 1 << 20);
        let slots: Vec<Slot> = (0..600)
            .map(|_| a.alloc(100, Owner::Leased).unwrap())
            .collect();
        // 256 objects per page: 3 pages.
        assert_eq!(a.free_pages(), 5);
        a.check_invariants();
        for s in &slots {
            a.release_leased(s).unwrap();
        }
        // One spare page stays with the class.
        assert_eq!(a.free_pages(), 7);
        a.check_invariants();
        // A run that needs every page reclaims the spare.
        let run = a.alloc(8 * PAGE_SIZE, Owner::Leased).unwrap();
        assert_eq!(run.offset as usize, DATA_OFFSET);
        a.check_invariants();
        a.release_leased(&run).unwrap();
        assert_eq!(a.free_pages(), 8);
    }

    #[test]
    fn small_pages_come_from_the_top_runs_from_the_bottom() {
        let mut a = Allocator::new(8, 1 << 20);
        let small = a.alloc(10, Owner::Raw).unwrap();
        assert_eq!(small.offset as usize, DATA_OFFSET + 7 * PAGE_SIZE);
        let run = a.alloc(2 * PAGE_SIZE, Owner::Raw).unwrap();
        assert_eq!(run.offset as usize, DATA_OFFSET);
        a.check_invariants();
    }

    /// Random leases and releases against a model that checks no two live slots overlap.
    #[test]
    fn random_operations_keep_invariants() {
        let mut a = Allocator::new(40, 16 * PAGE_SIZE);
        let mut live: Vec<Slot> = Vec::new();
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let steps = if cfg!(miri) { 300 } else { 20_000 };
        for step in 0..steps {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if !rng.is_multiple_of(3) || live.is_empty() {
                let len = match rng % 10 {
                    0 => (rng >> 8) as usize % (16 * PAGE_SIZE) + 1,
                    1..=3 => (rng >> 8) as usize % PAGE_SIZE,
                    _ => (rng >> 8) as usize % 2048,
                };
                match a.alloc(len, Owner::Leased) {
                    Ok(s) => {
                        assert!(s.cap as usize >= len);
                        for o in &live {
                            let disjoint =
                                s.offset + s.cap <= o.offset || o.offset + o.cap <= s.offset;
                            assert!(disjoint, "{s:?} overlaps {o:?}");
                        }
                        live.push(s);
                    }
                    Err(e) => assert_eq!(e.kind(), super::super::ArenaErrorKind::Exhausted),
                }
            } else {
                let i = (rng >> 20) as usize % live.len();
                a.release_leased(&live.swap_remove(i)).unwrap();
            }
            if step % 97 == 0 {
                a.check_invariants();
            }
        }
        for s in live.drain(..) {
            a.release_leased(&s).unwrap();
        }
        a.check_invariants();
        assert_eq!(a.stats().bytes_in_use, 0);
        assert_eq!(a.stats().slots_in_use, 0);
    }
}
