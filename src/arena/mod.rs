//! The shared slab arena: one memory mapping per nginx worker that carries request and reply
//! payloads, written and read in place by LuaJIT FFI on the nginx main thread and by the
//! runtime's threads.
//!
//! # Layout
//!
//! ```text
//! mapping base (page-aligned, from memmap2's map_anon)
//! │
//! ├─ 0 ─────────── ArenaHeader (112 bytes, repr(C), offsets only; ARENA_HEADER_CDEF)
//! │                magic "GRPCZCAR" · layout_version · header_size · total_size · data_offset
//! │                page_size · page_count · granule · max_message · class_count · class_size[16]
//! ├─ 4096 ──────── page 0 ┐
//! ├─ 4096+64K ──── page 1 │  PAGE_SIZE = 64 KiB each; every slot starts on a 256-byte granule
//! │   ...                 │
//! ├─ ... ───────── page N-1┘ (bytes after the last whole page are unused)
//! └─ total_size
//!
//! a page is one of:
//!   free
//!   a small-class page:  [obj 0][obj 1][obj 2] ... 65536/size objects of one class
//!                        classes 256 · 512 · 1K · 2K · 4K · 8K · 16K · 32K
//!   part of a page run:  [head page][tail]...[tail]  one payload > 32 KiB, up to max_message,
//!                        ceil(len / 64 KiB) contiguous pages
//!
//! small-class pages are taken from the top, runs first-fit from the bottom:
//!   [run][run][run ][ free ............ ][small][small][small]
//! ```
//!
//! Why page runs, not power-of-two classes, above 32 KiB: a run rounds a payload up to the next
//! 64 KiB (at most 64 KiB lost per payload), where classes of 64 KiB .. 1 MiB would lose up to
//! half the class (512 KiB for a payload just over 512 KiB), and a run lease measured as cheap as
//! a class lease (first fit over a bitmap of 64 pages per word: ~40-55 ns for 100 KiB). The price
//! is external fragmentation under a mix of long-lived runs, which the top/bottom split keeps
//! away from small-class pages.
//!
//! Everything is addressed by an offset from the mapping base, so a [`Handle`] (offset, length,
//! generation) means the same thing to Rust and to Lua. The allocator's metadata (page owners,
//! free bitmaps, generations, owners, stats) lives in Rust heap memory, never in the mapping:
//! Lua can write anywhere in the mapping, and that can only ever damage payload bytes (and the
//! header, which Rust writes once and never reads back), never the allocator.
//!
//! # Ownership
//!
//! Every live slot has exactly one owner, and the allocator records which kind:
//!
//! | owner | got it by | gives it up by |
//! |---|---|---|
//! | a Rust [`Lease`] | [`Arena::lease`], [`Arena::claim`] | drop (frees it), [`Lease::into_handle`] (to a handle holder) |
//! | a [`Handle`] holder (Lua, the C ABI caller) | [`Arena::lease_raw`], [`Lease::into_handle`] | [`Arena::release`] (frees it), [`Arena::claim`] (to a Rust lease) |
//!
//! Every handle the arena is given is checked: it must point at the start of a live object, name
//! the slot's current generation, be held by a handle holder (not a Rust lease) and have a length
//! within the slot's capacity. Anything else is a [`StaleHandle`](ArenaErrorKind::StaleHandle) or
//! [`BadHandle`](ArenaErrorKind::BadHandle) error, never undefined behaviour. Claiming moves the
//! generation on, so the handle that was claimed (and every copy of it) is stale afterwards.
//!
//! # Threads
//!
//! [`Arena`] is a cheap clonable handle (`Send + Sync`); [`Lease`] is `Send + Sync + 'static`
//! and keeps the mapping alive, so `bytes::Bytes::from_owner(lease)` can hand a payload to tonic
//! without a copy and release the slot on whichever thread drops the last `Bytes`. Leasing,
//! claiming and releasing take one short mutex (no allocation, no system call, a bounded scan of
//! the page bitmap for page runs), so the nginx main thread can call them. Measured on the
//! project's 2-vCPU machine (`arena::tests::latency`, release build): lease + release 26-50 ns
//! uncontended for small classes and 100 KiB page runs, ~200-320 ns for a 4 MiB run, 40-145 ns
//! wall time per operation with 2-4 threads contending for the lock (varies from run to run). The one exception to "short"
//! is [`Arena::copy_out`], which holds the lock while it copies (~26 µs per 100 KB).
//!
//! # Who may touch the bytes, and Rust's aliasing rules
//!
//! The bytes of a slot are accessed by its owner only:
//!
//! - A [`Lease`] hands out ordinary `&[u8]` / `&mut [u8]` ([`Lease::as_slice`],
//!   [`Lease::as_mut_slice`], `AsRef<[u8]>`). This is sound because the owner is exclusive: the
//!   allocator never gives one slot to two owners, a raw handle cannot release or claim a slot a
//!   Lease owns, and the Lua side's contract is to touch only slots whose handles it holds (it
//!   gives up its access when it posts a handle, and a claim makes its old handle stale).
//! - Lua is outside Rust's abstract machine. If it breaks that contract and writes into a slot a
//!   Rust lease owns, Rust reads bytes that change under a shared reference. The arena cannot
//!   stop that (LuaJIT can write to any address), so payload bytes are always untrusted input:
//!   verify them once at the boundary (bounded FlatBuffers verifier) and keep reads
//!   bounds-checked where a changed byte could turn into an out-of-bounds access; an `_unchecked`
//!   read after verification is only as sound as Lua's keeping the contract. The allocator's
//!   integrity does not depend on the bytes at all.
//! - To read a slot Rust does not own (its holder, Lua, may write it at the same time), use
//!   [`Arena::copy_out`]: it holds the allocator lock (so no Rust lease can exist on that slot
//!   meanwhile) and reads with relaxed single-byte atomic loads through a `&[AtomicU8]`, the one
//!   kind of access Rust's memory model defines for memory another party may write
//!   concurrently. The reader gets some mix of old and new bytes, never undefined behaviour on
//!   the Rust side. No `&[u8]` to such memory is ever created.
//!
//! Alternatives considered: volatile reads are not an answer (Rust defines racing volatile
//! accesses exactly like racing plain ones: undefined); `&[AtomicU8]` for leases too would make
//! every owned access slow and rule out `AsRef<[u8]>` (so no `Bytes::from_owner`, no zero copy);
//! 8-byte atomic loads in `copy_out` would be faster, but racing atomics of different sizes are
//! not defined either (miri reports them against the byte stores of the test that plays Lua).
//!
//! # Lifetime
//!
//! The mapping lives until the last [`Arena`] clone and the last [`Lease`] are dropped. Raw
//! handles do not keep it alive: whoever gives Lua [`Arena::base_ptr`] must keep an `Arena` alive
//! for as long as Lua may use the pointer (for the runtime: until the worker exits).

