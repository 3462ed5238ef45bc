//! Arena tests: geometry, handles, exhaustion, page runs, stats, the C declarations, threads.
//!
//! Miri runs them (`cargo +nightly miri test -p resty_grpc_zc --lib arena`; memmap2's anonymous
//! mapping works under miri's mmap shim) on small arenas with fewer iterations (see
//! `small_config`); the tests that need a real process (LuaJIT) or a 64 MiB mapping are skipped,
//! and the whole run takes about 10 minutes on the project machine.

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread;

use super::*;

/// An arena of `pages` pages whose max message is `max_pages` pages.
fn arena_with(pages: usize, max_pages: usize) -> Arena {
    let arena = Arena::new(ArenaConfig {
        size: DATA_OFFSET + pages * PAGE_SIZE,
        max_message: max_pages * PAGE_SIZE,
    })
    .unwrap();
    assert_eq!(arena.header().page_count as usize, pages);
    arena
}

fn small_config() -> ArenaConfig {
    if cfg!(miri) {
        ArenaConfig {
            size: DATA_OFFSET + 32 * PAGE_SIZE,
            max_message: 4 * PAGE_SIZE,
        }
    } else {
        ArenaConfig {
            size: 16 << 20,
            max_message: 1 << 20,
        }
    }
}

/// A pattern that differs per seed and per position (cheap: one multiply per 8 bytes).
fn pattern(seed: u64, chunk: usize) -> u64 {
    (seed ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(chunk as u64 * 2 + 1)
}

fn fill(buf: &mut [u8], seed: u64) {
    for (i, c) in buf.chunks_mut(8).enumerate() {
        c.copy_from_slice(&pattern(seed, i).to_le_bytes()[..c.len()]);
    }
}

fn verify(buf: &[u8], seed: u64) -> bool {
    let mut words = buf.chunks_exact(8);
    let whole = words
        .by_ref()
        .enumerate()
        .all(|(i, c)| u64::from_le_bytes(c.try_into().unwrap()) == pattern(seed, i));
    let rest = words.remainder();
    whole && rest == &pattern(seed, buf.len() / 8).to_le_bytes()[..rest.len()]
}

fn assert_kind<T: fmt::Debug>(r: Result<T, ArenaError>, kind: ArenaErrorKind) -> ArenaError {
    match r {
        Err(e) => {
            assert_eq!(e.kind(), kind, "{e}");
            assert_eq!(e.code(), kind.code());
            assert!(!e.to_string().is_empty());
            e
        }
        Ok(v) => panic!("expected {kind:?}, got {v:?}"),
    }
}

#[test]
fn lease_types_are_send_sync_static() {
    fn check<T: Send + Sync + 'static>() {}
    check::<Arena>();
    check::<Lease>();
    check::<Handle>();
    check::<ArenaError>();
}

#[test]
fn config_defaults_and_validation() {
    let def = ArenaConfig::default();
    assert_eq!(def.size, 64 << 20);
    assert_eq!(def.max_message, 4 << 20);
    assert_eq!(def.validate().unwrap(), 1023);

    let bad = [
        ArenaConfig {
            max_message: 0,
            ..def
        },
        ArenaConfig {
            max_message: MAX_MESSAGE_LIMIT + 1,
            ..def
        },
        ArenaConfig {
            size: (MAX_ARENA_SIZE + 1) as usize,
            ..def
        },
        // 64 MiB of pages needs 64 MiB + the header page.
        ArenaConfig {
            size: 64 << 20,
            max_message: 64 << 20,
        },
        ArenaConfig {
            size: 100,
            max_message: 10,
        },
        ArenaConfig {
            size: DATA_OFFSET + PAGE_SIZE - 1,
            max_message: 10,
        },
    ];
    for cfg in bad {
        let e = assert_kind(Arena::new(cfg), ArenaErrorKind::Config);
        assert!(e.to_string().starts_with("invalid arena config: "), "{e}");
    }
    let e = ArenaConfig {
        size: 64 << 20,
        max_message: 64 << 20,
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid arena config: size cannot hold the header plus one max_message payload \
         (got 67108864, limit 67112960)"
    );

    // The smallest valid arena: the header and one page.
    let tiny = ArenaConfig {
        size: DATA_OFFSET + PAGE_SIZE,
        max_message: 1,
    };
    assert_eq!(tiny.validate().unwrap(), 1);
    assert_eq!(
        ArenaConfig {
            size: DATA_OFFSET + PAGE_SIZE,
            max_message: PAGE_SIZE,
        }
        .validate()
        .unwrap(),
        1
    );
}

#[test]
fn error_codes_are_stable() {
    use ArenaErrorKind::*;
    let table = [
        (Exhausted, -1),
        (TooLarge, -2),
        (StaleHandle, -3),
        (BadHandle, -4),
        (Config, -5),
        (Internal, -6),
    ];
    for (kind, code) in table {
        assert_eq!(kind.code(), code);
        assert_eq!(ArenaErrorKind::from_code(code), Some(kind));
    }
    assert_eq!(ArenaErrorKind::from_code(0), None);
    assert_eq!(ArenaErrorKind::from_code(-7), None);
}

#[test]
fn header_is_written_at_offset_zero() {
    let arena = Arena::new(small_config()).unwrap();
    let h = arena.header();
    assert_eq!(h.magic, ARENA_MAGIC);
    assert_eq!(h.layout_version, ARENA_LAYOUT_VERSION);
    assert_eq!(h.header_size as usize, size_of::<ArenaHeader>());
    assert_eq!(h.total_size as usize, arena.len());
    assert_eq!(h.data_offset as usize, DATA_OFFSET);
    assert_eq!(h.page_size as usize, PAGE_SIZE);
    assert_eq!(h.granule as usize, GRANULE);
    assert_eq!(h.max_message as usize, arena.max_message());
    assert_eq!(h.class_count as usize, CLASS_SIZES.len());
    assert_eq!(&h.class_size[..CLASS_SIZES.len()], &CLASS_SIZES[..]);
    assert!(h.class_size[CLASS_SIZES.len()..].iter().all(|&c| c == 0));
    assert!(DATA_OFFSET + h.page_count as usize * PAGE_SIZE <= arena.len());

    // SAFETY: the mapping is at least DATA_OFFSET bytes and lives as long as `arena`; no lease
    // exists, so nothing writes the header while we read it. Stands in for Lua reading it.
    let mapped = unsafe { ptr::read(arena.base_ptr().cast::<ArenaHeader>()) };
    assert_eq!(mapped, h);
    // SAFETY: as above, for the first 8 bytes.
    let magic = unsafe { slice::from_raw_parts(arena.base_ptr(), 8) };
    assert_eq!(magic, b"GRPCZCAR");
}

/// A tiny C declaration parser: enough for `typedef struct { uintN_t name[N]; } name;`.
fn cdef_layouts(cdef: &str) -> HashMap<String, (usize, Vec<(String, usize)>)> {
    let mut out = HashMap::new();
    let mut rest = cdef;
    while let Some(start) = rest.find("typedef struct {") {
        let body_start = start + "typedef struct {".len();
        let end = rest[body_start..].find('}').unwrap() + body_start;
        let semi = rest[end..].find(';').unwrap() + end;
        let name = rest[end + 1..semi].trim().to_string();
        let (mut off, mut align) = (0usize, 1usize);
        let mut fields = Vec::new();
        for decl in rest[body_start..end].split(';').map(str::trim) {
            if decl.is_empty() {
                continue;
            }
            let (ty, var) = decl.split_once(char::is_whitespace).unwrap();
            let size = match ty {
                "uint64_t" => 8,
                "uint32_t" => 4,
                other => panic!("unexpected type {other}"),
            };
            let (field, count) = match var.trim().split_once('[') {
                Some((f, n)) => (f, n.trim_end_matches(']').parse::<usize>().unwrap()),
                None => (var.trim(), 1),
            };
            off = off.next_multiple_of(size);
            align = align.max(size);
            fields.push((field.to_string(), off));
            off += size * count;
        }
        out.insert(name, (off.next_multiple_of(align), fields));
        rest = &rest[semi..];
    }
    out
}

/// A struct as (C name, size, [(field, offset)]).
type Layout = (&'static str, usize, Vec<(&'static str, usize)>);

