//! What the language loaders (`loaders/python`, `loaders/java`) share, so each does not carry
//! its own copy: [`signals::Blocked`], nginx's signals blocked on the thread that starts an
//! embedded runtime's threads.

pub mod signals;