mod alloc;
mod error;
mod layout;
mod sync;
#[cfg(test)]
mod tests;

use std::fmt;
use std::mem::size_of;
use std::ops::Range;
use std::ptr;
use std::slice;

use memmap2::{MmapMut, MmapRaw};

use alloc::{Allocator, Owner, Slot};
use sync::{Arc, AtomicU8, Mutex, MutexGuard, Ordering};

pub use error::{ArenaError, ArenaErrorKind};
pub use layout::{
    ArenaHeader, Handle, Stats, ARENA_HEADER_CDEF, ARENA_LAYOUT_VERSION, ARENA_MAGIC, CLASS_SIZES,
    DATA_OFFSET, GRANULE, PAGE_SIZE,
};

/// Default size of an arena mapping: 64 MiB.
pub const DEFAULT_ARENA_SIZE: usize = 64 << 20;
/// Default largest payload: 4 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 4 << 20;
/// Largest `max_message` a configuration may ask for: 64 MiB.
pub const MAX_MESSAGE_LIMIT: usize = 64 << 20;
/// Largest arena: 4 GiB, so every offset fits a handle's `u32`.
pub const MAX_ARENA_SIZE: u64 = 1 << 32;

/// Size of an arena and of the largest payload it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaConfig {
    /// Length of the mapping in bytes ([`DEFAULT_ARENA_SIZE`]). At most [`MAX_ARENA_SIZE`]; must
    /// hold the header and enough pages for one `max_message` payload.
    pub size: usize,
    /// Largest lease in bytes ([`DEFAULT_MAX_MESSAGE`]); 1 ..= [`MAX_MESSAGE_LIMIT`].
    pub max_message: usize,
}