/// Rust's view of the structs in the cdef.
fn rust_layouts() -> Vec<Layout> {
    use std::mem::offset_of;
    vec![
        (
            "grpc_zc_arena_header_t",
            size_of::<ArenaHeader>(),
            vec![
                ("magic", offset_of!(ArenaHeader, magic)),
                ("layout_version", offset_of!(ArenaHeader, layout_version)),
                ("header_size", offset_of!(ArenaHeader, header_size)),
                ("total_size", offset_of!(ArenaHeader, total_size)),
                ("data_offset", offset_of!(ArenaHeader, data_offset)),
                ("page_size", offset_of!(ArenaHeader, page_size)),
                ("page_count", offset_of!(ArenaHeader, page_count)),
                ("granule", offset_of!(ArenaHeader, granule)),
                ("max_message", offset_of!(ArenaHeader, max_message)),
                ("class_count", offset_of!(ArenaHeader, class_count)),
                ("class_size", offset_of!(ArenaHeader, class_size)),
            ],
        ),
        (
            "grpc_zc_handle_t",
            size_of::<Handle>(),
            vec![
                ("offset", offset_of!(Handle, offset)),
                ("len", offset_of!(Handle, len)),
                ("gen", offset_of!(Handle, gen)),
            ],
        ),
        (
            "grpc_zc_arena_stats_t",
            size_of::<Stats>(),
            vec![
                ("bytes_in_use", offset_of!(Stats, bytes_in_use)),
                ("slots_in_use", offset_of!(Stats, slots_in_use)),
                ("high_water_bytes", offset_of!(Stats, high_water_bytes)),
                ("failed_leases", offset_of!(Stats, failed_leases)),
                ("leases_total", offset_of!(Stats, leases_total)),
            ],
        ),
    ]
}

