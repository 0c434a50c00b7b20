//! Conversions of the fixture checkpoints, compared with the GGUF that llama.cpp's `convert_hf_to_gguf.py`
//! wrote for tiny-phi (the ground truth for metadata order, value types, tokenizer data and tensor layout).
#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use std::collections::HashMap;
use std::path::Path;

use phi_converters::gguf::{GgmlType, GgufFile, MetadataValue};
use phi_converters::{
    gguf_model_config, inspect, CheckpointReader, ConvertProgress, Layout, OutType, SourceDtype, TokenizerOrigin,
};
use safetensors::SafeTensors;
use support::{convert_fixture, fixtures, options};

fn reference_path() -> std::path::PathBuf {
    fixtures().join("tiny-phi/reference/tiny-phi.f16.gguf")
}

/// Asserts that two GGUFs have the same metadata (order, types, full values) except for the keys in
/// `allowed_differences`, which must differ as given.
fn assert_same_metadata(actual: &GgufFile, expected: &GgufFile, allowed_differences: &[(&str, MetadataValue)]) {
    let actual_keys: Vec<&str> = actual.metadata().map(|(k, _)| k).collect();
    let expected_keys: Vec<&str> = expected.metadata().map(|(k, _)| k).collect();
    assert_eq!(actual_keys, expected_keys, "metadata keys or their order differ");
    let allowed: HashMap<&str, &MetadataValue> = allowed_differences.iter().map(|(k, v)| (*k, v)).collect();
    for ((key, value), (_, reference)) in actual.metadata().zip(expected.metadata()) {
        assert_eq!(value.type_name(), reference.type_name(), "type of {key}");
        match allowed.get(key) {
            Some(&different) => {
                assert_eq!(value, different, "{key}");
                assert_ne!(value, reference, "{key} was expected to differ from the reference");
            }
            None => assert!(value == reference, "value of {key} differs"),
        }
    }
}

/// Asserts that two GGUFs have the same tensors: names, order, shapes, types, offsets and data.
fn assert_same_tensors(actual: &GgufFile, expected: &GgufFile) {
    let names = |f: &GgufFile| f.tensors().iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(actual), names(expected), "tensor names or order differ");
    for (a, e) in actual.tensors().iter().zip(expected.tensors()) {
        assert_eq!(a, e, "tensor info of {}", a.name);
        assert!(actual.tensor_data(a) == expected.tensor_data(e), "data of {} differs", a.name);
    }
}

