//! The `cfg` string of `libffi_init`: `module[?],func[,rest]`.
//!
//! Safe Rust only; it knows nothing about Python or the host.

use std::fmt;

/// What one `ngx.load_ffi` asks the loader to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The module to import, a dotted name (`ffi.echo`).
    pub module: String,
    /// The folder of a module given as a path (`/srv/app/echo.py` → `/srv/app`): put first on
    /// `sys.path` before importing.
    pub dir: Option<String>,
    /// A trailing `?`: reload the module when it was imported before (hot reload).
    pub reload: bool,
    /// The function called as `func(cfg, tq)`.
    pub func: String,
    /// Everything after the second `,` (commas included, bytes as given), handed to `func` as
    /// a pointer to a NUL-terminated copy; `None`: no second `,`, the pointer is 0 (NULL).
    pub rest: Option<Vec<u8>>,
}

/// Why a cfg string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CfgError {
    /// NULL or empty.
    Missing,
    /// No `,func` after the module.
    NoFunc,
    /// The module part is empty (after removing `?`, the folder and `.py`).
    EmptyModule,
    /// The function part is empty or not an identifier.
    BadFunc(String),
    /// The module or function part is not UTF-8.
    NotUtf8,
}

impl fmt::Display for CfgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CfgError::Missing => write!(f, "cfg is missing (want \"module[?],func[,rest]\")"),
            CfgError::NoFunc => write!(f, "cfg has no function (want \"module[?],func[,rest]\")"),
            CfgError::EmptyModule => write!(f, "cfg names no module"),
            CfgError::BadFunc(func) => write!(f, "bad function name {func:?}"),
            CfgError::NotUtf8 => write!(f, "module and function names must be UTF-8"),
        }
    }
}

impl std::error::Error for CfgError {}

impl Spec {
    /// Parses `module[?],func[,rest]`, lua-resty-ffi's syntax: the module part up to the first
    /// `,`, the function up to the second, the rest untouched. A module containing `/` is a
    /// path: the part up to the last `/` is its folder, the part after it the module name
    /// (a `.py` suffix is dropped). Spaces around the module and the function are ignored.
    pub fn parse(cfg: Option<&[u8]>) -> Result<Spec, CfgError> {
        let cfg = cfg.filter(|c| !c.is_empty()).ok_or(CfgError::Missing)?;
        let mut parts = cfg.splitn(3, |&b| b == b',');
        let module = utf8(parts.next().unwrap_or_default())?.trim();
        let func = utf8(parts.next().ok_or(CfgError::NoFunc)?)?.trim();
        let rest = parts.next().map(<[u8]>::to_vec);

        let (module, reload) = match module.strip_suffix('?') {
            Some(m) => (m.trim_end(), true),
            None => (module, false),
        };
        let (dir, module) = match module.rfind('/') {
            // "/echo.py" lives in "/".
            Some(0) => (Some("/".to_owned()), &module[1..]),
            Some(i) => (Some(module[..i].to_owned()), &module[i + 1..]),
            None => (None, module),
        };
        let module = module.strip_suffix(".py").unwrap_or(module);
        if module.is_empty() {
            return Err(CfgError::EmptyModule);
        }
        let identifier = func
            .chars()
            .next()
            .is_some_and(|c| c == '_' || c.is_alphabetic())
            && func.chars().all(|c| c == '_' || c.is_alphanumeric());
        if !identifier {
            return Err(CfgError::BadFunc(func.to_owned()));
        }
        Ok(Spec {
            module: module.to_owned(),
            dir,
            reload,
            func: func.to_owned(),
            rest,
        })
    }
}

fn utf8(part: &[u8]) -> Result<&str, CfgError> {
    std::str::from_utf8(part).map_err(|_| CfgError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(cfg: &[u8]) -> Result<Spec, CfgError> {
        Spec::parse(Some(cfg))
    }

    fn spec(module: &str, dir: Option<&str>, reload: bool, func: &str, rest: Option<&str>) -> Spec {
        Spec {
            module: module.into(),
            dir: dir.map(Into::into),
            reload,
            func: func.into(),
            rest: rest.map(|r| r.as_bytes().to_vec()),
        }
    }

    #[test]
    fn the_articles_cfg() {
        assert_eq!(
            p(b"ffi.echo?,init").unwrap(),
            spec("ffi.echo", None, true, "init", None)
        );
    }

    #[test]
    fn rest_is_kept_verbatim() {
        assert_eq!(
            p(br#"kafka,init,{"a": 1, "b": [2,3]}"#).unwrap(),
            spec(
                "kafka",
                None,
                false,
                "init",
                Some(r#"{"a": 1, "b": [2,3]}"#)
            )
        );
        assert_eq!(p(b"m,f,").unwrap(), spec("m", None, false, "f", Some("")));
    }

    #[test]
    fn paths() {
        assert_eq!(
            p(b"/srv/app/echo.py?,init").unwrap(),
            spec("echo", Some("/srv/app"), true, "init", None)
        );
        assert_eq!(
            p(b"rel/dir/pkg.mod,go,x").unwrap(),
            spec("pkg.mod", Some("rel/dir"), false, "go", Some("x"))
        );
        assert_eq!(
            p(b"/top.py,init").unwrap(),
            spec("top", Some("/"), false, "init", None)
        );
    }

    #[test]
    fn spaces() {
        assert_eq!(
            p(b" ffi.echo ? , init , a b ").unwrap(),
            spec("ffi.echo", None, true, "init", Some(" a b "))
        );
    }

    #[test]
    fn errors() {
        assert_eq!(Spec::parse(None), Err(CfgError::Missing));
        assert_eq!(p(b""), Err(CfgError::Missing));
        assert_eq!(p(b"ffi.echo"), Err(CfgError::NoFunc));
        assert_eq!(p(b"?,init"), Err(CfgError::EmptyModule));
        assert_eq!(p(b"/srv/,init"), Err(CfgError::EmptyModule));
        assert_eq!(p(b".py,init"), Err(CfgError::EmptyModule));
        assert_eq!(p(b"m,"), Err(CfgError::BadFunc(String::new())));
        assert_eq!(p(b"m,a.b"), Err(CfgError::BadFunc("a.b".into())));
        assert_eq!(p(b"m,1f"), Err(CfgError::BadFunc("1f".into())));
        assert_eq!(p(b"m\xff,f"), Err(CfgError::NotUtf8));
        // The rest is bytes, whatever they are.
        assert_eq!(
            p(b"m,f,\xff,\x01").unwrap().rest.as_deref(),
            Some(&b"\xff,\x01"[..])
        );
    }
}
