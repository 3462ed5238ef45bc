//! Conformance of the Lua protobuf codec (`lua/resty/grpc_zc/pb.lua`) against prost.
//!
//! ```text
//! t/proto/pbtest*.proto ─protox (resty_grpc_zc::proto::compile)─► FileDescriptorSet
//! seeded RNG ─► prost-reflect DynamicMessage ─┬─ prost encode ─► bytes ─┐
//!                                             └─ Lua table literal ─────┤ one luajit process
//!   lua/t/test_pb_conformance.lua: decode bytes → T1, encode T1 → B1;   │ for all cases
//!   literal → T2 (checks T1 == T2), size + encode_into T2 → B2 ◄────────┘
//! prost decodes B1 and B2; both must equal the original message
//! ```
//!
//! Plus canonical edge cases (extreme integers, NaN/inf, signed zero, empty and large strings,
//! unknown enum numbers), where the Lua encoding must also be byte-identical to prost's.
//!
//! Set `PB_SEED` to replay a seed and `PB_CASES` to change the number of random cases.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use prost::Message;
use prost_reflect::{
    Cardinality, DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, Syntax, Value,
};

const MAX_DEPTH: u32 = 3;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn descriptor_set() -> Vec<u8> {
    resty_grpc_zc::proto::compile(
        &["pbtest.proto", "pbtest2.proto"],
        &[repo().join("t/proto")],
    )
    .expect("t/proto compiles")
}

/// Random messages with a bias towards edge values.
struct Gen {
    rng: fastrand::Rng,
}

