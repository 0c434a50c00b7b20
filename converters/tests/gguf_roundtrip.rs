//! The GGUF writer and reader against each other, against the reference file, and against broken files.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use std::io::Write;
use std::path::Path;

use phi_converters::gguf::{
    padding, rewrite_metadata, write_zeros, GgmlType, GgufFile, GgufHeader, MetadataArray, MetadataValue, ValueType,
};
use support::fixtures;

fn every_value_type() -> Vec<(String, MetadataValue)> {
    let values = vec![
        MetadataValue::U8(250),
        MetadataValue::I8(-7),
        MetadataValue::U16(65000),
        MetadataValue::I16(-30000),
        MetadataValue::U32(4_000_000_000),
        MetadataValue::I32(-2_000_000_000),
        MetadataValue::F32(1e-5),
        MetadataValue::Bool(true),
        MetadataValue::String("héllo, 日本語 🐍".into()),
        MetadataValue::U64(u64::MAX),
        MetadataValue::I64(i64::MIN),
        MetadataValue::F64(std::f64::consts::PI),
        MetadataValue::Array(MetadataArray::U8(vec![1, 2, 3])),
        MetadataValue::Array(MetadataArray::I8(vec![-1, 1])),
        MetadataValue::Array(MetadataArray::U16(vec![1, 65535])),
        MetadataValue::Array(MetadataArray::I16(vec![-2, 2])),
        MetadataValue::Array(MetadataArray::U32(vec![7, 8])),
        MetadataValue::Array(MetadataArray::I32(vec![1, 3, 5])),
        MetadataValue::Array(MetadataArray::F32(vec![0.5, -0.25])),
        MetadataValue::Array(MetadataArray::Bool(vec![true, false])),
        MetadataValue::Array(MetadataArray::String(vec!["Ġ t".into(), String::new(), "   ".into()])),
        MetadataValue::Array(MetadataArray::U64(vec![u64::MAX])),
        MetadataValue::Array(MetadataArray::I64(vec![-1])),
        MetadataValue::Array(MetadataArray::F64(vec![1.5])),
        MetadataValue::Array(MetadataArray::String(Vec::new())),
        MetadataValue::Array(MetadataArray::Array(vec![
            MetadataArray::I32(vec![1, 2]),
            MetadataArray::String(vec!["nested".into()]),
        ])),
    ];
    values.into_iter().enumerate().map(|(i, v)| (format!("test.{i}.{}", v.type_name()), v)).collect()
}

/// Writes `header` and deterministic data for each tensor; returns the data written per tensor.
fn write_file(path: &Path, header: &GgufHeader) -> Vec<Vec<u8>> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let data_start = header.write_to(&mut file).unwrap();
    assert_eq!(data_start, header.header_len().unwrap());
    assert_eq!(data_start % header.alignment(), 0);
    let mut all = Vec::new();
    for tensor in header.tensors() {
        let data: Vec<u8> = (0..tensor.n_bytes).map(|i| (i * 31 + tensor.offset) as u8).collect();
        file.write_all(&data).unwrap();
        write_zeros(&mut file, padding(tensor.n_bytes, header.alignment())).unwrap();
        all.push(data);
    }
    file.flush().unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().len(), header.file_len().unwrap());
    all
}

fn tensors_header(header: &mut GgufHeader) {
    header.push_tensor("a.f32", vec![3], GgmlType::F32).unwrap();
    header.push_tensor("b.f16", vec![5, 2], GgmlType::F16).unwrap();
    header.push_tensor("c.q8_0", vec![64, 3], GgmlType::Q8_0).unwrap();
    header.push_tensor("d.q4_k", vec![256, 1, 1, 2], GgmlType::Q4K).unwrap();
    header.push_tensor("e.bf16", vec![7], GgmlType::Bf16).unwrap();
}

#[test]
fn every_value_and_tensor_type_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.gguf");
    let mut header = GgufHeader::new();
    header.set_metadata("general.architecture", MetadataValue::String("test".into()));
    for (key, value) in every_value_type() {
        header.set_metadata(key, value);
    }
    // Setting an existing key replaces its value in place.
    header.set_metadata("general.architecture", MetadataValue::String("phi2".into()));
    tensors_header(&mut header);
    let data = write_file(&path, &header);

    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 32);
    let read: Vec<(String, MetadataValue)> = file.metadata().map(|(k, v)| (k.to_owned(), v.clone())).collect();
    assert_eq!(read, header.metadata());
    assert_eq!(read[0], ("general.architecture".to_owned(), MetadataValue::String("phi2".into())));
    assert_eq!(file.get_str("general.architecture"), Some("phi2"));
    assert_eq!(file.get_u32("test.4.UINT32"), Some(4_000_000_000));
    assert_eq!(file.get("test.25.ARRAY[ARRAY]").unwrap().value_type(), ValueType::Array);
    assert_eq!(file.get("test.24.ARRAY[STRING]").unwrap().as_array().unwrap().element_type(), ValueType::String);
    assert_eq!(file.tensors(), header.tensors());
    for (tensor, expected) in file.tensors().iter().zip(&data) {
        assert_eq!(file.tensor_data(tensor), &expected[..], "{}", tensor.name);
    }
    let q8 = file.tensor("c.q8_0").unwrap();
    assert_eq!((q8.n_bytes, q8.n_elements()), (3 * 2 * 34, 192));
    assert_eq!(file.tensor("d.q4_k").unwrap().n_bytes, 2 * 144);
}

