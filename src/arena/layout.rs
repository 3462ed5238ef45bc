//! Everything Lua sees of the arena: the mapping header, handles and stats, their C
//! declarations, and the geometry constants.
//!
//! All three types are `#[repr(C)]`, pointer-free (offsets from the mapping base, never
//! addresses) and checked against [`ARENA_HEADER_CDEF`] by a unit test, so the Lua side can
//! `ffi.cdef` that string and read them in place. Rust writes the header once, at construction,
//! and never reads it back: Lua may overwrite it (or anything else in the mapping) without
//! affecting the allocator.

use std::mem::{offset_of, size_of};

/// The first 8 bytes of every arena mapping: ASCII `GRPCZCAR`, read as a little-endian `u64`.
///
/// Lua can check it without 64-bit constants: `ffi.string(base, 8) == "GRPCZCAR"`.
pub const ARENA_MAGIC: u64 = u64::from_le_bytes(*b"GRPCZCAR");

/// Version of the layout of [`ArenaHeader`], [`Handle`] and [`Stats`]. Bumped on any change to
/// those types or to the meaning of their fields; Lua refuses a mapping whose version differs.
pub const ARENA_LAYOUT_VERSION: u32 = 1;

/// Size of one allocator page. Small size classes carve objects out of one page; payloads larger
/// than the largest class take a run of contiguous pages.
pub const PAGE_SIZE: usize = 64 * 1024;

/// Offset of page 0 from the mapping base. The header lives in the bytes before it.
pub const DATA_OFFSET: usize = 4096;

/// Size of the smallest class; every slot starts at a multiple of it (relative to
/// [`DATA_OFFSET`], which is itself a multiple of it), so every slot is 256-byte aligned.
pub const GRANULE: usize = 256;

/// Object sizes of the small classes, carved out of single pages. A lease of `len` bytes takes
/// the first class `>= len`; a lease larger than the last class takes
/// `ceil(len / PAGE_SIZE)` contiguous pages.
pub const CLASS_SIZES: [u32; 8] = [256, 512, 1024, 2048, 4096, 8192, 16384, 32768];

/// Room for class sizes in the header; entries past `class_count` are zero.
pub const HEADER_CLASS_SLOTS: usize = 16;

/// The header at offset 0 of every arena mapping.
///
/// Written once by [`Arena::new`](super::Arena::new) before the base address is handed out;
/// afterwards it is information for Lua only (Rust keeps its own copy and never reads this one).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaHeader {
    /// [`ARENA_MAGIC`].
    pub magic: u64,
    /// [`ARENA_LAYOUT_VERSION`].
    pub layout_version: u32,
    /// `size_of::<ArenaHeader>()`, so a reader can tell a longer header from a later version.
    pub header_size: u32,
    /// Length of the whole mapping in bytes.
    pub total_size: u64,
    /// Offset of page 0 ([`DATA_OFFSET`]).
    pub data_offset: u32,
    /// [`PAGE_SIZE`].
    pub page_size: u32,
    /// Number of pages after `data_offset`; bytes after the last page are unused.
    pub page_count: u32,
    /// [`GRANULE`]: every slot offset is `data_offset + k * granule`.
    pub granule: u32,
    /// Largest lease the arena accepts, in bytes.
    pub max_message: u32,
    /// Number of valid entries in `class_size`.
    pub class_count: u32,
    /// [`CLASS_SIZES`], zero-padded.
    pub class_size: [u32; HEADER_CLASS_SLOTS],
}

const _: () = {
    assert!(size_of::<ArenaHeader>() == 112);
    assert!(offset_of!(ArenaHeader, magic) == 0);
    assert!(offset_of!(ArenaHeader, layout_version) == 8);
    assert!(offset_of!(ArenaHeader, header_size) == 12);
    assert!(offset_of!(ArenaHeader, total_size) == 16);
    assert!(offset_of!(ArenaHeader, data_offset) == 24);
    assert!(offset_of!(ArenaHeader, page_size) == 28);
    assert!(offset_of!(ArenaHeader, page_count) == 32);
    assert!(offset_of!(ArenaHeader, granule) == 36);
    assert!(offset_of!(ArenaHeader, max_message) == 40);
    assert!(offset_of!(ArenaHeader, class_count) == 44);
    assert!(offset_of!(ArenaHeader, class_size) == 48);
    assert!(size_of::<ArenaHeader>() <= DATA_OFFSET);
    assert!(CLASS_SIZES.len() <= HEADER_CLASS_SLOTS);
    assert!(DATA_OFFSET.is_multiple_of(GRANULE) && PAGE_SIZE.is_multiple_of(GRANULE));
    assert!(CLASS_SIZES[0] as usize == GRANULE);
    assert!(
        PAGE_SIZE / GRANULE <= 256,
        "a page's free bitmap is [u64; 4]"
    );
};

