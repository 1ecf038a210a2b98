//! `just bench`'s second limit: each file given (an uncompressed layer tar)
//! compressed once by imgbuild's own deflate (`pgzip`, the level the layers
//! use) on THREADS threads, the output thrown away. Prints the seconds.
//!
//! Usage: deflate_limit THREADS FILE...

use std::fs::File;
use std::io::{self, BufReader};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let threads: usize = args
        .next()
        .ok_or("usage: deflate_limit THREADS FILE...")?
        .parse()?;
    let files: Vec<String> = args.collect();
    let start = Instant::now();
    for f in &files {
        let file = File::open(f).map_err(|e| format!("{f}: {e}"))?;
        let len = file.metadata()?.len();
        let mut r = BufReader::with_capacity(1 << 20, file);
        imgbuild::pgzip::write(
            io::sink(),
            None::<io::Sink>,
            imgbuild::GZIP_LEVEL,
            threads,
            |s| s.content(&mut r, len),
            |e| e,
        )
        .map_err(|e| format!("{f}: {e}"))?;
    }
    println!("{:.3}", start.elapsed().as_secs_f64());
    Ok(())
}