#[test]
fn cdef_matches_the_rust_layouts() {
    let parsed = cdef_layouts(ARENA_HEADER_CDEF);
    let rust = rust_layouts();
    assert_eq!(parsed.len(), rust.len());
    for (name, size, fields) in rust {
        let (csize, cfields) = &parsed[name];
        assert_eq!(*csize, size, "{name}: size");
        let cfields: Vec<(&str, usize)> = cfields.iter().map(|(f, o)| (f.as_str(), *o)).collect();
        assert_eq!(cfields, fields, "{name}: fields");
    }
    let (_, header_fields) = &parsed["grpc_zc_arena_header_t"];
    assert!(ARENA_HEADER_CDEF.contains(&format!("class_size[{HEADER_CLASS_SLOTS_TEXT}]")));
    assert_eq!(header_fields.len(), 11);
}

const HEADER_CLASS_SLOTS_TEXT: usize = layout::HEADER_CLASS_SLOTS;

/// The same check with LuaJIT's own C parser, when `luajit` is installed.
#[test]
#[cfg_attr(miri, ignore = "spawns a process")]
fn cdef_matches_luajit_offsets() {
    let mut script = String::from("local ffi = require 'ffi'\nffi.cdef[[\n");
    script.push_str(ARENA_HEADER_CDEF);
    script.push_str("]]\n");
    let rust = rust_layouts();
    for (name, _, fields) in &rust {
        script.push_str(&format!("print('{name}', ffi.sizeof('{name}'))\n"));
        for (field, _) in fields {
            script.push_str(&format!(
                "print('{name}.{field}', ffi.offsetof('{name}', '{field}'))\n"
            ));
        }
    }
    let out = match std::process::Command::new("luajit")
        .arg("-e")
        .arg(&script)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: luajit not runnable ({e})");
            return;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let got: HashMap<&str, usize> = text
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap();
            (k, v.trim().parse().unwrap())
        })
        .collect();
    for (name, size, fields) in &rust {
        assert_eq!(got[name], *size, "{name}");
        for (field, off) in fields {
            assert_eq!(
                got[format!("{name}.{field}").as_str()],
                *off,
                "{name}.{field}"
            );
        }
    }
}

#[test]
fn leases_get_the_right_class_and_alignment() {
    let arena = Arena::new(small_config()).unwrap();
    let max = arena.max_message();
    let mut lens = vec![
        0, 1, 255, 256, 257, 511, 512, 513, 1000, 4096, 5000, 32767, 32768,
    ];
    lens.extend([
        32769,
        PAGE_SIZE,
        PAGE_SIZE + 1,
        3 * PAGE_SIZE - 7,
        max - 1,
        max,
    ]);
    let mut leases = Vec::new();
    for &len in &lens {
        let lease = arena.lease(len).unwrap();
        let expect = if len <= 32768 {
            *CLASS_SIZES.iter().find(|&&c| c as usize >= len).unwrap() as usize
        } else {
            len.div_ceil(PAGE_SIZE) * PAGE_SIZE
        };
        assert_eq!(lease.capacity(), expect, "len {len}");
        assert_eq!(arena.capacity_for(len).unwrap(), expect);
        assert_eq!(lease.len(), len);
        assert_eq!(lease.as_slice().len(), len);
        let h = lease.handle();
        assert_eq!(h.len as usize, len);
        assert_ne!(h.gen, 0);
        let off = h.offset as usize;
        assert!(off >= DATA_OFFSET && off + lease.capacity() <= arena.len());
        assert_eq!((off - DATA_OFFSET) % GRANULE, 0);
        assert_eq!(lease.as_slice().as_ptr() as usize % GRANULE, 0);
        leases.push(lease);
    }
    // Live slots never overlap.
    let mut spans: Vec<(usize, usize)> = leases
        .iter()
        .map(|l| {
            let o = l.handle().offset as usize;
            (o, o + l.capacity())
        })
        .collect();
    spans.sort();
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "{spans:?}");
    arena.check_invariants();
    drop(leases);
    assert_eq!(arena.stats().slots_in_use, 0);
    assert_kind(arena.lease(max + 1), ArenaErrorKind::TooLarge);
    assert_kind(arena.lease_raw(max + 1), ArenaErrorKind::TooLarge);
    assert_kind(arena.capacity_for(max + 1), ArenaErrorKind::TooLarge);
}