impl Default for ArenaConfig {
    fn default() -> ArenaConfig {
        ArenaConfig {
            size: DEFAULT_ARENA_SIZE,
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }
}

impl ArenaConfig {
    /// Checks the configuration; returns the number of pages the arena will have.
    pub fn validate(&self) -> Result<usize, ArenaError> {
        if self.max_message == 0 {
            return Err(ArenaError::config("max_message must be at least 1", 0, 1));
        }
        if self.max_message > MAX_MESSAGE_LIMIT {
            return Err(ArenaError::config(
                "max_message is larger than 64 MiB",
                self.max_message as u64,
                MAX_MESSAGE_LIMIT as u64,
            ));
        }
        if self.size as u64 > MAX_ARENA_SIZE {
            return Err(ArenaError::config(
                "size is larger than 4 GiB (handle offsets are 32-bit)",
                self.size as u64,
                MAX_ARENA_SIZE,
            ));
        }
        let pages = self.size.saturating_sub(DATA_OFFSET) / PAGE_SIZE;
        let need = alloc::capacity_for(self.max_message);
        if pages * PAGE_SIZE < need {
            return Err(ArenaError::config(
                "size cannot hold the header plus one max_message payload",
                self.size as u64,
                (DATA_OFFSET + need.max(PAGE_SIZE)) as u64,
            ));
        }
        Ok(pages)
    }
}

struct Inner {
    /// The mapping. Only ever accessed through raw pointers from `MmapRaw::as_mut_ptr`; no Rust
    /// reference to the whole mapping exists after construction.
    map: MmapRaw,
    header: ArenaHeader,
    max_message: usize,
    alloc: Mutex<Allocator>,
}

impl Inner {
    fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The allocator, or `Internal` if a panic poisoned it (then the arena refuses all work: its
    /// state may be half-updated, and handing out a slot twice would be unsound).
    fn lock(&self) -> Result<MutexGuard<'_, Allocator>, ArenaError> {
        self.alloc
            .lock()
            .map_err(|_| ArenaError::internal("allocator lock poisoned by an earlier panic"))
    }
}

/// The shared slab arena of one runtime instance (one per nginx worker). Cloning is cheap and
/// shares the same mapping.
#[derive(Clone)]
pub struct Arena {
    inner: Arc<Inner>,
}

impl Arena {
    /// Maps a new arena (`memmap2` anonymous mapping, zero-filled) and writes its header.
    /// All allocator metadata is allocated here, on the Rust heap.
    pub fn new(config: ArenaConfig) -> Result<Arena, ArenaError> {
        let pages = config.validate()?;
        let map =
            MmapMut::map_anon(config.size).map_err(|e| ArenaError::map_failed(config.size, &e))?;
        let map = MmapRaw::from(map);
        let header = ArenaHeader::new(config.size, pages as u32, config.max_message as u32);
        // SAFETY: the mapping is `config.size >= DATA_OFFSET > size_of::<ArenaHeader>()` bytes,
        // readable and writable, and page-aligned (so aligned for `ArenaHeader`). It was created
        // just now on this thread and its address has not been handed to anyone, so nothing else
        // accesses it during this write.
        unsafe { ptr::write(map.as_mut_ptr().cast::<ArenaHeader>(), header) };
        debug_assert!(size_of::<ArenaHeader>() <= DATA_OFFSET);
        Ok(Arena {
            inner: Arc::new(Inner {
                map,
                header,
                max_message: config.max_message,
                alloc: Mutex::new(Allocator::new(pages, config.max_message)),
            }),
        })
    }

