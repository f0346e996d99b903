use super::*;

/// A stored (uncompressed) zip of `members`, as `torch.save` writes one, CRCs left 0 (not read).
pub(crate) fn stored(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in members {
        let offset = out.len() as u32;
        out.extend(LOCAL.to_le_bytes());
        out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((name.len() as u16).to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(name.as_bytes());
        out.extend(*data);
        central.extend(CENTRAL.to_le_bytes());
        central.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend((data.len() as u32).to_le_bytes());
        central.extend((data.len() as u32).to_le_bytes());
        central.extend((name.len() as u16).to_le_bytes());
        central.extend([0u8; 12]);
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let directory = out.len() as u32;
    out.extend(&central);
    out.extend(END.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(directory.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

fn read_all(zip: &[u8]) -> Result<Vec<(String, Vec<u8>)>, Fault> {
    let size = zip.len() as u64;
    let e = end(zip, 0, size)?;
    let dir = &zip[e.directory as usize..(e.directory + e.directory_len) as usize];
    let mut out = Vec::new();
    for m in members(dir, &e, size)? {
        let start = data_start(&zip[m.local as usize..], &m, size)?;
        let data = &zip[start as usize..(start + m.compressed) as usize];
        out.push((m.name.clone(), unpack(data, &m, 1 << 20)?));
    }
    Ok(out)
}

#[test]
fn members_and_their_bytes() {
    let zip =
        stored(&[("archive/data.pkl", b"\x80\x02}."), ("archive/data/0", &[1, 2, 3, 4]), ("archive/version", b"3\n")]);
    let got = read_all(&zip).unwrap();
    assert_eq!(got[0], ("archive/data.pkl".to_owned(), b"\x80\x02}.".to_vec()));
    assert_eq!(got.len(), 3);
    assert_eq!(got.iter().map(|(n, _)| kind(n)).collect::<Vec<_>>(), [Kind::Pickle, Kind::Storage, Kind::Record]);
    assert_eq!(kind("archive/DATA.PKL"), Kind::Pickle);
    assert_eq!(kind("archive/data.pkl\0.txt"), Kind::Other);
}

#[test]
fn a_comment_after_the_end_record_is_skipped() {
    let mut zip = stored(&[("a.pkl", b"N.")]);
    let n = zip.len();
    zip[n - 2..].copy_from_slice(&5u16.to_le_bytes());
    zip.extend(b"hello");
    assert_eq!(read_all(&zip).unwrap().len(), 1);
}

#[test]
fn a_directory_pointing_outside_the_file_is_malformed() {
    let zip = stored(&[("a.pkl", b"N.")]);
    let n = zip.len();
    let mut far = zip.clone();
    far[n - 6..n - 2].copy_from_slice(&0xfff0_0000u32.to_le_bytes());
    assert!(matches!(read_all(&far), Err(Fault::Malformed(m)) if m.contains("outside")));
    let mut member_far = zip.clone();
    let dir = u32::from_le_bytes(zip[n - 6..n - 2].try_into().unwrap()) as usize;
    member_far[dir + 42..dir + 46].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    assert!(matches!(read_all(&member_far), Err(Fault::Malformed(m)) if m.contains("outside")));
    let mut lying_count = zip.clone();
    lying_count[n - 12..n - 10].copy_from_slice(&500u16.to_le_bytes());
    assert!(matches!(read_all(&lying_count), Err(Fault::Malformed(_))));
    assert!(matches!(read_all(b"PK\x03\x04 not a zip"), Err(Fault::Malformed(_))));
}

#[test]
fn deflated_members_inflate_within_the_limit() {
    use std::io::Write;
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&[b'N'; 10_000]).unwrap();
    let data = enc.finish().unwrap();
    let m = Member { name: "x".into(), method: 8, compressed: data.len() as u64, uncompressed: 10_000, local: 0 };
    assert_eq!(unpack(&data, &m, 10_000).unwrap().len(), 10_000);
    assert!(matches!(unpack(&data, &m, 9_999), Err(Fault::Malformed(_))));
    assert!(matches!(unpack(&data, &Member { method: 12, ..m }, 10), Err(Fault::Malformed(_))));
}
