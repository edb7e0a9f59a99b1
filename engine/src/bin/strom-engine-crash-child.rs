//! Test helper for `tests/crash_kill.rs`: appends to a real partition on
//! O_DIRECT files forever, printing one line per acknowledged append, until
//! it is killed with SIGKILL. Not part of the product.
//!
//! Usage: strom-engine-crash-child DIR SEED
//! Output lines: `ack <durability> <base_offset> <next_offset> <payload_crc32c>`

use std::io::Write;
use std::path::PathBuf;

use bytes::BytesMut;
use glommio::{LocalExecutorBuilder, Placement};
use strom_engine::{Durability, LogConfig, Partition};
use strom_flatbuffers::{BatchBuilder, RecordIn, FRAME_HEADER_BYTES};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(seed)) = (args.next(), args.next()) else {
        eprintln!("usage: strom-engine-crash-child DIR SEED");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir);
    let seed: u64 = seed.parse().unwrap_or(1);
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move {
            let config = LogConfig {
                segment_bytes: 4 << 20,
                frame_bytes_max: 1 << 20,
                checkpoint_interval_bytes: 1 << 20,
                ..LogConfig::default()
            };
            let p = match Partition::open(&dir, config).await {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("open failed: {e}");
                    std::process::exit(3);
                }
            };
            let mut tasks = Vec::new();
            for t in 0..8u64 {
                let p = p.clone();
                tasks.push(glommio::spawn_local(async move {
                    let durability = if t % 2 == 0 {
                        Durability::Durable
                    } else {
                        Durability::Written
                    };
                    let mut n = 0u64;
                    loop {
                        n += 1;
                        let mut b = BatchBuilder::new();
                        let records = 1 + (seed + n + t) % 5;
                        for i in 0..records {
                            let len = ((seed * 31 + n * 7 + i) % 3000) as usize;
                            let value = vec![(n + i + t) as u8; len];
                            b.push(&RecordIn {
                                timestamp_ms: n as i64,
                                key: Some(format!("{t}-{n}").as_bytes()),
                                value: Some(&value),
                                headers: &[],
                            });
                        }
                        let frame = b.finish();
                        let crc = crc32c::crc32c(&frame[FRAME_HEADER_BYTES..]);
                        match p.append(BytesMut::from(&frame[..]), durability).await {
                            Ok(info) => {
                                let mut out = std::io::stdout().lock();
                                let _ = writeln!(
                                    out,
                                    "ack {:?} {} {} {crc}",
                                    durability,
                                    info.base_offset,
                                    info.last_offset + 1
                                );
                                let _ = out.flush();
                            }
                            Err(e) => {
                                eprintln!("append failed: {e}");
                                std::process::exit(4);
                            }
                        }
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
        });
    match ex {
        Ok(h) => {
            let _ = h.join();
        }
        Err(e) => {
            eprintln!("executor failed to start: {e}");
            std::process::exit(5);
        }
    }
}
