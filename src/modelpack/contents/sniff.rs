//! Which parser a file's first bytes call for.

use super::Format;

/// Bytes read first from every file: a safetensors length and the start of its header, a zip's
/// first local header, a GGUF's fixed fields, a pickle's first opcodes.
pub const HEAD: u64 = 64 << 10;

/// What the first bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    Safetensors,
    Gguf,
    Zip,
    Pickle,
    Other,
}

/// Judges the first bytes of a file at `path`.
pub fn sniff(head: &[u8], path: &str) -> Sniffed {
    if head.starts_with(b"GGUF") {
        return Sniffed::Gguf;
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Sniffed::Zip;
    }
    let lower = path.to_ascii_lowercase();
    // A JSON object after the 8-byte length, or the name: a header that lies about its length is
    // still judged as one (and found malformed), not passed over as "other".
    if head.len() >= 8 && (head.get(8) == Some(&b'{') || lower.ends_with(".safetensors")) {
        return Sniffed::Safetensors;
    }
    // Pickles have no magic: protocol 2+ starts with PROTO; older ones are judged by name.
    if head.first() == Some(&0x80) && head.get(1).is_some_and(|p| *p <= 5) {
        return Sniffed::Pickle;
    }
    let pickle_names = [".pkl", ".pickle", ".joblib", ".pt", ".pth", ".bin", ".ckpt", ".dat", ".data"];
    let named = pickle_names.iter().any(|s| lower.ends_with(s));
    let opens = head.first().is_some_and(|b| b"(cilN}])KJ".contains(b));
    if (named && opens) || starts_with_global(head) {
        return Sniffed::Pickle;
    }
    Sniffed::Other
}

/// A protocol 0/1 `GLOBAL` (`cmodule\nname\n`) first, whatever the file is called: `torch.load`
/// and `pickle.load` do not look at names.
fn starts_with_global(head: &[u8]) -> bool {
    let Some(rest) = head.strip_prefix(b"c") else { return false };
    let module_char = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.';
    match rest.iter().position(|b| *b == b'\n') {
        Some(end) if end > 0 && end < 256 => rest[..end].iter().all(module_char),
        _ => false,
    }
}

impl Sniffed {
    pub fn format(self) -> Format {
        match self {
            Sniffed::Safetensors => Format::Safetensors,
            Sniffed::Gguf => Format::Gguf,
            Sniffed::Zip => Format::Pytorch,
            Sniffed::Pickle => Format::Pickle,
            Sniffed::Other => Format::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_name_the_format() {
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}");
        assert_eq!(sniff(&st, "a"), Sniffed::Safetensors);
        assert_eq!(sniff(&u64::MAX.to_le_bytes(), "m.safetensors"), Sniffed::Safetensors);
        assert_eq!(sniff(b"GGUF\x03\x00", "a"), Sniffed::Gguf);
        assert_eq!(sniff(b"PK\x03\x04", "a"), Sniffed::Zip);
        assert_eq!(sniff(b"\x80\x02}q\x00.", "x.anything"), Sniffed::Pickle);
        assert_eq!(sniff(b"(S'id'\nios\nsystem\n.", "m.pkl"), Sniffed::Pickle);
        assert_eq!(sniff(b"{\"a\": 1}", "config.json"), Sniffed::Other);
        assert_eq!(sniff(b"# README\n", "README.md"), Sniffed::Other);
        assert_eq!(sniff(b"cos\nsystem\n(S'id'\ntR.", "weights"), Sniffed::Pickle, "any name");
        assert_eq!(sniff(b"cat is here\n", "notes"), Sniffed::Other);
    }
}