#[test]
fn exhaustion_and_recovery() {
    let arena = arena_with(4, 4);
    let per_page = PAGE_SIZE / 256;
    let mut handles = Vec::new();
    for _ in 0..4 * per_page {
        handles.push(arena.lease_raw(200).unwrap());
    }
    let e = assert_kind(arena.lease_raw(1), ArenaErrorKind::Exhausted);
    assert_eq!(
        e.to_string(),
        format!(
            "arena exhausted: no free slot for a 1-byte lease (needs a 256-byte slot; {0} of {0} \
             bytes in use); release slots or configure a larger arena",
            4 * PAGE_SIZE
        )
    );
    assert_kind(arena.lease(PAGE_SIZE), ArenaErrorKind::Exhausted);
    assert_eq!(arena.stats().failed_leases, 2);
    // Any release makes room again.
    arena.release(handles.pop().unwrap()).unwrap();
    handles.push(arena.lease_raw(256).unwrap());
    assert_kind(arena.lease_raw(1), ArenaErrorKind::Exhausted);
    for h in handles.drain(..) {
        arena.release(h).unwrap();
    }
    arena.check_invariants();
    // The emptied small pages (and the class's spare) are available for one 4-page run.
    let all = arena.lease(4 * PAGE_SIZE).unwrap();
    assert_eq!(all.handle().offset as usize, DATA_OFFSET);
    assert_kind(arena.lease(1), ArenaErrorKind::Exhausted);
    drop(all);
    assert_eq!(arena.stats().bytes_in_use, 0);
    arena.check_invariants();
    // And back to small leases: each class needs a page of its own, so four pages serve at
    // most four classes at a time.
    let mixed: Vec<Lease> = CLASS_SIZES[..4]
        .iter()
        .map(|&c| arena.lease(c as usize).unwrap())
        .collect();
    assert_kind(
        arena.lease(CLASS_SIZES[4] as usize),
        ArenaErrorKind::Exhausted,
    );
    arena.check_invariants();
    drop(mixed);
    arena.check_invariants();
}

#[test]
fn stale_handles_are_refused() {
    let arena = Arena::new(small_config()).unwrap();
    let h = arena.lease_raw(100).unwrap();
    arena.release(h).unwrap();
    let e = assert_kind(arena.release(h), ArenaErrorKind::StaleHandle);
    assert!(e.to_string().contains("released"), "{e}");
    assert_kind(arena.claim(h), ArenaErrorKind::StaleHandle);
    assert_kind(
        arena.copy_out(&h, &mut [0u8; 4]),
        ArenaErrorKind::StaleHandle,
    );

    // The same slot, leased again, has a newer generation.
    let h2 = arena.lease_raw(100).unwrap();
    assert_eq!(h2.offset, h.offset);
    assert_ne!(h2.gen, h.gen);
    let e = assert_kind(arena.release(h), ArenaErrorKind::StaleHandle);
    assert!(e.to_string().contains("newer generation"), "{e}");
    assert_kind(arena.claim(h), ArenaErrorKind::StaleHandle);

    // A claim makes the claimed handle stale; into_handle gives a fresh one.
    let lease = arena.claim(h2).unwrap();
    assert_kind(arena.release(h2), ArenaErrorKind::StaleHandle);
    assert_kind(arena.claim(h2), ArenaErrorKind::StaleHandle);
    let h3 = lease.into_handle();
    assert_eq!(h3.offset, h2.offset);
    assert_ne!(h3.gen, h2.gen);
    assert_kind(arena.release(h2), ArenaErrorKind::StaleHandle);
    arena.release(h3).unwrap();

    // A slot whose page went back to the pool and into a page run.
    let small = arena.lease_raw(10).unwrap();
    arena.release(small).unwrap();
    let _fill: Vec<Lease> = (0..arena.header().page_count)
        .map_while(|_| arena.lease(PAGE_SIZE).ok())
        .collect();
    assert!(matches!(
        arena.release(small).unwrap_err().kind(),
        ArenaErrorKind::StaleHandle | ArenaErrorKind::BadHandle
    ));
    assert_eq!(arena.stats().slots_in_use as usize, _fill.len());
}

