//! What the language loaders (`loaders/python`, `loaders/java`, `loaders/nodejs`) share, so
//! each does not carry its own copy: [`signals::Blocked`], nginx's signals blocked on the
//! thread that starts an embedded runtime's threads (Python, Java), and [`pin`], the loader
//! and the library it embeds kept loaded for the worker's life (all three).

pub mod pin;
pub mod signals;