    /// Leases a slot of at least `len` bytes, owned by the returned [`Lease`] (released when it
    /// drops). Its contents are whatever the slot held before (zero in a fresh mapping).
    ///
    /// Errors: [`TooLarge`](ArenaErrorKind::TooLarge) above `max_message`,
    /// [`Exhausted`](ArenaErrorKind::Exhausted) when no slot of that size is free right now.
    pub fn lease(&self, len: usize) -> Result<Lease, ArenaError> {
        let slot = self.inner.lock()?.alloc(len, Owner::Leased)?;
        Ok(Lease {
            inner: Arc::clone(&self.inner),
            slot,
            len: len as u32,
        })
    }

    /// Leases a slot of at least `len` bytes for a handle holder (the C ABI, Lua). The caller owns
    /// the slot until it passes the handle to [`release`](Self::release) or
    /// [`claim`](Self::claim). Errors as [`lease`](Self::lease).
    pub fn lease_raw(&self, len: usize) -> Result<Handle, ArenaError> {
        let slot = self.inner.lock()?.alloc(len, Owner::Raw)?;
        Ok(Handle {
            offset: slot.offset,
            len: len as u32,
            gen: slot.gen,
        })
    }

    /// Frees the slot of a handle holder. Fails, changing nothing, on a stale or bad handle
    /// (including a handle of a slot that a Rust [`Lease`] owns).
    pub fn release(&self, handle: Handle) -> Result<(), ArenaError> {
        self.inner.lock()?.release_raw(&handle)
    }

    /// Takes ownership of a handle holder's slot (a request Lua posted): validates the handle and
    /// returns a [`Lease`] of `handle.len` bytes. The slot's generation moves on, so `handle` and
    /// its copies are stale from now on.
    pub fn claim(&self, handle: Handle) -> Result<Lease, ArenaError> {
        let slot = self.inner.lock()?.claim(&handle)?;
        Ok(Lease {
            inner: Arc::clone(&self.inner),
            slot,
            len: handle.len,
        })
    }

    /// Copies the first `min(handle.len, dst.len())` bytes of a handle holder's slot into `dst`
    /// and returns how many it copied, without taking ownership.
    ///
    /// The holder (Lua) may be writing the slot meanwhile, so the copy may mix old and new bytes;
    /// treat it as untrusted. It holds the allocator lock for the copy (so no Rust lease can own
    /// the slot meanwhile): fine for diagnostics, tests and small reads; for payloads use
    /// [`claim`](Self::claim).
    pub fn copy_out(&self, handle: &Handle, dst: &mut [u8]) -> Result<usize, ArenaError> {
        let alloc = self.inner.lock()?;
        alloc.check_raw(handle)?;
        let n = (handle.len as usize).min(dst.len());
        let src = self.inner.base().wrapping_add(handle.offset as usize);
        // SAFETY: `check_raw` proved `handle.offset .. handle.offset + handle.len` lies inside a
        // live slot inside the mapping, which `self` keeps mapped. The slot is owned by a handle
        // holder, and while we hold the allocator lock no Rust `Lease` can be created for it
        // (claim and lease need the lock), so no Rust code accesses these bytes non-atomically
        // during the copy; only Lua, outside the Rust abstract machine, may write them.
        unsafe { racy_copy(src, &mut dst[..n]) };
        drop(alloc);
        Ok(n)
    }