#[test]
fn tiny_phi_f16_is_byte_identical_to_the_reference_converter() {
    let dir = tempfile::tempdir().unwrap();
    let mut progress: Vec<ConvertProgress> = Vec::new();
    let output = dir.path().join("tiny-phi.f16.gguf");
    let summary = phi_converters::convert(&fixtures().join("tiny-phi"), &output, &options(OutType::F16), &mut |p| {
        progress.push(p.clone())
    })
    .unwrap();

    let ours = GgufFile::open(&output).unwrap();
    let reference = GgufFile::open(reference_path()).unwrap();
    assert_same_metadata(&ours, &reference, &[]);
    assert_same_tensors(&ours, &reference);
    assert_eq!(ours.data_offset(), reference.data_offset());
    // Everything equal, down to the padding: the files are identical.
    let (ours_bytes, reference_bytes) = (std::fs::read(&output).unwrap(), std::fs::read(reference_path()).unwrap());
    assert_eq!(ours_bytes.len(), reference_bytes.len());
    assert!(
        ours_bytes == reference_bytes,
        "files differ at byte {:?}",
        ours_bytes.iter().zip(&reference_bytes).position(|(a, b)| a != b)
    );

    assert_eq!(summary.layout, Layout::Transformers);
    assert_eq!(summary.tensor_count, 33);
    assert_eq!(summary.parameter_count, 6_704_640);
    assert_eq!(summary.output_bytes, ours_bytes.len() as u64);
    assert_eq!(summary.source_dtype, SourceDtype::F16);
    assert_eq!(summary.tokenizer, TokenizerOrigin::Checkpoint(fixtures().join("tiny-phi")));

    let last = progress.last().unwrap();
    assert_eq!((last.index, last.tensor_count, last.bytes_done), (32, 33, last.bytes_total));
    assert!(progress.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
}

#[test]
fn hyperparameters_read_back_from_a_gguf_are_the_checkpoints() {
    // llama.cpp's converter wrote the reference; ours writes the same keys for every fixture.
    let config = inspect(&fixtures().join("tiny-phi")).unwrap().config;
    assert_eq!(gguf_model_config(&GgufFile::open(reference_path()).unwrap()).unwrap(), config);
    let dir = tempfile::tempdir().unwrap();
    for model in ["tiny-phi", "tiny-phi-hf4", "tiny-phi-legacy", "tiny-phi-sharded-bf16"] {
        let (output, _) = convert_fixture(model, OutType::F32, dir.path());
        let read_back = gguf_model_config(&GgufFile::open(&output).unwrap()).unwrap();
        assert_eq!(read_back, inspect(&fixtures().join(model)).unwrap().config, "{model}");
    }
}

#[test]
fn the_checkpoint_reader_gives_the_gguf_tensors_of_either_layout() {
    // The same weights in the transformers layout and phi-msft's (fused Wqkv): the reader names and splits them as
    // the converter does, so both read as the reference GGUF's tensors, in its order, with its shapes.
    let reference = GgufFile::open(reference_path()).unwrap();
    let expected: Vec<(String, Vec<usize>)> = reference
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.dims.iter().rev().map(|&d| d as usize).collect()))
        .collect();
    for model in ["tiny-phi", "tiny-phi-legacy"] {
        let reader = CheckpointReader::open(&fixtures().join(model)).unwrap();
        let views: Vec<_> = reader.tensors().collect();
        let actual: Vec<(String, Vec<usize>)> = views.iter().map(|v| (v.name.to_owned(), v.shape.clone())).collect();
        assert_eq!(actual, expected, "{model}");
        for view in &views {
            let elements: usize = view.shape.iter().product();
            assert_eq!(view.data.len(), elements * view.dtype.element_size(), "{model}: {}", view.name);
        }
        assert_eq!(reader.info().tensor_count, expected.len());
    }
    // phi-msft's fused Wqkv comes as its q, k and v blocks of rows, in that order.
    let legacy = CheckpointReader::open(&fixtures().join("tiny-phi-legacy")).unwrap();
    let stored = std::fs::read(fixtures().join("tiny-phi-legacy/model.safetensors")).unwrap();
    let stored = SafeTensors::deserialize(&stored).unwrap();
    for part in ["weight", "bias"] {
        let fused = stored.tensor(&format!("transformer.h.1.mixer.Wqkv.{part}")).unwrap();
        let split: Vec<u8> = ["attn_q", "attn_k", "attn_v"]
            .iter()
            .flat_map(|name| {
                let name = format!("blk.1.{name}.{part}");
                legacy.tensors().find(|v| v.name == name).unwrap().data.to_vec()
            })
            .collect();
        assert!(split == fused.data(), "blk.1 q, k, v {part}s are not Wqkv's rows");
    }
}

#[test]
fn the_embedded_vocabulary_is_phis() {
    // Spelled out (the comparison above already covers every entry) to document what the vocabulary holds.
    let dir = tempfile::tempdir().unwrap();
    let (output, _) = convert_fixture("tiny-phi", OutType::F16, dir.path());
    let file = GgufFile::open(&output).unwrap();
    let tokens = file.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap().as_strings().unwrap();
    let types = file.get("tokenizer.ggml.token_type").unwrap().as_array().unwrap().as_i32s().unwrap();
    let merges = file.get("tokenizer.ggml.merges").unwrap().as_array().unwrap().as_strings().unwrap();
    assert_eq!((tokens.len(), types.len(), merges.len()), (51200, 51200, 50000));
    assert_eq!((tokens[0].as_str(), types[0]), ("!", 1));
    assert_eq!((tokens[220].as_str(), types[220]), ("Ġ", 1)); // byte-level form of a space
    assert_eq!((tokens[50256].as_str(), types[50256]), ("<|endoftext|>", 3)); // special: CONTROL
    assert_eq!((tokens[50257].as_str(), types[50257]), (" ".repeat(31).as_str(), 4)); // added: USER_DEFINED
    assert_eq!((tokens[50294].as_str(), types[50294]), ("\t\t", 4));
    assert_eq!((tokens[50295].as_str(), types[50295]), ("[PAD50295]", 5)); // beyond the tokenizer: UNUSED
    assert_eq!(merges[0], "Ġ t");
    for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id"] {
        assert_eq!(file.get_u32(key), Some(50256), "{key}");
    }
    assert_eq!(file.get("tokenizer.ggml.add_bos_token"), Some(&MetadataValue::Bool(false)));
    assert_eq!(file.get("tokenizer.ggml.add_eos_token"), Some(&MetadataValue::Bool(false)));
}

