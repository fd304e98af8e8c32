//! Just enough ELF64 little-endian reading to tell a fully static binary.

pub enum Linkage {
    /// No interpreter and no DT_NEEDED entry (plain static or static-pie).
    Static,
    /// Needs the dynamic loader; the reason says what was found.
    Dynamic(String),
}

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;

pub fn linkage(elf: &[u8]) -> Result<Linkage, String> {
    if elf.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let phoff = u64_at(elf, 0x20)? as usize;
    let phentsize = u16_at(elf, 0x36)? as usize;
    let phnum = u16_at(elf, 0x38)? as usize;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        match u32_at(elf, ph)? {
            PT_INTERP => {
                return Ok(Linkage::Dynamic(
                    "has an ELF interpreter (PT_INTERP)".into(),
                ))
            }
            PT_DYNAMIC => {
                let offset = u64_at(elf, ph + 8)? as usize;
                let size = u64_at(elf, ph + 32)? as usize;
                for entry in (offset..offset + size).step_by(16) {
                    match u64_at(elf, entry)? {
                        DT_NULL => break,
                        DT_NEEDED => {
                            return Ok(Linkage::Dynamic(
                                "needs a shared library (DT_NEEDED)".into(),
                            ))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Linkage::Static)
}

/// `e_machine` of an ELF64 little-endian file: [`EM_X86_64`], [`EM_AARCH64`], ...
pub fn machine(elf: &[u8]) -> Result<u16, String> {
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    u16_at(elf, 0x12)
}

/// `e_machine` values.
pub const EM_X86_64: u16 = 62;
pub const EM_AARCH64: u16 = 183;

fn bytes<const N: usize>(elf: &[u8], at: usize) -> Result<[u8; N], String> {
    elf.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| format!("truncated ELF file (offset {at})"))
}

fn u16_at(elf: &[u8], at: usize) -> Result<u16, String> {
    bytes(elf, at).map(u16::from_le_bytes)
}

fn u32_at(elf: &[u8], at: usize) -> Result<u32, String> {
    bytes(elf, at).map(u32::from_le_bytes)
}

fn u64_at(elf: &[u8], at: usize) -> Result<u64, String> {
    bytes(elf, at).map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF64 header with `phnum` program headers of the given types, each empty.
    fn synthetic(types: &[u32]) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56 * types.len()];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            elf[64 + 56 * i..68 + 56 * i].copy_from_slice(&t.to_le_bytes());
        }
        elf
    }

    #[test]
    fn no_interpreter_and_no_dynamic_section_is_static() {
        assert!(matches!(linkage(&synthetic(&[1, 1])), Ok(Linkage::Static)));
    }

    #[test]
    fn an_interpreter_is_dynamic() {
        assert!(matches!(
            linkage(&synthetic(&[1, PT_INTERP])),
            Ok(Linkage::Dynamic(_))
        ));
    }

    #[test]
    fn this_glibc_test_binary_is_dynamic() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        assert!(matches!(linkage(&exe), Ok(Linkage::Dynamic(_))));
    }

    #[test]
    fn reads_the_machine() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let host = if cfg!(target_arch = "x86_64") {
            EM_X86_64
        } else {
            EM_AARCH64
        };
        assert_eq!(machine(&exe), Ok(host));
        let mut elf = synthetic(&[1]);
        elf[0x12..0x14].copy_from_slice(&EM_AARCH64.to_le_bytes());
        assert_eq!(machine(&elf), Ok(EM_AARCH64));
        assert!(machine(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn truncated_and_foreign_files_are_errors() {
        let elf = synthetic(&[1, 1]);
        assert!(linkage(&elf[..100]).is_err());
        assert!(linkage(b"#!/bin/sh\n").is_err());
    }
}
