//! A GGUF header (versions 2 and 3): magic, version, tensor and key counts, the metadata keys with
//! their typed values, then one info per tensor (name, dimensions, type, offset). Everything the
//! parser reads is counted against the bytes it has; a count that lies ends in a request for more
//! bytes than the file has, which the reader's bound refuses.

use std::collections::BTreeSet;

use super::{Contents, Fault, Format, MAX_LISTED, clip};

/// Arrays of arrays deeper than this are malformed (the format writes flat arrays).
const MAX_DEPTH: usize = 4;

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], Fault> {
        let end = (self.at as u64).checked_add(n).ok_or_else(|| Fault::Malformed("a length past 2^64".into()))?;
        if end > self.bytes.len() as u64 {
            return Err(Fault::Truncated(end));
        }
        let out = &self.bytes[self.at..end as usize];
        self.at = end as usize;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, Fault> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }

    fn u64(&mut self) -> Result<u64, Fault> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }

    fn string(&mut self) -> Result<String, Fault> {
        let n = self.u64()?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    /// A value of `kind`, as text for the metadata (arrays as their length).
    fn value(&mut self, kind: u32, depth: usize) -> Result<String, Fault> {
        let fixed = |k: u32| match k {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        };
        Ok(match kind {
            0 => self.take(1)?[0].to_string(),
            1 => (self.take(1)?[0] as i8).to_string(),
            2 => u16::from_le_bytes(self.take(2)?.try_into().unwrap_or_default()).to_string(),
            3 => i16::from_le_bytes(self.take(2)?.try_into().unwrap_or_default()).to_string(),
            4 => self.u32()?.to_string(),
            5 => (self.u32()? as i32).to_string(),
            6 => f32::from_bits(self.u32()?).to_string(),
            7 => (self.take(1)?[0] != 0).to_string(),
            8 => self.string()?,
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(Fault::Malformed("arrays nested too deep".into()));
                }
                let item = self.u32()?;
                let n = self.u64()?;
                match fixed(item) {
                    Some(size) => {
                        let len = n.checked_mul(size).ok_or_else(|| Fault::Malformed(format!("an array of {n}")))?;
                        self.take(len)?;
                    }
                    None => {
                        for _ in 0..n {
                            self.value(item, depth + 1)?;
                        }
                    }
                }
                format!("[{n} items]")
            }
            10 => self.u64()?.to_string(),
            11 => (self.u64()? as i64).to_string(),
            12 => f64::from_bits(self.u64()?).to_string(),
            other => return Err(Fault::Malformed(format!("unknown value type {other}"))),
        })
    }
}

/// The ggml tensor type names.
fn type_name(kind: u32) -> String {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    NAMES.get(kind as usize).map_or_else(|| format!("type {kind}"), |n| (*n).to_owned())
}

/// Parses the GGUF header at the start of `bytes`.
pub fn parse(bytes: &[u8]) -> Result<Contents, Fault> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != b"GGUF" {
        return Err(Fault::Malformed("no GGUF magic".into()));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(Fault::Malformed(format!("GGUF version {version} (versions 2 and 3 are read)")));
    }
    let tensors = r.u64()?;
    let keys = r.u64()?;
    let mut contents = Contents::of(Format::Gguf);
    for _ in 0..keys {
        let key = r.string()?;
        let kind = r.u32()?;
        let value = r.value(kind, 0)?;
        if contents.metadata.len() < MAX_LISTED {
            contents.metadata.insert(clip(&key), clip(&value));
        }
    }
    let mut parameters = 0u64;
    let mut types = BTreeSet::new();
    for _ in 0..tensors {
        r.string()?;
        let dims = r.u32()?;
        if dims > 8 {
            return Err(Fault::Malformed(format!("a tensor of {dims} dimensions")));
        }
        let mut numel = 1u64;
        for _ in 0..dims {
            numel =
                numel.checked_mul(r.u64()?).ok_or_else(|| Fault::Malformed("a tensor past 2^64 elements".into()))?;
        }
        types.insert(type_name(r.u32()?));
        r.u64()?;
        parameters = parameters.saturating_add(numel);
    }
    contents.tensors = Some(tensors);
    contents.parameters = Some(parameters);
    contents.dtypes = types.into_iter().take(MAX_LISTED).collect();
    Ok(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn file() -> Vec<u8> {
        let mut f = b"GGUF".to_vec();
        f.extend(3u32.to_le_bytes());
        f.extend(2u64.to_le_bytes());
        f.extend(3u64.to_le_bytes());
        f.extend(string("general.architecture"));
        f.extend(8u32.to_le_bytes());
        f.extend(string("llama"));
        f.extend(string("llama.block_count"));
        f.extend(4u32.to_le_bytes());
        f.extend(2u32.to_le_bytes());
        f.extend(string("tokenizer.ggml.tokens"));
        f.extend(9u32.to_le_bytes());
        f.extend(8u32.to_le_bytes());
        f.extend(2u64.to_le_bytes());
        f.extend(string("a"));
        f.extend(string("b"));
        for (name, dims, kind) in [("tok", vec![4u64, 8], 1u32), ("out", vec![8], 0)] {
            f.extend(string(name));
            f.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                f.extend(d.to_le_bytes());
            }
            f.extend(kind.to_le_bytes());
            f.extend(0u64.to_le_bytes());
        }
        f
    }

    #[test]
    fn keys_tensors_types_and_parameters() {
        let c = parse(&file()).unwrap();
        assert_eq!((c.parameters, c.tensors), (Some(40), Some(2)));
        assert_eq!(c.dtypes, ["F16", "F32"]);
        assert_eq!(c.metadata["general.architecture"], "llama");
        assert_eq!(c.metadata["llama.block_count"], "2");
        assert_eq!(c.metadata["tokenizer.ggml.tokens"], "[2 items]");
    }

    #[test]
    fn a_cut_header_asks_for_more_and_lying_counts_ask_for_what_is_not_there() {
        let f = file();
        for cut in [3, 10, 30, f.len() - 1] {
            assert!(matches!(parse(&f[..cut]), Err(Fault::Truncated(n)) if n as usize > cut), "{cut}");
        }
        let mut lying = f[..24].to_vec();
        lying[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse(&lying), Err(Fault::Truncated(_))));
        let mut huge_array = b"GGUF\x03\x00\x00\x00".to_vec();
        huge_array.extend(0u64.to_le_bytes());
        huge_array.extend(1u64.to_le_bytes());
        huge_array.extend(string("k"));
        huge_array.extend(9u32.to_le_bytes());
        huge_array.extend(10u32.to_le_bytes());
        huge_array.extend(u64::MAX.to_le_bytes());
        assert!(matches!(parse(&huge_array), Err(Fault::Malformed(_))));
        assert!(matches!(parse(b"GGUF\x01\x00\x00\x00"), Err(Fault::Malformed(_))));
    }
}
