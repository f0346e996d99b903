use super::*;

/// A protocol-2 pickle of `OrderedDict` holding one `_rebuild_tensor_v2` of shape (3, 4), as
/// `torch.save` writes `data.pkl` (storage by BINPERSID).
fn checkpoint() -> Vec<u8> {
    let mut p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01".to_vec();
    p.extend_from_slice(b"X\x06\x00\x00\x00weightq\x02");
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\nq\x03");
    p.extend_from_slice(b"((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05X\x01\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07K\x0ctq\x08Q");
    p.extend_from_slice(
        b"K\x00K\x03K\x04\x86q\x09K\x04K\x01\x86q\x0a\x89ccollections\nOrderedDict\nq\x0b)Rq\x0ctq\x0dRq\x0e",
    );
    p.extend_from_slice(b"s.");
    p
}

fn verdict(bytes: &[u8]) -> PickleReport {
    scan(bytes, true).report()
}

#[test]
fn an_ordinary_checkpoint_is_safe_and_its_shapes_count() {
    let s = scan(&checkpoint(), true);
    let r = s.report();
    assert_eq!(r.verdict, Verdict::Safe, "{r:?}");
    assert_eq!(r.imports, ["collections.OrderedDict", "torch.FloatStorage", "torch._utils._rebuild_tensor_v2"]);
    assert_eq!((s.parameters, s.tensors), (12, 1));
}

#[test]
fn global_reduce_of_os_system_is_unsafe() {
    let r = verdict(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R.");
    assert_eq!(r.verdict, Verdict::Unsafe);
    assert_eq!(r.imports, ["os.system"]);
    assert!(r.reasons[0].contains("os.system"), "{r:?}");
}

#[test]
fn stack_global_from_the_memo_is_resolved() {
    // The strings are memoised early and fetched back by BINGET right before STACK_GLOBAL.
    let p = b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x8c\x01x\x94\x30\x68\x00\x68\x01\x93\x8c\x02id\x85R.";
    let r = verdict(p);
    assert_eq!(r.verdict, Verdict::Unsafe, "{r:?}");
    assert_eq!(r.imports, ["os.system"]);
}

#[test]
fn stack_global_of_values_that_are_not_strings_is_suspicious() {
    let r = verdict(b"\x80\x04K\x01K\x02\x93)R.");
    assert_eq!(r.verdict, Verdict::Suspicious, "{r:?}");
}

#[test]
fn protocol_zero_inst_is_an_import_and_a_call() {
    let r = verdict(b"(S'id'\nisubprocess\ncheck_output\n.");
    assert_eq!(r.verdict, Verdict::Unsafe, "{r:?}");
    assert_eq!(r.imports, ["subprocess.check_output"]);
}

#[test]
fn obj_and_newobj_import_their_class() {
    let r = verdict(b"\x80\x02(cbuiltins\nexec\nS'1'\no.");
    assert_eq!(r.verdict, Verdict::Unsafe, "{r:?}");
    let r = verdict(b"\x80\x02csklearn.tree\nDecisionTree\n)\x81.");
    assert_eq!(r.verdict, Verdict::Suspicious, "{r:?}");
    assert_eq!(r.imports, ["sklearn.tree.DecisionTree"]);
}

#[test]
fn a_dotted_name_that_walks_to_os_is_unsafe() {
    let r = verdict(b"\x80\x04\x8c\x0bcollections\x8c\x09os.system\x93\x8c\x02id\x85R.");
    assert_eq!(r.verdict, Verdict::Unsafe, "{r:?}");
}

#[test]
fn malformed_and_truncated_pickles_are_unknown_never_safe() {
    let ok = checkpoint();
    for cut in [1, 5, ok.len() / 2, ok.len() - 1] {
        assert_eq!(verdict(&ok[..cut]).verdict, Verdict::Unknown, "cut at {cut}");
    }
    assert_eq!(scan(&ok[..ok.len() - 1], false).report().verdict, Verdict::Unknown);
    for bad in [&b"\x80\x02\xff."[..], b"\x80\x02h\x07.", b"\x80\x02R.", b"\x80\x09N.", b"\x80\x02.", b"hello"] {
        assert_eq!(verdict(bad).verdict, Verdict::Unknown, "{bad:?}");
    }
    // A denied import before the damage stays unsafe.
    assert_eq!(verdict(b"\x80\x02cos\nsystem\n\xff").verdict, Verdict::Unsafe);
}

#[test]
fn an_endless_pickle_ends_with_the_bytes_read() {
    let endless: Vec<u8> = b"\x80\x02".iter().chain([b'('; 1 << 20].iter()).copied().collect();
    let r = scan(&endless, false).report();
    assert_eq!(r.verdict, Verdict::Unknown);
    assert!(r.reasons[0].contains("past the"), "{r:?}");
}

#[test]
fn pickles_after_the_first_are_scanned_and_raw_bytes_after_them_end_the_scan() {
    let mut legacy = b"\x80\x02K\x01.".to_vec();
    legacy.extend_from_slice(b"\x80\x02cos\nsystem\n)R.");
    assert_eq!(verdict(&legacy).verdict, Verdict::Unsafe);
    let mut raw = b"\x80\x02K\x01.".to_vec();
    raw.extend_from_slice(&[0xff, 0xfe, 0x00]);
    assert_eq!(verdict(&raw).verdict, Verdict::Safe);
}

#[test]
fn a_pickle_nested_in_bytes_counts() {
    let inner = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R.";
    let mut outer = b"\x80\x03C".to_vec();
    outer.push(inner.len() as u8);
    outer.extend_from_slice(inner);
    outer.push(b'.');
    let r = verdict(&outer);
    assert_eq!(r.verdict, Verdict::Unsafe, "{r:?}");
}

#[test]
fn reduce_of_a_value_that_is_not_an_import_is_suspicious() {
    let r = verdict(b"\x80\x02ccollections\nOrderedDict\n)R)R.");
    assert_eq!(r.verdict, Verdict::Suspicious, "{r:?}");
}

#[test]
fn extension_codes_are_suspicious() {
    assert_eq!(verdict(b"\x80\x02\x82\x01)R.").verdict, Verdict::Suspicious);
}
