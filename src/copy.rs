//! Copying payload bytes between buffers whose placement we do not choose.
//!
//! On these machines (AMD EPYC, glibc 2.36) `memcpy` of a few KiB up to ~512 KiB runs about
//! 15x slower (2.5 GB/s instead of 35–50 GB/s) when the destination lies 1 to 15 bytes after
//! the source modulo 4096: glibc's `rep movsb` path then trips over 4K aliasing. Measured with a
//! 100 KB copy at every distance from -8 to 69: 39–82 µs for 1..=15, 2–3 µs for all others.
//! Which distance a copy gets depends on where the allocator put both buffers, so a payload
//! size can be slow on every call while its neighbours are fast.
//!
//! [`copy`] uses `memcpy` except in that band, where it runs a 16-byte SSE2 loop (22–30 GB/s
//! at any alignment). Reply payloads written by the runtime are co-aligned instead (see
//! `wire::write_reply` and `codec`), which keeps them on `memcpy`.

/// Copies below this size are never slow enough to matter.
const SMALL: usize = 2048;

/// Whether `memcpy` from `src` to `dst` falls in the slow band (see the module docs).
pub fn slow_distance(dst: *const u8, src: *const u8) -> bool {
    let d = (dst as usize).wrapping_sub(src as usize) & 4095;
    (1..=15).contains(&d)
}

/// Copies `src` into `dst` (same length), avoiding the slow band of `memcpy`.
///
/// # Panics
/// When the lengths differ.
pub fn copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copy: lengths differ");
    // SAFETY: both slices are valid for `len` bytes and do not overlap (`dst` is a unique
    // borrow).
    unsafe { copy_raw(dst.as_mut_ptr(), src.as_ptr(), src.len()) }
}

/// [`copy`] for raw pointers (the FFI export `grpc_zc_copy`).
///
/// # Safety
/// `src` is readable and `dst` writable for `len` bytes, and the ranges do not overlap.
pub unsafe fn copy_raw(dst: *mut u8, src: *const u8, len: usize) {
    if len < SMALL || !slow_distance(dst, src) {
        // SAFETY: per the caller.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
        return;
    }
    // SAFETY: per the caller.
    unsafe { copy_loop(dst, src, len) }
}

/// Forward copy with 16-byte unaligned loads and stores (SSE2 is part of x86_64).
///
/// # Safety
/// As [`copy_raw`].
#[cfg(target_arch = "x86_64")]
unsafe fn copy_loop(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_storeu_si128};
    let mut i = 0;
    while i + 64 <= len {
        // SAFETY: i + 64 <= len: the four 16-byte loads and stores are in bounds; unaligned
        // access is what these intrinsics are for.
        unsafe {
            let s = src.add(i) as *const __m128i;
            let d = dst.add(i) as *mut __m128i;
            let a = _mm_loadu_si128(s);
            let b = _mm_loadu_si128(s.add(1));
            let c = _mm_loadu_si128(s.add(2));
            let e = _mm_loadu_si128(s.add(3));
            _mm_storeu_si128(d, a);
            _mm_storeu_si128(d.add(1), b);
            _mm_storeu_si128(d.add(2), c);
            _mm_storeu_si128(d.add(3), e);
        }
        i += 64;
    }
    // SAFETY: the remaining len - i (< 64) bytes are in bounds.
    unsafe { std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i) };
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn copy_loop(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: per the caller.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_at_every_distance_and_length() {
        // Miri runs a subset: every byte it touches costs it a clock.
        let (lens, ats): (&[usize], usize) = if cfg!(miri) {
            (&[0, 1, 63, 64, 65, 2048, 4097], 17)
        } else {
            (
                &[
                    0, 1, 63, 64, 65, 2047, 2048, 4095, 4096, 4097, 10_001, 16_384,
                ],
                40,
            )
        };
        let longest = lens.iter().copied().max().unwrap_or(0);
        let src: Vec<u8> = (0..longest as u32 + 16)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        let mut dst = vec![0u8; longest + ats + 64];
        for &len in lens {
            for at in 0..ats {
                let from = at % 13;
                dst.fill(0xEE);
                copy(&mut dst[at..at + len], &src[from..from + len]);
                assert_eq!(
                    &dst[at..at + len],
                    &src[from..from + len],
                    "len {len} at {at}"
                );
                assert!(dst[..at].iter().all(|&b| b == 0xEE));
                assert!(dst[at + len..].iter().all(|&b| b == 0xEE));
            }
        }
    }

    #[test]
    fn the_band() {
        let base = 0x10_0000usize;
        let p = |a: usize| a as *const u8;
        assert!(!slow_distance(p(base), p(base)));
        assert!(slow_distance(p(base + 1), p(base)));
        assert!(slow_distance(p(base + 15), p(base)));
        assert!(!slow_distance(p(base + 16), p(base)));
        assert!(!slow_distance(p(base), p(base + 8)));
        assert!(slow_distance(p(base + 4096 * 3 + 8), p(base)));
    }
}