#[test]
fn transformers_4_config_gives_the_same_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let (output, summary) = convert_fixture("tiny-phi-hf4", OutType::F16, dir.path());
    let ours = GgufFile::open(&output).unwrap();
    let reference = GgufFile::open(reference_path()).unwrap();
    // Only the name differs: it comes from the directory name.
    assert_same_metadata(&ours, &reference, &[("general.name", MetadataValue::String("Tiny Phi Hf4".into()))]);
    assert_same_tensors(&ours, &reference);
    assert_eq!(summary.parameter_count, 6_704_640);
}

#[test]
fn legacy_phi_msft_checkpoint_gives_the_same_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let (output, summary) = convert_fixture("tiny-phi-legacy", OutType::F16, dir.path());
    let ours = GgufFile::open(&output).unwrap();
    let reference = GgufFile::open(reference_path()).unwrap();
    // The legacy weights are tiny-phi's f16 values upcast exactly, and Wqkv splits into the same q, k and v:
    // every tensor, in the same order, has the same bytes.
    assert_same_tensors(&ours, &reference);
    assert_same_metadata(&ours, &reference, &[("general.name", MetadataValue::String("Tiny Phi Legacy".into()))]);
    assert_eq!(summary.layout, Layout::PhiMsft);
    assert_eq!(summary.source_dtype, SourceDtype::F32);
    assert_eq!(summary.parameter_count, 6_704_640);
}

/// The transformers name of a GGUF tensor (the inverse of the converter's mapping, for the tests).
fn transformers_name(gguf_name: &str) -> String {
    let fixed = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.final_layernorm.weight"),
        ("output_norm.bias", "model.final_layernorm.bias"),
        ("output.weight", "lm_head.weight"),
        ("output.bias", "lm_head.bias"),
    ];
    if let Some((_, name)) = fixed.iter().find(|(g, _)| *g == gguf_name) {
        return (*name).to_owned();
    }
    let rest = gguf_name.strip_prefix("blk.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let (part, kind) = rest.rsplit_once('.').unwrap();
    let module = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.dense",
        "ffn_up" => "mlp.fc1",
        "ffn_down" => "mlp.fc2",
        other => panic!("unknown tensor {other}"),
    };
    format!("model.layers.{layer}.{module}.{kind}")
}

fn widen_bf16(bytes: &[u8]) -> Vec<u8> {
    bytes.chunks_exact(2).flat_map(|b| [0, 0, b[0], b[1]]).collect()
}

