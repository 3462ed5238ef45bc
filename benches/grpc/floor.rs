//! The machine's floor: the round trip of one byte between two threads over loopback TCP, on
//! one vCPU and across two; every hop between threads adds at least this to a call.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use testkit::bench::median;

use crate::placement::pin_thread;

/// Round trips per ping-pong measurement.
const PING_PONGS: usize = 10_000;

/// µs per round trip on one vCPU and across two, medians of three measurements each.
pub struct Floor {
    pub same: f64,
    pub cross: f64,
}

impl Floor {
    /// Measures it (and leaves the calling thread allowed on every CPU).
    pub fn measure() -> Floor {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (mut same, mut cross) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            same.push(ping_pong([0, 0]));
            cross.push(ping_pong([0, 1 % cpus]));
        }
        Floor {
            same: median(same),
            cross: median(cross),
        }
    }
}

/// µs per round trip of one byte between two threads over loopback TCP (TCP_NODELAY,
/// blocking sockets): `cpus` are the vCPUs of the two threads.
fn ping_pong(cpus: [usize; 2]) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        pin_thread(&[cpus[1]]);
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() {
            s.write_all(&b).unwrap();
        }
    });
    let all: Vec<usize> =
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    pin_thread(&[cpus[0]]);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut b = [0u8; 1];
    let mut trip = |s: &mut TcpStream| {
        s.write_all(&b).unwrap();
        s.read_exact(&mut b).unwrap();
    };
    for _ in 0..100 {
        trip(&mut s);
    }
    let t0 = Instant::now();
    for _ in 0..PING_PONGS {
        trip(&mut s);
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / PING_PONGS as f64;
    drop(s);
    echo.join().unwrap();
    pin_thread(&all);
    us
}