#[test]
fn forged_handles_are_refused() {
    let arena = arena_with(8, 4);
    let small = arena.lease_raw(300).unwrap(); // 512-byte class
    let run = arena.lease_raw(2 * PAGE_SIZE).unwrap();
    let end = (DATA_OFFSET + 8 * PAGE_SIZE) as u32;
    let forged = [
        Handle::default(),
        Handle { gen: 0, ..small },
        Handle { offset: 0, ..small },
        Handle {
            offset: 100,
            ..small
        },
        Handle {
            offset: DATA_OFFSET as u32 - 256,
            ..small
        },
        Handle {
            offset: end,
            ..small
        },
        Handle {
            offset: u32::MAX,
            ..small
        },
        Handle {
            offset: small.offset + 1,
            ..small
        },
        Handle {
            offset: small.offset + 8,
            ..small
        },
        // Mid-object: 256 is a granule but not a 512-class object start.
        Handle {
            offset: small.offset + 256,
            ..small
        },
        Handle { len: 513, ..small },
        Handle {
            len: u32::MAX,
            ..small
        },
        Handle {
            offset: run.offset + PAGE_SIZE as u32,
            ..run
        },
        Handle {
            offset: run.offset + 256,
            ..run
        },
        Handle {
            len: 2 * PAGE_SIZE as u32 + 1,
            ..run
        },
        // A page nothing was ever leased on.
        Handle {
            offset: DATA_OFFSET as u32 + 3 * PAGE_SIZE as u32,
            ..run
        },
    ];
    for f in forged {
        let e = assert_kind(arena.release(f), ArenaErrorKind::BadHandle);
        assert!(e.to_string().starts_with("bad arena handle"), "{e}");
        assert_kind(arena.claim(f), ArenaErrorKind::BadHandle);
        assert_kind(arena.copy_out(&f, &mut [0u8; 8]), ArenaErrorKind::BadHandle);
    }
    // A wrong generation on a live slot is stale, not bad.
    assert_kind(
        arena.release(Handle {
            gen: small.gen + 1,
            ..small
        }),
        ArenaErrorKind::StaleHandle,
    );
    // A handle of a slot a Rust lease owns cannot free it behind the lease's back.
    let lease = arena.lease(64).unwrap();
    let e = assert_kind(arena.release(lease.handle()), ArenaErrorKind::BadHandle);
    assert!(e.to_string().contains("Rust lease"), "{e}");
    assert_kind(arena.claim(lease.handle()), ArenaErrorKind::BadHandle);
    // A shorter committed length is fine.
    let lease2 = arena.claim(Handle { len: 17, ..small }).unwrap();
    assert_eq!(lease2.len(), 17);
    assert_eq!(lease2.capacity(), 512);
    let h = lease.into_handle();
    arena.release(h).unwrap();
    drop(lease2);
    arena.release(run).unwrap();
    assert_eq!(arena.stats().slots_in_use, 0);
    arena.check_invariants();
}

#[test]
fn round_trip_through_handles_keeps_the_bytes() {
    let arena = Arena::new(small_config()).unwrap();
    let big = if cfg!(miri) { 70_000 } else { 200_000 };
    for (i, len) in [0usize, 1, 100, 5000, 40_000, big].into_iter().enumerate() {
        // The runtime writes a reply and hands it to Lua...
        let mut lease = arena.lease(len).unwrap();
        fill(lease.as_mut_slice(), i as u64);
        let h = lease.into_handle();
        assert_eq!(h.len as usize, len);
        // ...Lua reads it (here through copy_out) and posts it back...
        // (Under miri only a prefix: every atomically read byte costs it a clock.)
        let room = if cfg!(miri) { len.min(3000) } else { len + 3 };
        let mut copy = vec![0u8; room];
        let n = arena.copy_out(&h, &mut copy).unwrap();
        assert_eq!(n, len.min(room));
        assert!(verify(&copy[..n], i as u64));
        // ...and the runtime claims it.
        let lease = arena.claim(h).unwrap();
        assert!(verify(lease.as_slice(), i as u64));
        assert!(verify(lease.as_ref(), i as u64));
    }
    assert_eq!(arena.stats().slots_in_use, 0);
}

#[test]
fn set_len_and_capacity_slice() {
    let arena = Arena::new(small_config()).unwrap();
    let mut lease = arena.lease(10).unwrap();
    assert_eq!(lease.as_mut_capacity_slice().len(), 256);
    lease.as_mut_capacity_slice()[..200].fill(7);
    lease.set_len(200).unwrap();
    assert_eq!(lease.as_slice(), &[7u8; 200][..]);
    assert_kind(lease.set_len(257), ArenaErrorKind::TooLarge);
    lease.set_len(0).unwrap();
    assert!(lease.is_empty());
    assert_eq!(lease.into_handle().len, 0);
}