impl Gen {
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.rng.usize(..xs.len())]
    }

    fn i64(&mut self) -> i64 {
        match self.rng.u8(..8) {
            0 => self.pick(&[
                0,
                1,
                -1,
                i64::MIN,
                i64::MAX,
                1 << 53,
                -(1 << 53),
                (1 << 53) + 1,
                -(1 << 53) - 1,
                (1 << 53) - 1,
                i64::from(i32::MIN),
                i64::from(u32::MAX),
            ]),
            1..=3 => self.rng.i64(-300..300),
            4 => self.rng.i64(..) >> self.rng.u32(..63),
            _ => self.rng.i64(..),
        }
    }

    fn u64(&mut self) -> u64 {
        match self.rng.u8(..8) {
            0 => self.pick(&[
                0,
                1,
                u64::MAX,
                1 << 53,
                (1 << 53) + 1,
                (1 << 53) - 1,
                1 << 63,
            ]),
            1..=3 => self.rng.u64(..300),
            4 => self.rng.u64(..) >> self.rng.u32(..64),
            _ => self.rng.u64(..),
        }
    }

    fn i32(&mut self) -> i32 {
        match self.rng.u8(..6) {
            0 => self.pick(&[0, 1, -1, i32::MIN, i32::MAX, 127, 128, -128]),
            1..=3 => self.rng.i32(-300..300),
            _ => self.rng.i32(..),
        }
    }

    fn u32(&mut self) -> u32 {
        match self.rng.u8(..6) {
            0 => self.pick(&[0, 1, u32::MAX, 127, 128, 16383, 16384]),
            1..=3 => self.rng.u32(..300),
            _ => self.rng.u32(..),
        }
    }

    fn f64(&mut self) -> f64 {
        match self.rng.u8(..6) {
            0 => self.pick(&[
                0.0,
                -0.0,
                1.5,
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::MIN_POSITIVE,
                5e-324,
                f64::MAX,
                f64::MIN,
                9007199254740993.0,
            ]),
            1 | 2 => self.rng.f64() * 1e6 - 5e5,
            3 => f64::from(self.rng.i32(-1000..1000)),
            _ => f64::from_bits(self.rng.u64(..)),
        }
    }

    fn f32(&mut self) -> f32 {
        match self.rng.u8(..6) {
            0 => self.pick(&[
                0.0,
                -0.0,
                0.1,
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::MIN_POSITIVE,
                1e-45,
                f32::MAX,
                f32::MIN,
            ]),
            1 | 2 => self.rng.f32() * 1e4 - 5e3,
            3 => self.rng.i16(..).into(),
            _ => f32::from_bits(self.rng.u32(..)),
        }
    }

    fn string(&mut self) -> String {
        const POOL: &[char] = &[
            'a', 'z', ' ', '"', '\\', '\n', '\0', 'é', '中', '😀', '\u{7f}',
        ];
        let n = match self.rng.u8(..20) {
            0 => 0,
            1 => self.rng.usize(100..3000),
            _ => self.rng.usize(..16),
        };
        (0..n)
            .map(|_| {
                if self.rng.bool() {
                    self.rng.alphanumeric()
                } else {
                    self.pick(POOL)
                }
            })
            .collect()
    }

    fn bytes(&mut self) -> Vec<u8> {
        let n = match self.rng.u16(..500) {
            0 => self.rng.usize(60_000..120_000),
            1..=30 => 0,
            _ => self.rng.usize(..40),
        };
        let mut v = vec![0; n];
        self.rng.fill(&mut v);
        v
    }

    fn scalar(&mut self, kind: &Kind, open_enums: bool) -> Value {
        match kind {
            Kind::Double => Value::F64(self.f64()),
            Kind::Float => Value::F32(self.f32()),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(self.i32()),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(self.i64()),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(self.u32()),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(self.u64()),
            Kind::Bool => Value::Bool(self.rng.bool()),
            Kind::String => Value::String(self.string()),
            Kind::Bytes => Value::Bytes(self.bytes().into()),
            Kind::Enum(e) => {
                if open_enums && self.rng.u8(..10) == 0 {
                    Value::EnumNumber(self.rng.i32(-100..100))
                } else {
                    let values: Vec<i32> = e.values().map(|v| v.number()).collect();
                    Value::EnumNumber(self.pick(&values))
                }
            }
            Kind::Message(_) => unreachable!("not a scalar"),
        }
    }

    fn map_key(&mut self, kind: &Kind) -> MapKey {
        match self.scalar(kind, false) {
            Value::Bool(b) => MapKey::Bool(b),
            Value::I32(v) => MapKey::I32(v),
            Value::I64(v) => MapKey::I64(v),
            Value::U32(v) => MapKey::U32(v),
            Value::U64(v) => MapKey::U64(v),
            Value::String(s) => MapKey::String(s),
            v => unreachable!("map key {v:?}"),
        }
    }

    fn value(&mut self, kind: &Kind, depth: u32, open_enums: bool) -> Value {
        match kind {
            Kind::Message(m) => Value::Message(self.message(m, depth + 1)),
            k => self.scalar(k, open_enums),
        }
    }

    fn message(&mut self, desc: &MessageDescriptor, depth: u32) -> DynamicMessage {
        let open_enums = desc.parent_file().syntax() == Syntax::Proto3;
        let mut m = DynamicMessage::new(desc.clone());
        for field in desc.fields() {
            let required = field.cardinality() == Cardinality::Required;
            if !required && self.rng.u8(..10) < 4 {
                continue;
            }
            let nested = matches!(field.kind(), Kind::Message(_));
            if nested && depth >= MAX_DEPTH && !required {
                continue;
            }
            let v = if field.is_map() {
                let Kind::Message(entry) = field.kind() else {
                    unreachable!()
                };
                let (kf, vf) = (entry.map_entry_key_field(), entry.map_entry_value_field());
                let mut map = HashMap::new();
                for _ in 0..self.rng.usize(..4) {
                    if matches!(vf.kind(), Kind::Message(_)) && depth >= MAX_DEPTH {
                        break;
                    }
                    let k = self.map_key(&kf.kind());
                    // prost leaves a map value equal to the default out of the entry, and
                    // -0.0 == 0.0: it would come back as 0.0.
                    let v = match self.value(&vf.kind(), depth, open_enums) {
                        Value::F64(x) => Value::F64(x + 0.0), // -0.0 + 0.0 == +0.0
                        Value::F32(x) => Value::F32(x + 0.0),
                        v => v,
                    };
                    map.insert(k, v);
                }
                Value::Map(map)
            } else if field.is_list() {
                let n = if self.rng.u8(..30) == 0 {
                    self.rng.usize(100..400)
                } else {
                    self.rng.usize(..5)
                };
                let n = if nested { n.min(4) } else { n };
                Value::List(
                    (0..n)
                        .map(|_| self.value(&field.kind(), depth, open_enums))
                        .collect(),
                )
            } else {
                self.value(&field.kind(), depth, open_enums)
            };
            m.set_field(&field, v);
        }
        m
    }
}

