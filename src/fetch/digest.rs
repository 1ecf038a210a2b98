//! Streaming sha256/sha512, chosen by a pin's checksum.

use sha2::{Digest, Sha256, Sha512};

use crate::manifest::Checksum;

pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn for_checksum(c: &Checksum) -> Hasher {
        match c {
            Checksum::Sha256(_) => Hasher::Sha256(Sha256::new()),
            Checksum::Sha512(_) => Hasher::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

pub fn algo(c: &Checksum) -> &'static str {
    match c {
        Checksum::Sha256(_) => "sha256",
        Checksum::Sha512(_) => "sha512",
    }
}

pub fn hex_of(c: &Checksum) -> &str {
    match c {
        Checksum::Sha256(h) | Checksum::Sha512(h) => h,
    }
}