    /// Capacity of the slot a lease of `len` bytes would get, or `TooLarge`.
    pub fn capacity_for(&self, len: usize) -> Result<usize, ArenaError> {
        if len > self.inner.max_message {
            return Err(ArenaError::too_large(
                "arena lease larger than max_message",
                len,
                self.inner.max_message,
            ));
        }
        Ok(alloc::capacity_for(len))
    }

    /// Base address of the mapping, for the C ABI that gives it to Lua. Valid while any `Arena`
    /// clone or `Lease` of this arena lives. Rust code must not access slots through it: use a
    /// [`Lease`] or [`copy_out`](Self::copy_out).
    pub fn base_ptr(&self) -> *mut u8 {
        self.inner.base()
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.inner.header.total_size as usize
    }

    /// Always `false`: an arena has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Largest lease this arena accepts, in bytes.
    pub fn max_message(&self) -> usize {
        self.inner.max_message
    }

    /// The header written at offset 0 (Rust's own copy, not read from the mapping).
    pub fn header(&self) -> ArenaHeader {
        self.inner.header
    }

    /// A consistent snapshot of the counters. On a poisoned arena, the last counters are still
    /// returned.
    pub fn stats(&self) -> Stats {
        match self.inner.alloc.lock() {
            Ok(alloc) => alloc.stats(),
            Err(poisoned) => poisoned.into_inner().stats(),
        }
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        self.inner.lock().unwrap().check_invariants();
    }
}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena")
            .field("base", &self.base_ptr())
            .field("len", &self.len())
            .field("max_message", &self.max_message())
            .field("stats", &self.stats())
            .finish()
    }
}

/// An owned arena slot. Dropping it frees the slot; [`into_handle`](Self::into_handle) hands it
/// to a handle holder instead.
///
/// `Send + Sync + 'static` and `AsRef<[u8]>`, so `bytes::Bytes::from_owner(lease)` works. The
/// slice views cover the committed length ([`len`](Self::len)); the slot's capacity may be
/// larger.
pub struct Lease {
    inner: Arc<Inner>,
    /// `slot.gen == 0` once ownership moved to a handle (never a live generation).
    slot: Slot,
    len: u32,
}

impl Lease {
    /// The handle of this slot with the committed length. While the lease lives, the arena
    /// refuses to release or claim it through this handle; [`into_handle`](Self::into_handle)
    /// makes it usable.
    pub fn handle(&self) -> Handle {
        Handle {
            offset: self.slot.offset,
            len: self.len,
            gen: self.slot.gen,
        }
    }

    /// Hands the slot to a handle holder (for example as a reply for Lua), without freeing it.
    /// The returned handle is the one [`handle`](Self::handle) showed.
    pub fn into_handle(mut self) -> Handle {
        let handle = self.handle();
        // A poisoned arena refuses all work; the slot then stays with this (consumed) lease and
        // the handle will not validate, which is the fail-closed outcome.
        if let Ok(mut alloc) = self.inner.lock() {
            if alloc.hand_to_raw(&self.slot).is_ok() {
                self.slot.gen = 0;
            }
        }
        handle
    }

    /// Committed length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the committed length is 0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Capacity of the slot in bytes (its size class, or its page run).
    pub fn capacity(&self) -> usize {
        self.slot.cap as usize
    }

    /// Sets the committed length (for example to the number of bytes actually written).
    /// `TooLarge` if it exceeds the capacity.
    pub fn set_len(&mut self, len: usize) -> Result<(), ArenaError> {
        if len > self.capacity() {
            return Err(ArenaError::too_large(
                "lease length larger than the slot's capacity",
                len,
                self.capacity(),
            ));
        }
        self.len = len as u32;
        Ok(())
    }

    fn ptr(&self) -> *mut u8 {
        self.inner.base().wrapping_add(self.slot.offset as usize)
    }