#[test]
fn big_messages_use_page_runs() {
    let config = if cfg!(miri) {
        small_config()
    } else {
        ArenaConfig::default()
    };
    let arena = Arena::new(config).unwrap();
    let max = arena.max_message();
    let mut a = arena.lease(max).unwrap();
    assert_eq!(a.capacity(), max);
    fill(a.as_mut_slice(), 1);
    let mut b = arena.lease(max - 12345).unwrap();
    fill(b.as_mut_slice(), 2);
    assert!(verify(a.as_slice(), 1));
    assert!(verify(b.as_slice(), 2));
    let span = |l: &Lease| {
        let o = l.handle().offset as usize;
        o..o + l.capacity()
    };
    assert!(span(&a).end <= span(&b).start || span(&b).end <= span(&a).start);
    assert_kind(arena.lease(max + 1), ArenaErrorKind::TooLarge);
    drop((a, b));
    arena.check_invariants();
}

#[test]
#[cfg_attr(miri, ignore = "a 64 MiB mapping is too slow under miri")]
fn largest_configurable_message() {
    let arena = Arena::new(ArenaConfig {
        size: DATA_OFFSET + MAX_MESSAGE_LIMIT,
        max_message: MAX_MESSAGE_LIMIT,
    })
    .unwrap();
    let mut lease = arena.lease(MAX_MESSAGE_LIMIT).unwrap();
    let bytes = lease.as_mut_slice();
    bytes[0] = 1;
    bytes[MAX_MESSAGE_LIMIT - 1] = 2;
    assert_kind(arena.lease(1), ArenaErrorKind::Exhausted);
    drop(lease);
    assert!(arena.lease(1).is_ok());
}

#[test]
fn freed_runs_coalesce() {
    let arena = arena_with(8, 8);
    let runs: Vec<Handle> = (0..4)
        .map(|_| arena.lease_raw(2 * PAGE_SIZE).unwrap())
        .collect();
    for (i, h) in runs.iter().enumerate() {
        assert_eq!(h.offset as usize, DATA_OFFSET + 2 * i * PAGE_SIZE);
    }
    assert_kind(arena.lease_raw(1), ArenaErrorKind::Exhausted);
    // Two non-adjacent free runs: 4 free pages, but no 4-page hole.
    arena.release(runs[0]).unwrap();
    arena.release(runs[2]).unwrap();
    assert_kind(arena.lease_raw(4 * PAGE_SIZE), ArenaErrorKind::Exhausted);
    // Freeing the run between them joins all three into one 6-page hole.
    arena.release(runs[1]).unwrap();
    let six = arena.lease_raw(6 * PAGE_SIZE).unwrap();
    assert_eq!(six.offset as usize, DATA_OFFSET);
    arena.release(six).unwrap();
    // First fit: a 3-page run goes to the lowest hole that fits.
    let three = arena.lease_raw(3 * PAGE_SIZE).unwrap();
    assert_eq!(three.offset as usize, DATA_OFFSET);
    arena.release(three).unwrap();
    arena.release(runs[3]).unwrap();
    let all = arena.lease_raw(8 * PAGE_SIZE).unwrap();
    arena.release(all).unwrap();
    arena.check_invariants();
    assert_eq!(arena.stats().bytes_in_use, 0);
}

#[test]
fn stats_track_use() {
    let arena = arena_with(4, 2);
    assert_eq!(arena.stats(), Stats::default());
    let a = arena.lease(100).unwrap();
    let b = arena.lease_raw(1000).unwrap();
    let c = arena.lease(PAGE_SIZE + 1).unwrap();
    let s = arena.stats();
    assert_eq!(s.slots_in_use, 3);
    assert_eq!(s.bytes_in_use, (256 + 1024 + 2 * PAGE_SIZE) as u64);
    assert_eq!(s.high_water_bytes, s.bytes_in_use);
    assert_eq!(s.leases_total, 3);
    assert_eq!(s.failed_leases, 0);
    drop(c);
    assert_kind(arena.lease(3 * PAGE_SIZE), ArenaErrorKind::TooLarge);
    let s = arena.stats();
    assert_eq!(s.slots_in_use, 2);
    assert_eq!(s.bytes_in_use, 256 + 1024);
    assert_eq!(s.high_water_bytes, (256 + 1024 + 2 * PAGE_SIZE) as u64);
    assert_eq!(s.failed_leases, 1);
    // Claims move ownership; they are not new leases.
    let b = arena.claim(b).unwrap();
    assert_eq!(arena.stats().leases_total, 3);
    assert_eq!(arena.stats().slots_in_use, 2);
    drop((a, b));
    let s = arena.stats();
    assert_eq!((s.slots_in_use, s.bytes_in_use), (0, 0));
    arena.check_invariants();
}