/// A slot, as the C ABI and Lua see it: where it is, how many bytes it carries, and which
/// lease of that slot it belongs to.
///
/// - `offset`: from the mapping base to the first byte of the slot (always a multiple of
///   [`GRANULE`] past [`DATA_OFFSET`]).
/// - `len`: the committed length in bytes: what the holder vouches for, at most the slot's
///   capacity. A lease sets it to the requested length; whoever hands the slot on (Lua posting a
///   request, the runtime announcing a reply) may set it to the number of bytes actually written.
/// - `gen`: the slot's generation when it was leased or claimed. Never 0 for a live slot, so an
///   all-zero handle is always invalid. A handle whose `gen` differs from the slot's is stale.
///
/// A handle is plain data: copying it does not copy ownership, and the arena checks every handle
/// it is given (offset, class, generation, owner, length) before acting on it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Handle {
    /// Offset of the slot from the mapping base.
    pub offset: u32,
    /// Committed length in bytes (`<=` the slot's capacity).
    pub len: u32,
    /// Generation of the slot this handle was issued for; never 0.
    pub gen: u32,
}

const _: () = {
    assert!(size_of::<Handle>() == 12);
    assert!(offset_of!(Handle, offset) == 0);
    assert!(offset_of!(Handle, len) == 4);
    assert!(offset_of!(Handle, gen) == 8);
};

/// Allocator counters, copied out under the allocator lock (a consistent snapshot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes reserved by live slots (slot capacities, not requested lengths).
    pub bytes_in_use: u64,
    /// Live slots: Rust leases plus handles held outside Rust.
    pub slots_in_use: u64,
    /// Highest `bytes_in_use` seen since the arena was created.
    pub high_water_bytes: u64,
    /// Leases refused (`Exhausted` or `TooLarge`).
    pub failed_leases: u64,
    /// Successful leases (`lease` and `lease_raw`; claims are not counted).
    pub leases_total: u64,
}

const _: () = {
    assert!(size_of::<Stats>() == 40);
    assert!(offset_of!(Stats, bytes_in_use) == 0);
    assert!(offset_of!(Stats, slots_in_use) == 8);
    assert!(offset_of!(Stats, high_water_bytes) == 16);
    assert!(offset_of!(Stats, failed_leases) == 24);
    assert!(offset_of!(Stats, leases_total) == 32);
};

/// C declarations of [`ArenaHeader`], [`Handle`] and [`Stats`] for LuaJIT's `ffi.cdef`.
///
/// Kept in sync with the Rust types by a unit test that computes every field offset from this
/// text and compares it with `offset_of!`.
pub const ARENA_HEADER_CDEF: &str = r#"
typedef struct {
    uint64_t magic;
    uint32_t layout_version;
    uint32_t header_size;
    uint64_t total_size;
    uint32_t data_offset;
    uint32_t page_size;
    uint32_t page_count;
    uint32_t granule;
    uint32_t max_message;
    uint32_t class_count;
    uint32_t class_size[16];
} grpc_zc_arena_header_t;

typedef struct {
    uint32_t offset;
    uint32_t len;
    uint32_t gen;
} grpc_zc_handle_t;

typedef struct {
    uint64_t bytes_in_use;
    uint64_t slots_in_use;
    uint64_t high_water_bytes;
    uint64_t failed_leases;
    uint64_t leases_total;
} grpc_zc_arena_stats_t;
"#;

impl ArenaHeader {
    /// The header of an arena with this geometry.
    pub(super) fn new(total_size: usize, page_count: u32, max_message: u32) -> ArenaHeader {
        let mut class_size = [0u32; HEADER_CLASS_SLOTS];
        class_size[..CLASS_SIZES.len()].copy_from_slice(&CLASS_SIZES);
        ArenaHeader {
            magic: ARENA_MAGIC,
            layout_version: ARENA_LAYOUT_VERSION,
            header_size: size_of::<ArenaHeader>() as u32,
            total_size: total_size as u64,
            data_offset: DATA_OFFSET as u32,
            page_size: PAGE_SIZE as u32,
            page_count,
            granule: GRANULE as u32,
            max_message,
            class_count: CLASS_SIZES.len() as u32,
            class_size,
        }
    }
}