#[test]
fn a_custom_alignment_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aligned.gguf");
    let mut header = GgufHeader::new();
    tensors_header(&mut header);
    header.set_metadata("general.alignment", MetadataValue::U32(64));
    assert!(header.tensors().iter().all(|t| t.offset % 64 == 0));
    let data = write_file(&path, &header);
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset() % 64, 0);
    for (tensor, expected) in file.tensors().iter().zip(&data) {
        assert_eq!(file.tensor_data(tensor), &expected[..]);
    }
}

#[test]
fn writer_refuses_what_readers_would_reject() {
    let mut header = GgufHeader::new();
    assert!(header.push_tensor("q", vec![48, 2], GgmlType::Q8_0).is_err()); // 48 is not a whole Q8_0 block
    header.push_tensor("t", vec![4], GgmlType::F32).unwrap();
    assert!(header.push_tensor("t", vec![4], GgmlType::F32).is_err());
    header.set_metadata("general.alignment", MetadataValue::U32(3));
    assert!(header.write_to(&mut Vec::new()).is_err());
}

#[test]
fn rewrite_metadata_changes_only_the_edited_values() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixtures().join("tiny-phi/reference/tiny-phi.f16.gguf");
    let target = dir.path().join("renamed.gguf");
    rewrite_metadata(&source, &target, |key, value| {
        if key == "general.name" {
            *value = MetadataValue::String("Another Name".into());
        }
    })
    .unwrap();
    let (original, rewritten) = (GgufFile::open(&source).unwrap(), GgufFile::open(&target).unwrap());
    for ((key, a), (key_b, b)) in original.metadata().zip(rewritten.metadata()) {
        assert_eq!(key, key_b);
        if key == "general.name" {
            assert_eq!(b.as_str(), Some("Another Name"));
        } else {
            assert!(a == b, "{key}");
        }
    }
    assert_eq!(original.tensors().len(), rewritten.tensors().len());
    for (a, b) in original.tensors().iter().zip(rewritten.tensors()) {
        assert_eq!(a, b);
        assert!(original.tensor_data(a) == rewritten.tensor_data(b));
    }
    assert_eq!(support::files_in(dir.path()), ["renamed.gguf"]);
}

/// Opens `bytes` as a GGUF and returns the error message.
fn open_error(dir: &Path, bytes: &[u8]) -> String {
    let path = dir.join("broken.gguf");
    std::fs::write(&path, bytes).unwrap();
    let message = GgufFile::open(&path).unwrap_err().to_string();
    assert!(message.starts_with(&format!("{}: ", path.display())), "{message}");
    assert_eq!(message.lines().count(), 1);
    message
}

#[test]
fn broken_files_are_reported_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let reference = std::fs::read(fixtures().join("tiny-phi/reference/tiny-phi.f16.gguf")).unwrap();

    assert!(open_error(dir.path(), b"GGML\x03\0\0\0").contains("not a GGUF file"));
    assert!(open_error(dir.path(), b"GG").contains("truncated"));
    let mut big_endian = reference[..64].to_vec();
    big_endian[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(open_error(dir.path(), &big_endian).contains("big-endian"));
    // Cut inside the header, and inside the tensor data.
    assert!(open_error(dir.path(), &reference[..1000]).contains("truncated"));
    let message = open_error(dir.path(), &reference[..reference.len() / 2]);
    assert!(message.contains("truncated: tensor"), "{message}");

    // A header claiming more metadata than the file could hold does not allocate for it.
    let mut huge_count = reference[..64].to_vec();
    huge_count[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(open_error(dir.path(), &huge_count).contains("does not fit"));

    // An unknown tensor type.
    let mut header = GgufHeader::new();
    header.push_tensor("t", vec![4], GgmlType::F32).unwrap();
    let mut bytes = Vec::new();
    header.write_to(&mut bytes).unwrap();
    // magic, version, two counts (24 bytes), the name "t" (8 + 1), n_dims (4), one dim (8): then the type.
    let type_at = 24 + 9 + 4 + 8;
    assert_eq!(bytes[type_at..type_at + 4], GgmlType::F32.code().to_le_bytes());
    let mut unknown = bytes.clone();
    unknown[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
    unknown.extend_from_slice(&[0; 16]);
    assert!(open_error(dir.path(), &unknown).contains("unknown ggml type 99"));
}
