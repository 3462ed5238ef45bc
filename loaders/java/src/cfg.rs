//! The cfg string: `pkg.Class[?],method[,rest]`.
//!
//! - `pkg.Class` is a binary class name (`a.b.Outer$Inner`; `/` is accepted for `.`);
//! - a trailing `?` loads the class afresh, in a new class loader, each time (hot reload with
//!   `unpin = true`);
//! - `method` names `static int method(String cfg, long tq)`;
//! - `rest`, everything after the second comma (commas included), is the `cfg` the method gets;
//!   `""` when absent.

use std::fmt;

/// A parsed cfg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cfg {
    /// Binary name with dots (`rt.Echo`, `a.Outer$Inner`).
    pub class: String,
    /// Load the class in a new class loader (the `?` suffix).
    pub fresh: bool,
    /// The static init method's name.
    pub method: String,
    /// What the init method gets as its `String cfg`.
    pub rest: String,
}

/// Why a cfg was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CfgError {
    /// No class name before the first comma.
    NoClass,
    /// No `,method` after the class.
    NoMethod,
    /// The class name has a character Java does not allow there.
    BadClass(String),
    /// The method name is not a Java identifier.
    BadMethod(String),
}

impl fmt::Display for CfgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CfgError::NoClass => write!(f, "no class: expected pkg.Class[?],method[,cfg]"),
            CfgError::NoMethod => write!(f, "no method: expected pkg.Class[?],method[,cfg]"),
            CfgError::BadClass(c) => write!(f, "bad class name {c:?}"),
            CfgError::BadMethod(m) => write!(f, "bad method name {m:?}"),
        }
    }
}

impl std::error::Error for CfgError {}

impl Cfg {
    /// Parses `pkg.Class[?],method[,rest]`.
    pub fn parse(text: &str) -> Result<Cfg, CfgError> {
        let (class, after) = text.split_once(',').unwrap_or((text, ""));
        let (method, rest) = match after.split_once(',') {
            Some((m, r)) => (m, r),
            None => (after, ""),
        };
        let (class, fresh) = match class.strip_suffix('?') {
            Some(c) => (c, true),
            None => (class, false),
        };
        if class.is_empty() {
            return Err(CfgError::NoClass);
        }
        if method.is_empty() {
            return Err(CfgError::NoMethod);
        }
        let class = class.replace('/', ".");
        let segment_ok = |s: &str| {
            let mut chars = s.chars();
            chars
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_' || c == '$')
                && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
        };
        if !class.split('.').all(segment_ok) {
            return Err(CfgError::BadClass(class));
        }
        if !segment_ok(method) {
            return Err(CfgError::BadMethod(method.to_owned()));
        }
        Ok(Cfg {
            class,
            fresh,
            method: method.to_owned(),
            rest: rest.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(class: &str, fresh: bool, method: &str, rest: &str) -> Cfg {
        Cfg {
            class: class.into(),
            fresh,
            method: method.into(),
            rest: rest.into(),
        }
    }

    #[test]
    fn forms() {
        assert_eq!(
            Cfg::parse("demo.Echo,init"),
            Ok(cfg("demo.Echo", false, "init", ""))
        );
        assert_eq!(
            Cfg::parse("demo.Echo?,init,"),
            Ok(cfg("demo.Echo", true, "init", ""))
        );
        assert_eq!(
            Cfg::parse("a/b/C$D,start,x=1,y=2"),
            Ok(cfg("a.b.C$D", false, "start", "x=1,y=2"))
        );
        assert_eq!(Cfg::parse("Top,init"), Ok(cfg("Top", false, "init", "")));
    }

    #[test]
    fn refusals() {
        assert_eq!(Cfg::parse(""), Err(CfgError::NoClass));
        assert_eq!(Cfg::parse("?,init"), Err(CfgError::NoClass));
        assert_eq!(Cfg::parse("demo.Echo"), Err(CfgError::NoMethod));
        assert_eq!(Cfg::parse("demo.Echo,"), Err(CfgError::NoMethod));
        assert!(matches!(
            Cfg::parse("demo..Echo,init"),
            Err(CfgError::BadClass(_))
        ));
        assert!(matches!(
            Cfg::parse("demo.1Echo,init"),
            Err(CfgError::BadClass(_))
        ));
        assert!(matches!(
            Cfg::parse("demo.Echo,in it"),
            Err(CfgError::BadMethod(_))
        ));
    }
}