// ---- the Lua literal of a message -----------------------------------------------------------

fn lua_string(out: &mut String, bytes: &[u8]) {
    out.push('"');
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b == b' ' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\{b:03}");
        }
    }
    out.push('"');
}

fn lua_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("(0/0)");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "(1/0)" } else { "(-1/0)" });
    } else {
        let _ = write!(out, "({v:?})");
    }
}

const SAFE: i64 = 1 << 53;

fn lua_i64(out: &mut String, v: i64) {
    if v > -SAFE && v < SAFE {
        let _ = write!(out, "{v}");
    } else {
        // Exact in LuaJIT's int64 arithmetic, even for i64::MIN.
        let _ = write!(
            out,
            "({}LL * 4294967296LL + {}LL)",
            v >> 32,
            v & 0xffff_ffff
        );
    }
}

fn lua_u64(out: &mut String, v: u64) {
    if v < SAFE as u64 {
        let _ = write!(out, "{v}");
    } else {
        let _ = write!(out, "{v}ULL");
    }
}

fn lua_value(out: &mut String, kind: &Kind, v: &Value) {
    match v {
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::I32(x) => {
            let _ = write!(out, "{x}");
        }
        Value::U32(x) => {
            let _ = write!(out, "{x}");
        }
        Value::I64(x) => lua_i64(out, *x),
        Value::U64(x) => lua_u64(out, *x),
        Value::F32(x) => lua_f64(out, f64::from(*x)),
        Value::F64(x) => lua_f64(out, *x),
        Value::String(s) => lua_string(out, s.as_bytes()),
        Value::Bytes(b) => lua_string(out, b),
        Value::EnumNumber(n) => {
            let Kind::Enum(e) = kind else { unreachable!() };
            match e.get_value(*n) {
                Some(ev) => lua_string(out, ev.name().as_bytes()),
                None => {
                    let _ = write!(out, "{n}");
                }
            }
        }
        Value::Message(m) => lua_message(out, m),
        Value::List(items) => {
            out.push('{');
            for item in items {
                lua_value(out, kind, item);
                out.push(',');
            }
            out.push('}');
        }
        Value::Map(map) => {
            let Kind::Message(entry) = kind else {
                unreachable!()
            };
            let vf = entry.map_entry_value_field();
            out.push('{');
            for (k, v) in map {
                out.push('[');
                match k {
                    MapKey::Bool(b) => {
                        let _ = write!(out, "{b}");
                    }
                    MapKey::I32(x) => {
                        let _ = write!(out, "{x}");
                    }
                    MapKey::U32(x) => {
                        let _ = write!(out, "{x}");
                    }
                    // 64-bit keys beyond 2^53 decode as decimal strings (see docs/protobuf.md).
                    MapKey::I64(x) if *x > -SAFE && *x < SAFE => {
                        let _ = write!(out, "{x}");
                    }
                    MapKey::U64(x) if *x < SAFE as u64 => {
                        let _ = write!(out, "{x}");
                    }
                    MapKey::I64(x) => {
                        let _ = write!(out, "\"{x}\"");
                    }
                    MapKey::U64(x) => {
                        let _ = write!(out, "\"{x}\"");
                    }
                    MapKey::String(s) => lua_string(out, s.as_bytes()),
                }
                out.push_str("]=");
                lua_value(out, &vf.kind(), v);
                out.push(',');
            }
            out.push('}');
        }
    }
}

