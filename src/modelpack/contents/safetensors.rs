//! A safetensors header: an 8-byte little-endian length, then that many bytes of JSON naming each
//! tensor's dtype, shape and byte range, and an optional `__metadata__` map of strings.
//!
//! Hand-written rather than the `safetensors` crate: its `SafeTensors::read_metadata` takes the
//! whole file in one buffer and refuses one whose length differs from what the header covers, and
//! here only the header's bytes are fetched (the weights stay in the registry). The checks are the
//! crate's: offsets contiguous from 0 to the end of the file, each range exactly the tensor's
//! size, and the header at most 100,000,000 bytes.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{Contents, Fault, Format, MAX_LISTED, clip};

/// The `safetensors` format's own bound on a header.
pub const MAX_HEADER: u64 = 100_000_000;

/// Bits per element of each dtype the format names.
fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

/// The header's length from the first 8 bytes, and where it ends.
pub fn header_end(head: &[u8], size: u64) -> Result<u64, Fault> {
    let len = head.get(..8).ok_or(Fault::Truncated(8))?;
    let len = u64::from_le_bytes(len.try_into().map_err(|_| Fault::Truncated(8))?);
    if len > MAX_HEADER {
        return Err(Fault::Malformed(format!("header of {len} bytes, over the format's {MAX_HEADER}")));
    }
    let end = len + 8;
    if end > size {
        return Err(Fault::Malformed(format!("header of {len} bytes in a file of {size}")));
    }
    Ok(end)
}

/// Parses the header at the start of `bytes` (a file of `size` bytes).
pub fn parse(bytes: &[u8], size: u64) -> Result<Contents, Fault> {
    let end = header_end(bytes, size)?;
    let header = bytes.get(8..end as usize).ok_or(Fault::Truncated(end))?;
    let json: serde_json::Map<String, Value> = serde_json::from_slice(header)
        .map_err(|e| Fault::Malformed(format!("header is not a JSON object: {}", clip(&e.to_string()))))?;
    let mut contents = Contents::of(Format::Safetensors);
    let mut ranges = Vec::new();
    let mut dtypes = BTreeSet::new();
    let mut parameters = 0u64;
    for (name, entry) in &json {
        if name == "__metadata__" {
            let map = entry.as_object().ok_or_else(|| Fault::Malformed("__metadata__ is not an object".into()))?;
            for (k, v) in map.iter().take(MAX_LISTED) {
                let v =
                    v.as_str().ok_or_else(|| Fault::Malformed(format!("__metadata__ {} is not a string", clip(k))))?;
                contents.metadata.insert(clip(k), clip(v));
            }
            continue;
        }
        let bad = |what: &str| Fault::Malformed(format!("tensor {}: {what}", clip(name)));
        let dtype = entry.get("dtype").and_then(Value::as_str).ok_or_else(|| bad("no dtype"))?;
        let bits = dtype_bits(dtype).ok_or_else(|| bad(&format!("unknown dtype {}", clip(dtype))))?;
        let shape = entry.get("shape").and_then(Value::as_array).ok_or_else(|| bad("no shape"))?;
        let numel = shape.iter().try_fold(1u64, |acc, d| d.as_u64().and_then(|d| acc.checked_mul(d)));
        let numel = numel.ok_or_else(|| bad("shape is not a list of sizes"))?;
        let offsets = entry.get("data_offsets").and_then(Value::as_array).ok_or_else(|| bad("no data_offsets"))?;
        let (Some(begin), Some(finish), 2) =
            (offsets.first().and_then(Value::as_u64), offsets.get(1).and_then(Value::as_u64), offsets.len())
        else {
            return Err(bad("data_offsets is not [begin, end]"));
        };
        let bytes = numel.checked_mul(bits).filter(|b| b % 8 == 0).map(|b| b / 8).ok_or_else(|| bad("size"))?;
        if finish < begin || finish - begin != bytes {
            return Err(bad(&format!("{numel} {dtype} elements in bytes {begin}..{finish}")));
        }
        ranges.push((begin, finish));
        dtypes.insert(dtype.to_owned());
        parameters = parameters.saturating_add(numel);
    }
    // The data section is the tensors' ranges, contiguous from 0 to the end of the file.
    ranges.sort_unstable();
    let mut at = 0;
    for (begin, finish) in &ranges {
        if *begin != at {
            return Err(Fault::Malformed(format!("tensor data is not contiguous at byte {at} of the data")));
        }
        at = *finish;
    }
    if at != size - end {
        return Err(Fault::Malformed(format!("tensors cover {at} bytes of {} after the header", size - end)));
    }
    contents.tensors = Some(ranges.len() as u64);
    contents.parameters = Some(parameters);
    contents.dtypes = dtypes.into_iter().take(MAX_LISTED).collect();
    Ok(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(header.as_bytes());
        f.extend(std::iter::repeat_n(0u8, data));
        f
    }

    #[test]
    fn tensors_dtypes_parameters_and_metadata() {
        let h = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},
            "b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]},"s":{"dtype":"I64","shape":[],"data_offsets":[32,40]}}"#;
        let f = file(h, 40);
        let c = parse(&f, f.len() as u64).unwrap();
        assert_eq!((c.parameters, c.tensors), (Some(11), Some(3)));
        assert_eq!(c.dtypes, ["BF16", "F32", "I64"]);
        assert_eq!(c.metadata.get("format").map(String::as_str), Some("pt"));
    }

    #[test]
    fn a_header_needs_its_bytes_and_cannot_lie_about_its_size() {
        let f = file(r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, 1);
        assert_eq!(parse(&f[..20], f.len() as u64), Err(Fault::Truncated(f.len() as u64 - 1)));
        assert!(matches!(header_end(&u64::MAX.to_le_bytes(), 100), Err(Fault::Malformed(_))));
        assert!(matches!(header_end(&1000u64.to_le_bytes(), 100), Err(Fault::Malformed(_))));
        assert_eq!(header_end(b"abc", 100), Err(Fault::Truncated(8)));
    }

    #[test]
    fn offsets_that_overlap_leave_gaps_or_miss_the_end_are_malformed() {
        for (h, data) in [
            (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, 4),
            (r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#, 2),
            (r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, 2),
            (r#"{"a":{"dtype":"X9","shape":[1],"data_offsets":[0,1]}}"#, 1),
            (r#"{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#, 1),
            (r#"{"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,1]}}"#, 1),
            (r#"[1,2]"#, 0),
            (r#"{"__metadata__":{"a":1}}"#, 0),
        ] {
            let f = file(h, data);
            assert!(matches!(parse(&f, f.len() as u64), Err(Fault::Malformed(_))), "{h}");
        }
    }
}