#[test]
fn bytes_from_owner_releases_on_last_drop() {
    let arena = Arena::new(small_config()).unwrap();
    let mut lease = arena.lease(3000).unwrap();
    fill(lease.as_mut_slice(), 9);
    let ptr = lease.as_slice().as_ptr();
    let bytes = bytes::Bytes::from_owner(lease);
    assert_eq!(bytes.as_ptr(), ptr, "no copy");
    let part = bytes.slice(10..20);
    drop(bytes);
    assert_eq!(arena.stats().slots_in_use, 1);
    let t = thread::spawn(move || {
        assert_eq!(part.len(), 10);
        drop(part);
    });
    t.join().unwrap();
    assert_eq!(arena.stats().slots_in_use, 0);
}

#[test]
fn copy_out_tolerates_concurrent_foreign_writes() {
    let arena = Arena::new(small_config()).unwrap();
    let len = 4099;
    let h = arena.lease_raw(len).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Stands in for Lua: writes its own slot while Rust copies it out. It uses atomic stores so
    // the test itself has no data race in Rust's model (LuaJIT's plain stores are outside it).
    let writer = {
        let stop = stop.clone();
        let arena = arena.clone();
        thread::spawn(move || {
            let mut v = 0u8;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..len {
                    let p = arena.base_ptr().wrapping_add(h.offset as usize + i);
                    // SAFETY: the slot [offset, offset + len) is inside the mapping, which this
                    // thread's `arena` keeps alive; every access to it in this test is atomic
                    // (byte-sized, like the arena's racy reads).
                    unsafe { AtomicU8::from_ptr(p) }.store(v, Ordering::Relaxed);
                }
                v = v.wrapping_add(1);
                if cfg!(miri) {
                    break;
                }
            }
        })
    };
    let mut buf = vec![0u8; len];
    for _ in 0..if cfg!(miri) { 2 } else { 200 } {
        assert_eq!(arena.copy_out(&h, &mut buf).unwrap(), len);
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    arena.copy_out(&h, &mut buf).unwrap();
    assert!(
        buf.windows(2).all(|w| w[0] == w[1]),
        "quiescent copy is consistent"
    );
    arena.release(h).unwrap();
}

/// Several threads lease, write a pattern, verify and release, and hand slots to each other as
/// raw handles (as Lua and the runtime do), while the main thread does the same.
#[test]
fn concurrent_lease_write_verify_release() {
    let arena = Arena::new(small_config()).unwrap();
    let threads = 3;
    let iters = if cfg!(miri) { 40 } else { 20_000 };
    let max = arena.max_message();
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..=threads)
        .map(|_| mpsc::channel::<(Handle, u64)>())
        .unzip();
    let work = move |id: usize,
                     arena: Arena,
                     rx: mpsc::Receiver<(Handle, u64)>,
                     txs: Vec<mpsc::Sender<(Handle, u64)>>| {
        let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ ((id as u64 + 1) * 0x9E37_79B9);
        let mut exhausted = 0u64;
        for i in 0..iters {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Under miri, shorter messages: it checks every byte written and read.
            let (big, mid, small) = if cfg!(miri) {
                (max.min(8192), 4096, 256)
            } else {
                (max, 32768, 1024)
            };
            let len = match rng % 16 {
                0 => (rng >> 8) as usize % big,
                1..=4 => (rng >> 8) as usize % mid,
                _ => (rng >> 8) as usize % small,
            };
            let seed = (id as u64) << 32 | i as u64;
            match arena.lease(len) {
                Ok(mut lease) => {
                    fill(lease.as_mut_slice(), seed);
                    assert!(verify(lease.as_slice(), seed));
                    if rng.is_multiple_of(4) {
                        // Post it to another thread as a raw handle.
                        let to = (rng >> 40) as usize % txs.len();
                        let _ = txs[to].send((lease.into_handle(), seed));
                    }
                }
                Err(e) => {
                    assert_eq!(e.kind(), ArenaErrorKind::Exhausted, "{e}");
                    exhausted += 1;
                }
            }
            while let Ok((h, seed)) = rx.try_recv() {
                let lease = arena.claim(h).unwrap();
                assert!(verify(lease.as_slice(), seed));
                assert_kind(arena.release(h), ArenaErrorKind::StaleHandle);
            }
        }
        drop(txs);
        (rx, exhausted)
    };
    let mut joins = Vec::new();
    let mut rxs = rxs.into_iter();
    let main_rx = rxs.next().unwrap();
    for (id, rx) in rxs.enumerate() {
        let (arena, txs, work) = (arena.clone(), txs.clone(), work);
        joins.push(thread::spawn(move || work(id + 1, arena, rx, txs)));
    }
    let (main_rx, _) = work(0, arena.clone(), main_rx, txs);
    let leftovers: Vec<_> = joins.into_iter().map(|j| j.join().unwrap().0).collect();
    // Drain handles posted after their receiver finished.
    for rx in leftovers.iter().chain([&main_rx]) {
        while let Ok((h, seed)) = rx.try_recv() {
            assert!(verify(arena.claim(h).unwrap().as_slice(), seed));
        }
    }
    let s = arena.stats();
    assert_eq!((s.slots_in_use, s.bytes_in_use), (0, 0), "{s:?}");
    assert!(s.leases_total > 0);
    arena.check_invariants();
}