fn lua_message(out: &mut String, m: &DynamicMessage) {
    out.push('{');
    for (field, v) in m.fields() {
        out.push('[');
        lua_string(out, field.name().as_bytes());
        out.push_str("]=");
        lua_value(out, &field.kind(), v);
        out.push(',');
    }
    out.push('}');
}

// ---- comparison (NaN equals NaN, floats otherwise bit for bit) ------------------------------

fn eq_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
        (Value::Message(x), Value::Message(y)) => eq_message(x, y),
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| eq_value(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| eq_value(v, w)))
        }
        (x, y) => x == y,
    }
}

fn eq_message(a: &DynamicMessage, b: &DynamicMessage) -> bool {
    let fa: Vec<_> = a.fields().collect();
    let fb: Vec<_> = b.fields().collect();
    fa.len() == fb.len()
        && fa
            .iter()
            .all(|(f, v)| b.has_field(f) && eq_value(v, &b.get_field(f)))
        && a.unknown_fields().count() == 0
        && b.unknown_fields().count() == 0
}

/// NaNs decode to LuaJIT's canonical NaN (payload and sign are not kept): such messages are
/// compared as values, not byte for byte.
fn has_nan(v: &Value) -> bool {
    match v {
        Value::F64(x) => x.is_nan(),
        Value::F32(x) => x.is_nan(),
        Value::Message(m) => has_nan_msg(m),
        Value::List(l) => l.iter().any(has_nan),
        Value::Map(m) => m.values().any(has_nan),
        _ => false,
    }
}

fn has_nan_msg(m: &DynamicMessage) -> bool {
    m.fields().any(|(_, v)| has_nan(v))
}

// ---- running the Lua side -------------------------------------------------------------------

struct Case {
    desc: MessageDescriptor,
    msg: DynamicMessage,
    /// The Lua encoding must equal prost's byte for byte (no maps: their order is free).
    exact: bool,
}

fn put_blob(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap().to_le_bytes());
    out.extend_from_slice(b);
}

fn take_blob<'a>(inp: &mut &'a [u8]) -> &'a [u8] {
    let n = u32::from_le_bytes(inp[..4].try_into().unwrap()) as usize;
    let b = &inp[4..4 + n];
    *inp = &inp[4 + n..];
    b
}

fn hex(b: &[u8]) -> String {
    b.iter().take(200).map(|x| format!("{x:02x}")).collect()
}

/// Runs every case through one luajit process; returns the failures.
fn run_lua(name: &str, fds: &[u8], cases: &[Case]) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("pb_conformance-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (fds_path, cases_path, out_path) = (
        dir.join("fds.bin"),
        dir.join("cases.bin"),
        dir.join("out.bin"),
    );
    std::fs::write(&fds_path, fds).unwrap();
    let mut input = Vec::new();
    for c in cases {
        put_blob(&mut input, c.desc.full_name().as_bytes());
        put_blob(&mut input, &c.msg.encode_to_vec());
        let mut lit = String::new();
        lua_message(&mut lit, &c.msg);
        put_blob(&mut input, lit.as_bytes());
    }
    std::fs::write(&cases_path, &input).unwrap();
    let script = repo().join("lua/t/test_pb_conformance.lua");
    let out = Command::new("luajit")
        .arg(&script)
        .args([&fds_path, &cases_path, &out_path])
        .output()
        .expect("luajit runs (apt-get install luajit2)");
    assert!(
        out.status.success(),
        "luajit failed ({}; inputs kept in {}): {}\n{}",
        out.status,
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result = std::fs::read(&out_path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let mut inp = result.as_slice();
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let status = u32::from_le_bytes(inp[..4].try_into().unwrap());
        inp = &inp[4..];
        let what = || {
            let mut lit = String::new();
            lua_message(&mut lit, &c.msg);
            lit.truncate(600);
            format!("case {i} ({}): {lit}", c.desc.full_name())
        };
        if status != 0 {
            let err = String::from_utf8_lossy(take_blob(&mut inp)).into_owned();
            failures.push(format!("{}\n  lua: {err}", what()));
            continue;
        }
        let prost_bytes = c.msg.encode_to_vec();
        for (label, b) in [
            ("re-encoded", take_blob(&mut inp)),
            ("from literal", take_blob(&mut inp)),
        ] {
            match DynamicMessage::decode(c.desc.clone(), b) {
                Ok(m) if eq_message(&m, &c.msg) => {
                    if c.exact && !has_nan_msg(&c.msg) && b != prost_bytes.as_slice() {
                        failures.push(format!(
                            "{}\n  {label}: bytes differ from prost's\n  lua   {}\n  prost {}",
                            what(),
                            hex(b),
                            hex(&prost_bytes)
                        ));
                    }
                }
                Ok(m) => failures.push(format!("{}\n  {label}: decodes to {m:?}", what())),
                Err(e) => failures.push(format!("{}\n  {label}: prost cannot decode: {e}", what())),
            }
        }
    }
    assert!(inp.is_empty(), "trailing output from the Lua side");
    failures
}

