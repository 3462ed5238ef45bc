//! Compiles the Java side (`java/resty/ffi/*.java`) with Debian's javac and embeds the class
//! files: `$OUT_DIR/classes.rs` lists them as `(binary name, bytes)` in an order where every
//! class comes after its superclass and interfaces, so the loader can define them one by one.
//!
//! javac is `$RESTY_JAVAC` when set, else `/usr/lib/jvm/default-java/bin/javac` (Debian's
//! default-jdk-headless): never whatever `javac` is first on PATH.

use std::collections::{BTreeMap, BTreeSet};
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_JAVAC: &str = "/usr/lib/jvm/default-java/bin/javac";
/// Class files for Java 11 and later (javac 17 writes them with `--release 11`).
const JAVA_RELEASE: &str = "11";

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let src_dir = manifest.join("java/resty/ffi");
    println!("cargo:rerun-if-changed=java");
    // Named by its SONAME (Debian keeps libraries in the system folder only with one;
    // `ngx.load_ffi("ffi_java")` opens it by that name).
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libffi_java.so");
    println!("cargo:rerun-if-env-changed=RESTY_JAVAC");

    let mut sources: Vec<PathBuf> = fs::read_dir(&src_dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", src_dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "java"))
        .collect();
    sources.sort();

    let classes = out.join("classes");
    let _ = fs::remove_dir_all(&classes);
    fs::create_dir_all(&classes).expect("creating the class directory");
    let javac = env::var("RESTY_JAVAC").unwrap_or_else(|_| DEFAULT_JAVAC.to_owned());
    let status = Command::new(&javac)
        .args([
            "--release",
            JAVA_RELEASE,
            "-Xlint:all",
            "-Werror",
            "-encoding",
            "UTF-8",
        ])
        .arg("-d")
        .arg(&classes)
        .args(&sources)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "running {javac}: {e}; install Debian's default-jdk-headless \
                 (scripts/deps.sh does) or set RESTY_JAVAC"
            )
        });
    assert!(status.success(), "{javac} failed: {status}");

    let mut found = Vec::new();
    collect_class_files(&classes, &mut found);
    let mut by_name = BTreeMap::new();
    for path in found {
        let bytes = fs::read(&path).expect("reading a class file");
        let info = parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        by_name.insert(info.name.clone(), (path, info));
    }

    // Supertypes first (depth-first over the names in this set).
    let mut order = Vec::new();
    let mut placed = BTreeSet::new();
    let names: Vec<String> = by_name.keys().cloned().collect();
    for name in &names {
        place(name, &by_name, &mut placed, &mut order, 0);
    }

    let mut code = String::from(
        "/// The Java side's class files (binary name, bytes), supertypes first.\n\
         pub(crate) static CLASSES: &[(&str, &[u8])] = &[\n",
    );
    for name in &order {
        let (path, _) = &by_name[name];
        code.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    code.push_str("];\n");
    fs::write(out.join("classes.rs"), code).expect("writing classes.rs");
}

fn collect_class_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("reading the class directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect_class_files(&path, found);
        } else if path.extension().is_some_and(|x| x == "class") {
            found.push(path);
        }
    }
}

fn place(
    name: &str,
    by_name: &BTreeMap<String, (PathBuf, ClassInfo)>,
    placed: &mut BTreeSet<String>,
    order: &mut Vec<String>,
    depth: usize,
) {
    assert!(depth < 64, "class hierarchy cycle at {name}");
    if placed.contains(name) {
        return;
    }
    let Some((_, info)) = by_name.get(name) else {
        return; // a platform class
    };
    for sup in &info.supertypes {
        place(sup, by_name, placed, order, depth + 1);
    }
    placed.insert(name.to_owned());
    order.push(name.to_owned());
}

/// What the loader needs from a class file: its internal name and its direct supertypes.
struct ClassInfo {
    name: String,
    supertypes: Vec<String>,
}

/// Reads the constant pool far enough to name `this_class`, `super_class` and the interfaces
/// (JVMS §4.1, §4.4).
fn parse(b: &[u8]) -> Result<ClassInfo, String> {
    let mut r = Reader { b, pos: 0 };
    if r.u4()? != 0xCAFE_BABE {
        return Err("not a class file".into());
    }
    r.skip(4)?; // minor, major
    let count = r.u2()? as usize;
    let mut utf8: Vec<Option<String>> = vec![None; count];
    let mut class_name_index = vec![0u16; count];
    let mut i = 1;
    while i < count {
        let tag = r.u1()?;
        match tag {
            1 => {
                let len = r.u2()? as usize;
                let s = r.take(len)?;
                utf8[i] = Some(String::from_utf8_lossy(s).into_owned());
            }
            7 => class_name_index[i] = r.u2()?,
            8 | 16 | 19 | 20 => r.skip(2)?,
            15 => r.skip(3)?,
            3 | 4 | 9 | 10 | 11 | 12 | 17 | 18 => r.skip(4)?,
            5 | 6 => {
                r.skip(8)?;
                i += 1; // takes two slots
            }
            t => return Err(format!("unknown constant pool tag {t}")),
        }
        i += 1;
    }
    let class_name = |idx: u16| -> Result<String, String> {
        let name_idx = *class_name_index
            .get(idx as usize)
            .ok_or("bad class index")? as usize;
        utf8.get(name_idx)
            .cloned()
            .flatten()
            .ok_or_else(|| "bad class name index".to_string())
    };
    r.skip(2)?; // access flags
    let name = class_name(r.u2()?)?;
    let mut supertypes = Vec::new();
    let sup = r.u2()?;
    if sup != 0 {
        supertypes.push(class_name(sup)?);
    }
    for _ in 0..r.u2()? {
        supertypes.push(class_name(r.u2()?)?);
    }
    Ok(ClassInfo { name, supertypes })
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).ok_or("overflow")?;
        let s = self.b.get(self.pos..end).ok_or("truncated class file")?;
        self.pos = end;
        Ok(s)
    }
    fn skip(&mut self, n: usize) -> Result<(), String> {
        self.take(n).map(|_| ())
    }
    fn u1(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u2(&mut self) -> Result<u16, String> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u4(&mut self) -> Result<u32, String> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
}
