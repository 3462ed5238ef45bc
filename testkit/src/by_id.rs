//! The echo-by-id locations the runtime tests share (the host's echo runtime and each
//! language's): `GET /id?id=N[&...]` answers with [`payload_of`]`(N)`, so calls started before
//! a reload or a quit can each be checked after it; `POST /body` echoes its body.

use std::thread::{self, JoinHandle};

use crate::{Client, Nginx, Resp};

/// A call running on a thread of its own.
pub type Call = JoinHandle<Result<Resp, String>>;

/// What `/id?id=N` answers.
pub fn payload_of(id: usize) -> Vec<u8> {
    crate::payload(id % 3000, id % 256)
}

/// `count` calls of `/id?id={1000 + i}&{query}`, each on a thread of its own.
pub fn start(n: &Nginx, count: usize, query: &str) -> Vec<Call> {
    (0..count)
        .map(|i| {
            let url = n.url(&format!("/id?id={}&{query}", 1000 + i));
            thread::spawn(move || Client::new().get(&url))
        })
        .collect()
}

/// Every call of [`start`] was answered (`what`: what the calls were to survive), with 200
/// and its id's payload.
pub fn assert_answered(calls: Vec<Call>, what: &str) {
    for (i, c) in calls.into_iter().enumerate() {
        let r = c.join().unwrap().expect(what);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.body == payload_of(1000 + i));
    }
}

/// Bodies of 1 byte, 1,000 bytes and 16 MiB posted to `path` come back byte for byte.
pub fn assert_bodies_echo(n: &Nginx, path: &str) {
    for size in [1usize, 1000, 16 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 256) as u8).collect();
        let r = n.post(path, &data);
        assert_eq!(r.status, 200);
        assert!(r.body == data, "{path}: body differs at size {size}");
    }
}