#[test]
fn sharded_bf16_converts_exactly_to_bf16_and_f32() {
    let model_dir = fixtures().join("tiny-phi-sharded-bf16");
    let shards: Vec<Vec<u8>> = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        .iter()
        .map(|name| std::fs::read(model_dir.join(name)).unwrap())
        .collect();
    let shards: Vec<SafeTensors<'_>> = shards.iter().map(|bytes| SafeTensors::deserialize(bytes).unwrap()).collect();
    let source = |name: &str| {
        shards.iter().find_map(|s| s.tensor(name).ok()).unwrap_or_else(|| panic!("no source tensor {name}"))
    };

    let dir = tempfile::tempdir().unwrap();
    for out_type in [OutType::Bf16, OutType::F32] {
        let (output, summary) = convert_fixture("tiny-phi-sharded-bf16", out_type, dir.path());
        assert_eq!(summary.source_dtype, SourceDtype::Bf16);
        let file = GgufFile::open(&output).unwrap();
        assert_eq!(file.get_u32("general.file_type"), Some(out_type.llama_ftype()));
        assert_eq!(file.tensors().len(), 33);
        // The reference converter's order: shard 1's tensors sorted by name, then shard 2's (lm_head).
        let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(&names[..3], ["token_embd.weight", "output_norm.bias", "output_norm.weight"]);
        assert_eq!(&names[31..], ["output.bias", "output.weight"]);
        for tensor in file.tensors() {
            let stored = source(&transformers_name(&tensor.name));
            let expected_dims: Vec<u64> = stored.shape().iter().rev().map(|&d| d as u64).collect();
            assert_eq!(tensor.dims, expected_dims, "{}", tensor.name);
            let data = file.tensor_data(tensor);
            if tensor.dims.len() == 1 || out_type == OutType::F32 {
                assert_eq!(tensor.ggml_type, GgmlType::F32, "{}", tensor.name);
                assert!(data == widen_bf16(stored.data()), "{} is not the exact widening", tensor.name);
            } else {
                assert_eq!(tensor.ggml_type, GgmlType::Bf16, "{}", tensor.name);
                assert!(data == stored.data(), "{} does not keep the bf16 bytes", tensor.name);
            }
        }
    }
}

/// f16 values of a reference tensor as f32.
fn f16_values(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
}

#[test]
fn q8_0_quantizes_weights_and_keeps_vectors_f32() {
    let dir = tempfile::tempdir().unwrap();
    let (output, _) = convert_fixture("tiny-phi", OutType::Q8_0, dir.path());
    let file = GgufFile::open(&output).unwrap();
    let reference = GgufFile::open(reference_path()).unwrap();
    assert_eq!(file.get_u32("general.file_type"), Some(7));
    for (tensor, reference_tensor) in file.tensors().iter().zip(reference.tensors()) {
        assert_eq!(tensor.name, reference_tensor.name);
        if tensor.dims.len() == 1 {
            assert_eq!(tensor.ggml_type, GgmlType::F32, "{}", tensor.name);
            assert!(file.tensor_data(tensor) == reference.tensor_data(reference_tensor));
            continue;
        }
        assert_eq!(tensor.ggml_type, GgmlType::Q8_0, "{}", tensor.name);
        // Dequantized values are within half a step of the f16 originals (plus the f16 rounding of the scale).
        let originals = f16_values(reference.tensor_data(reference_tensor));
        for (block, values) in file.tensor_data(tensor).chunks_exact(34).zip(originals.chunks_exact(32)) {
            let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
            let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (&q, &x) in block[2..].iter().zip(values) {
                let error = (x - d * f32::from(q as i8)).abs();
                assert!(
                    error <= amax / 127.0 * 0.5 + amax * 1e-3,
                    "{}: {x} vs {}",
                    tensor.name,
                    d * f32::from(q as i8)
                );
            }
        }
    }
}

#[test]
fn inspect_describes_without_converting() {
    let cases = [
        ("tiny-phi", Layout::Transformers, SourceDtype::F16, 1),
        ("tiny-phi-legacy", Layout::PhiMsft, SourceDtype::F32, 1),
        ("tiny-phi-sharded-bf16", Layout::Transformers, SourceDtype::Bf16, 2),
    ];
    for (model, layout, dtype, files) in cases {
        let info = inspect(&fixtures().join(model)).unwrap();
        assert_eq!((info.layout, info.source_dtype, info.weight_files.len()), (layout, dtype, files), "{model}");
        assert_eq!((info.tensor_count, info.parameter_count), (33, 6_704_640), "{model}");
        assert_eq!((info.config.hidden_size, info.config.num_layers, info.config.rope_dims), (64, 2, 8), "{model}");
    }
}

#[test]
fn converting_twice_replaces_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = convert_fixture("tiny-phi", OutType::F16, dir.path());
    let (second, _) = convert_fixture("tiny-phi", OutType::F16, dir.path());
    assert_eq!(first, second);
    assert_eq!(support::files_in(dir.path()), ["tiny-phi.f16.gguf"]);
    assert!(Path::new(&second).is_file());
}
