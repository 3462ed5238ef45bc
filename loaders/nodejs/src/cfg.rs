//! The `cfg` of `ngx.load_ffi("ffi_nodejs", cfg)`: `module[?],func[,rest]`.

use std::fmt;

/// What `libffi_init` is asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Given to Node's `require` (a name found through `node_modules` folders and `NODE_PATH`,
    /// or a path).
    pub module: String,
    /// A trailing `?`: drop the module from `require.cache` first, so a changed file is read
    /// again (hot reload).
    pub reload: bool,
    /// The exported function called as `func(rest, tq)`.
    pub func: String,
    /// Everything after the second comma, verbatim (commas included); `None` without it.
    pub rest: Option<String>,
}

/// Why a cfg was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCfg(String);

impl fmt::Display for BadCfg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad cfg {:?}: want \"module[?],func[,rest]\" (for instance \"echo,init\")",
            self.0
        )
    }
}

impl Spec {
    pub fn parse(cfg: &str) -> Result<Spec, BadCfg> {
        let bad = || BadCfg(cfg.to_owned());
        let (module, after) = cfg.split_once(',').ok_or_else(bad)?;
        let (func, rest) = match after.split_once(',') {
            Some((f, r)) => (f, Some(r.to_owned())),
            None => (after, None),
        };
        let module = module.trim();
        let (module, reload) = match module.strip_suffix('?') {
            Some(m) => (m.trim_end(), true),
            None => (module, false),
        };
        let func = func.trim();
        if module.is_empty() || func.is_empty() {
            return Err(bad());
        }
        Ok(Spec {
            module: module.to_owned(),
            reload,
            func: func.to_owned(),
            rest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(module: &str, reload: bool, func: &str, rest: Option<&str>) -> Spec {
        Spec {
            module: module.into(),
            reload,
            func: func.into(),
            rest: rest.map(Into::into),
        }
    }

    #[test]
    fn forms() {
        assert_eq!(
            Spec::parse("echo,init").unwrap(),
            spec("echo", false, "init", None)
        );
        assert_eq!(
            Spec::parse("demo/echo?,init").unwrap(),
            spec("demo/echo", true, "init", None)
        );
        assert_eq!(
            Spec::parse(" /srv/rt/x.js ? , start ,a=1,b=2").unwrap(),
            spec("/srv/rt/x.js", true, "start", Some("a=1,b=2"))
        );
        assert_eq!(
            Spec::parse("m,f,").unwrap(),
            spec("m", false, "f", Some(""))
        );
    }

    #[test]
    fn refused() {
        for bad in ["", "echo", ",init", "echo,", "?,init", " , ", "echo, ,x"] {
            assert!(Spec::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Spec::parse("x")
            .unwrap_err()
            .to_string()
            .contains("module[?],func[,rest]"));
    }
}