fn check(failures: Vec<String>) {
    if !failures.is_empty() {
        let shown: Vec<_> = failures.iter().take(5).cloned().collect();
        panic!(
            "{} failures, first ones:\n{}",
            failures.len(),
            shown.join("\n")
        );
    }
}

fn pool(fds: &[u8]) -> DescriptorPool {
    DescriptorPool::decode(fds).expect("descriptor set decodes")
}

fn has_map(desc: &MessageDescriptor, depth: u32) -> bool {
    depth < 8
        && desc
            .fields()
            .any(|f| f.is_map() || matches!(f.kind(), Kind::Message(m) if has_map(&m, depth + 1)))
}

#[test]
fn random_messages_round_trip_through_lua() {
    let fds = descriptor_set();
    let pool = pool(&fds);
    let seed = std::env::var("PB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let n: usize = std::env::var("PB_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    eprintln!("pb_conformance: seed {seed} (PB_SEED={seed} replays it), {n} cases");
    let mut g = Gen {
        rng: fastrand::Rng::with_seed(seed),
    };
    let names = [
        "pbtest.All",
        "pbtest.All",
        "pbtest.Scalars",
        "pbtest.Repeated",
        "pbtest.Maps",
        "pbtest.Oneofs",
        "pbtest.Optionals",
        "pbtest.Nested",
        "pbtest2.P2",
        "pbtest2.P2",
    ];
    let cases: Vec<Case> = (0..n)
        .map(|i| {
            let desc = pool.get_message_by_name(names[i % names.len()]).unwrap();
            let msg = g.message(&desc, 0);
            let exact = !has_map(&desc, 0);
            Case { desc, msg, exact }
        })
        .collect();
    check(run_lua("random", &fds, &cases));
}

fn one(cases: &mut Vec<Case>, desc: &MessageDescriptor, fields: &[(&str, Value)]) {
    let mut m = DynamicMessage::new(desc.clone());
    for (name, v) in fields {
        let f = desc
            .get_field_by_name(name)
            .unwrap_or_else(|| panic!("{name}"));
        m.set_field(&f, v.clone());
    }
    cases.push(Case {
        desc: desc.clone(),
        exact: !has_map(desc, 0),
        msg: m,
    });
}

#[test]
fn canonical_edge_cases() {
    let fds = descriptor_set();
    let pool = pool(&fds);
    let scalars = pool.get_message_by_name("pbtest.Scalars").unwrap();
    let repeated = pool.get_message_by_name("pbtest.Repeated").unwrap();
    let optionals = pool.get_message_by_name("pbtest.Optionals").unwrap();
    let p2 = pool.get_message_by_name("pbtest2.P2").unwrap();
    let all = pool.get_message_by_name("pbtest.All").unwrap();
    let mut cases = Vec::new();
    // Negative int32: a 10-byte varint. Extremes of every integer type.
    one(&mut cases, &scalars, &[("f_int32", Value::I32(-1))]);
    one(
        &mut cases,
        &scalars,
        &[
            ("f_int32", Value::I32(i32::MIN)),
            ("f_sint32", Value::I32(i32::MIN)),
        ],
    );
    one(
        &mut cases,
        &scalars,
        &[
            ("f_int32", Value::I32(i32::MAX)),
            ("f_sint32", Value::I32(i32::MAX)),
        ],
    );
    for v in [
        i64::MIN,
        i64::MAX,
        -1,
        (1 << 53) + 1,
        -(1 << 53) - 1,
        1 << 53,
        -(1 << 53),
    ] {
        one(
            &mut cases,
            &scalars,
            &[
                ("f_int64", Value::I64(v)),
                ("f_sint64", Value::I64(v)),
                ("f_sfixed64", Value::I64(v)),
            ],
        );
    }
    for v in [u64::MAX, 1 << 63, (1 << 53) + 1, 1 << 53] {
        one(
            &mut cases,
            &scalars,
            &[("f_uint64", Value::U64(v)), ("f_fixed64", Value::U64(v))],
        );
    }
    one(
        &mut cases,
        &scalars,
        &[
            ("f_uint32", Value::U32(u32::MAX)),
            ("f_fixed32", Value::U32(u32::MAX)),
            ("f_sfixed32", Value::I32(i32::MIN)),
        ],
    );
    // Floats: NaN, infinities, subnormals; -0.0 has presence only in `optional` fields.
    for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 5e-324, f64::MAX] {
        one(
            &mut cases,
            &scalars,
            &[
                ("f_double", Value::F64(v)),
                ("f_float", Value::F32(v as f32)),
            ],
        );
    }
    one(
        &mut cases,
        &optionals,
        &[
            ("p_double", Value::F64(-0.0)),
            ("p_float", Value::F32(-0.0)),
        ],
    );
    // Presence: zero values of `optional` fields are written, proto3 implicit ones are not.
    one(
        &mut cases,
        &optionals,
        &[
            ("p_int32", Value::I32(0)),
            ("p_string", Value::String(String::new())),
            ("p_enum", Value::EnumNumber(0)),
            ("p_bool", Value::Bool(false)),
            ("p_uint64", Value::U64(0)),
            ("p_bytes", Value::Bytes(Vec::new().into())),
        ],
    );
    // Unknown enum number (open proto3 enum), negative enum value.
    one(&mut cases, &scalars, &[("f_enum", Value::EnumNumber(77))]);
    one(&mut cases, &scalars, &[("f_enum", Value::EnumNumber(-3))]);
    one(
        &mut cases,
        &repeated,
        &[
            (
                "r_enum",
                Value::List(vec![Value::EnumNumber(-3), Value::EnumNumber(99)]),
            ),
            (
                "u_enum",
                Value::List(vec![Value::EnumNumber(1), Value::EnumNumber(-50)]),
            ),
            (
                "u_sint64",
                Value::List(vec![Value::I64(i64::MIN), Value::I64(-1)]),
            ),
        ],
    );
    // Strings: empty list elements, NUL bytes, 4-byte UTF-8, a 200 KB bytes field.
    one(
        &mut cases,
        &repeated,
        &[
            (
                "r_string",
                Value::List(vec![
                    Value::String(String::new()),
                    Value::String("a\0b😀".into()),
                ]),
            ),
            (
                "r_bytes",
                Value::List(vec![Value::Bytes(vec![0; 3].into())]),
            ),
        ],
    );
    one(
        &mut cases,
        &scalars,
        &[("f_bytes", Value::Bytes(vec![0xa5; 200_000].into()))],
    );
    // Large field numbers (5-byte tags), proto2 defaults and groups.
    one(
        &mut cases,
        &all,
        &[
            ("far", Value::String("far away".into())),
            ("mid", Value::I32(-2)),
        ],
    );
    one(&mut cases, &p2, &[("req", Value::I32(0))]);
    cases.push(Case {
        desc: all.clone(),
        msg: DynamicMessage::new(all.clone()),
        exact: true,
    });
    check(run_lua("edge", &fds, &cases));
}