    /// Where `part` lies in the committed bytes, as offsets from the slot's start: `Some` only
    /// when `part` is a sub-slice of [`as_slice`](Self::as_slice) (for instance a field of a
    /// FlatBuffer read from this slot). Compares addresses only; reads nothing.
    pub fn range_of(&self, part: &[u8]) -> Option<Range<usize>> {
        let start = (part.as_ptr() as usize).checked_sub(self.ptr() as usize)?;
        let end = start.checked_add(part.len())?;
        (end <= self.len()).then_some(start..end)
    }

    /// The little-endian `u32` at byte `at` of the committed bytes (a FlatBuffers vector's
    /// length prefix), or `None` when the four bytes are not all inside them.
    pub fn u32_at(&self, at: usize) -> Option<u32> {
        let b = self.as_slice().get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The committed bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `offset .. offset + capacity` lies inside the mapping (the allocator only hands
        // out slots inside its pages) and `len <= capacity`. `self.inner` keeps the mapping alive
        // for the borrow. This lease is the slot's only owner: the allocator gives a slot to one
        // owner at a time and no raw handle can release or claim it while we own it, so no Rust
        // code writes these bytes during the borrow; Lua's side of the protocol is to not write a
        // slot it does not hold (see "Who may touch the bytes" in the module docs). Every byte of
        // the mapping is initialized (zero-filled by mmap, then only ever written with bytes).
        unsafe { slice::from_raw_parts(self.ptr(), self.len as usize) }
    }

    /// The committed bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only Rust reference into the slot
        // for the borrow.
        unsafe { slice::from_raw_parts_mut(self.ptr(), self.len as usize) }
    }

    /// The whole slot (its capacity), writable; pair with [`set_len`](Self::set_len) when the
    /// final length is known only after writing.
    pub fn as_mut_capacity_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_mut_slice`, for `capacity` bytes, which the slot spans.
        unsafe { slice::from_raw_parts_mut(self.ptr(), self.slot.cap as usize) }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.slot.gen == 0 {
            return;
        }
        // A poisoned arena refuses all work: the slot leaks, which is safe.
        if let Ok(mut alloc) = self.inner.lock() {
            let released = alloc.release_leased(&self.slot);
            debug_assert!(released.is_ok(), "{released:?}");
        }
    }
}

impl AsRef<[u8]> for Lease {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsMut<[u8]> for Lease {
    fn as_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("offset", &self.slot.offset)
            .field("len", &self.len)
            .field("capacity", &self.slot.cap)
            .field("gen", &self.slot.gen)
            .finish()
    }
}

/// Copies `dst.len()` bytes starting at `src` into `dst` with relaxed single-byte atomic loads,
/// tolerating concurrent writes by code outside Rust.
///
/// Byte-sized loads on purpose: the writer (LuaJIT's `ffi.copy`, plain stores) writes at any
/// width, and racing atomic accesses of different sizes are not defined in Rust's model, while a
/// byte load is no wider than any store. That costs speed (roughly one byte per cycle; no
/// vectorizing), which is acceptable for a diagnostic path.
///
/// # Safety
///
/// - `src` is valid for reads of `dst.len()` bytes for the whole call.
/// - No Rust code accesses those bytes non-atomically during the call (foreign code, like
///   LuaJIT-compiled Lua, may write them; the result then mixes old and new bytes).
/// - `dst` does not overlap them.
unsafe fn racy_copy(src: *const u8, dst: &mut [u8]) {
    // SAFETY: `AtomicU8` has the size and alignment of `u8`; `src` is valid for `dst.len()`
    // bytes (caller). A shared slice of atomics may alias memory that is written concurrently
    // (atomics are `UnsafeCell`s), and we only load through it; no Rust code accesses the bytes
    // non-atomically meanwhile (caller).
    let src = unsafe { slice::from_raw_parts(src.cast::<AtomicU8>(), dst.len()) };
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.load(Ordering::Relaxed);
    }
}
