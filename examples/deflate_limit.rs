//! `just bench`'s second limit: each file given (an uncompressed layer tar)
//! compressed once by imgbuild's own compressor (`pgzip`: deflate, or zstd
//! with `zstd` first, at the level the layers use) on THREADS threads, the
//! output thrown away. Prints the seconds.
//!
//! Usage: deflate_limit [gzip|zstd] THREADS FILE...

use std::fs::File;
use std::io::{self, BufReader};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    let how = match args.peek().map(String::as_str) {
        Some("zstd") => imgbuild::pgzip::Compression::Zstd,
        Some("gzip") => imgbuild::pgzip::Compression::Gzip,
        _ => imgbuild::pgzip::Compression::Gzip,
    };
    if args.peek().is_some_and(|a| a == "zstd" || a == "gzip") {
        args.next();
    }
    let threads: usize = args
        .next()
        .ok_or("usage: deflate_limit [gzip|zstd] THREADS FILE...")?
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
            how,
            threads,
            |s| s.content(&mut r, len),
            |e| e,
        )
        .map_err(|e| format!("{f}: {e}"))?;
    }
    println!("{:.3}", start.elapsed().as_secs_f64());
    Ok(())
}
