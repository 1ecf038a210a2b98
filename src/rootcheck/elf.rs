//! What an ELF file needs from the root it runs in: takes a file's bytes
//! and, for a dynamically linked executable or shared library of the
//! node's machine, gives its `DT_NEEDED` libraries, its `DT_RUNPATH` (or
//! `DT_RPATH`) directories and its program interpreter. Anything else (not
//! ELF, another machine, a kernel module or object file, a static binary
//! with nothing to find) needs nothing.

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader as _, SectionHeader as _};

use crate::manifest::Arch;

/// What one ELF needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Needs {
    /// `DT_NEEDED`, in order.
    pub(crate) libraries: Vec<String>,
    /// `DT_RUNPATH`, else `DT_RPATH`, split at `:` (`$ORIGIN` unexpanded).
    pub(crate) runpath: Vec<String>,
    /// `PT_INTERP` (an executable's dynamic loader).
    pub(crate) interpreter: Option<String>,
}

/// Whether `head` (a file's first bytes) starts an ELF file.
pub(crate) fn is_elf(head: &[u8]) -> bool {
    head.starts_with(&elf::ELFMAG)
}

/// The ELF machine of a node's arch.
fn machine(arch: Arch) -> u16 {
    match arch {
        Arch::Amd64 => elf::EM_X86_64,
        Arch::Arm64 => elf::EM_AARCH64,
    }
}

/// What the ELF file `data` needs on `arch`; `None` when it needs nothing
/// that can be checked (or is no ELF this check reads).
pub(crate) fn needs(data: &[u8], arch: Arch) -> Option<Needs> {
    // e_ident[EI_CLASS], the fifth byte
    if data.get(4) == Some(&elf::ELFCLASS64) {
        parse::<elf::FileHeader64<object::Endianness>>(data, arch)
    } else {
        parse::<elf::FileHeader32<object::Endianness>>(data, arch)
    }
}

fn parse<Elf: FileHeader<Endian = object::Endianness>>(data: &[u8], arch: Arch) -> Option<Needs> {
    let header = Elf::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let kind = header.e_type(endian);
    if header.e_machine(endian) != machine(arch) || !matches!(kind, elf::ET_EXEC | elf::ET_DYN) {
        return None;
    }
    let mut needs = Needs::default();
    for ph in header.program_headers(endian, data).ok()? {
        if let Ok(Some(interp)) = ph.interpreter(endian, data) {
            needs.interpreter = Some(String::from_utf8_lossy(interp).into_owned());
        }
    }
    let sections = header.sections(endian, data).ok()?;
    let mut rpath = Vec::new();
    if let Some(section) = sections
        .iter()
        .find(|s| s.sh_type(endian) == elf::SHT_DYNAMIC)
        && let Ok(Some(table)) = section.dynamic_table(endian, data, &sections)
    {
        for d in table.iter() {
            let Ok(value) = table.string(d) else {
                continue;
            };
            let value = String::from_utf8_lossy(value).into_owned();
            match d.tag {
                elf::DT_NEEDED => needs.libraries.push(value),
                elf::DT_RUNPATH => needs.runpath.extend(split_path(&value)),
                elf::DT_RPATH => rpath.extend(split_path(&value)),
                _ => {}
            }
        }
    }
    // ld.so ignores DT_RPATH when the object has a DT_RUNPATH
    if needs.runpath.is_empty() {
        needs.runpath = rpath;
    }
    (needs.interpreter.is_some() || !needs.libraries.is_empty()).then_some(needs)
}

fn split_path(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(':').filter(|p| !p.is_empty()).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_hosts_own_programs_need_their_libraries() {
        // the test binary itself: dynamically linked against the C library
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let arch = if cfg!(target_arch = "aarch64") {
            Arch::Arm64
        } else {
            Arch::Amd64
        };
        assert!(is_elf(&me));
        let n = needs(&me, arch).expect("the test binary is dynamically linked");
        assert!(
            n.libraries.iter().any(|l| l.starts_with("libc.so")),
            "{n:?}"
        );
        assert!(n.interpreter.is_some());
        let other = if arch == Arch::Amd64 {
            Arch::Arm64
        } else {
            Arch::Amd64
        };
        assert_eq!(needs(&me, other), None);
        assert_eq!(needs(b"#!/bin/sh\n", arch), None);
    }
}