/// Lease + release latency, printed (not asserted). Run with
/// `cargo test --release -p resty_grpc_zc --lib arena::tests::latency -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; prints figures"]
fn latency() {
    use std::time::Instant;
    let arena = Arena::new(ArenaConfig::default()).unwrap();
    let n = 2_000_000u32;
    let time = |name: &str, n: u32, f: &mut dyn FnMut()| {
        for _ in 0..n / 10 {
            f();
        }
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        println!("{name:<44} {ns:>7.1} ns");
    };
    // Keep some slots live so the lists and bitmaps are not trivially empty.
    let _background: Vec<Lease> = (0..2000)
        .map(|i| arena.lease(1 + i * 37 % 20_000).unwrap())
        .chain((0..20).map(|i| arena.lease(100_000 + i * 1000).unwrap()))
        .collect();
    time("lease(100) + drop", n, &mut || {
        drop(arena.lease(100).unwrap())
    });
    time("lease(4000) + drop", n, &mut || {
        drop(arena.lease(4000).unwrap())
    });
    time("lease_raw(100) + release", n, &mut || {
        arena.release(arena.lease_raw(100).unwrap()).unwrap()
    });
    time("lease(100 KiB) + drop (page run)", n, &mut || {
        drop(arena.lease(100_000).unwrap())
    });
    time("lease(4 MiB) + drop (page run)", n / 10, &mut || {
        drop(arena.lease(4 << 20).unwrap())
    });
    time("lease(100) + into_handle + claim + drop", n, &mut || {
        drop(
            arena
                .claim(arena.lease(100).unwrap().into_handle())
                .unwrap(),
        )
    });
    let big = arena.lease_raw(100_000).unwrap();
    let mut buf = vec![0u8; 100_000];
    time(
        "copy_out(100 KB) (byte-wise atomic loads)",
        n / 100,
        &mut || {
            arena.copy_out(&big, &mut buf).unwrap();
        },
    );
    arena.release(big).unwrap();
    for threads in [2usize, 4] {
        let t = Instant::now();
        let per = n as usize / threads;
        let joins: Vec<_> = (0..threads)
            .map(|_| {
                let arena = arena.clone();
                thread::spawn(move || {
                    for _ in 0..per {
                        drop(arena.lease(100).unwrap());
                    }
                })
            })
            .collect();
        joins.into_iter().for_each(|j| j.join().unwrap());
        let ns = t.elapsed().as_nanos() as f64 / (per * threads) as f64;
        println!("lease(100) + drop, {threads} threads contending      {ns:>7.1} ns (wall / op)");
    }
}

#[test]
fn range_of_finds_sub_slices_of_the_lease_and_nothing_else() {
    let arena = arena_with(4, 1);
    let mut lease = arena.lease(64).unwrap();
    lease.as_mut_slice()[8..12].copy_from_slice(&5u32.to_le_bytes());
    let other = arena.lease(64).unwrap();
    let b = lease.as_slice();
    assert_eq!(lease.range_of(&b[12..20]), Some(12..20));
    assert_eq!(lease.range_of(b), Some(0..64));
    assert_eq!(lease.range_of(&b[64..]), Some(64..64));
    assert_eq!(lease.range_of(&other.as_slice()[..4]), None);
    assert_eq!(lease.range_of(&[1, 2, 3]), None);
    assert_eq!(lease.u32_at(8), Some(5));
    assert_eq!(lease.u32_at(60), Some(0));
    assert_eq!(lease.u32_at(61), None);
    assert_eq!(lease.u32_at(usize::MAX), None);
}

#[test]
fn range_of_refuses_a_slice_that_runs_past_the_committed_length() {
    let arena = arena_with(4, 1);
    let mut lease = arena.lease(256).unwrap();
    let slot = lease.as_mut_capacity_slice().as_ptr();
    lease.set_len(16).unwrap();
    // SAFETY: `slot` is the start of the lease's slot, whose 256-byte capacity is initialized
    // mapping memory kept alive by `lease`; nothing writes it while `past` is read.
    let past = unsafe { std::slice::from_raw_parts(slot, 32) };
    assert_eq!(lease.range_of(&past[8..16]), Some(8..16));
    assert_eq!(lease.range_of(&past[8..17]), None);
}
