//! Every kind of bad input fails before anything is written, with a one-line message that names the file and
//! the problem, and leaves no output (nor temporary) file behind.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use std::path::Path;

use phi_converters::gguf::{GgmlType, GgufFile};
use phi_converters::{convert, ConvertError, ConvertOptions, OutType, TokenizerOrigin, TokenizerSource};
use safetensors::tensor::Dtype;
use support::{
    f16_tensor, files_in, fixture_tokenizer, fixtures, tiny_config, write_safetensors, write_tiny_checkpoint,
    StoredTensor, HIDDEN, INNER,
};

fn with_tokenizer(out_type: OutType) -> ConvertOptions {
    ConvertOptions { out_type, tokenizer: Some(fixture_tokenizer()), fallback_tokenizer: None }
}

/// Converts `input` into an empty directory, expects failure, and checks the message and the directory.
fn expect_failure(input: &Path, options: &ConvertOptions, needles: &[&str]) -> String {
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("out.gguf");
    let error = convert(input, &output, options, &mut |_| {}).expect_err("conversion should fail");
    let message = error.to_string();
    assert_eq!(message.lines().count(), 1, "not one line: {message}");
    for needle in needles {
        assert!(message.contains(needle), "`{message}` should contain `{needle}`");
    }
    assert!(files_in(out_dir.path()).is_empty(), "left behind: {:?}", files_in(out_dir.path()));
    message
}

fn tiny_checkpoint(edit: impl FnOnce(&mut Vec<StoredTensor>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_checkpoint(dir.path(), edit);
    dir
}

fn write_config(dir: &Path, config: &serde_json::Value) {
    std::fs::write(dir.join("config.json"), serde_json::to_vec(config).unwrap()).unwrap();
}

#[test]
fn the_tiny_checkpoint_itself_converts() {
    // The baseline for the cases below; with Q8_0 it also shows the F16 fallback for rows that are not whole
    // Q8_0 blocks (HIDDEN = 8) next to Q8_0 rows (fc2's rows are INNER = 32 long).
    let input = tiny_checkpoint(|_| {});
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("tiny.gguf");
    let summary = convert(input.path(), &output, &with_tokenizer(OutType::Q8_0), &mut |_| {}).unwrap();
    assert_eq!(summary.tokenizer, TokenizerOrigin::Explicit(fixtures().join("tiny-phi")));
    let file = GgufFile::open(&output).unwrap();
    let type_of = |name: &str| file.tensor(name).unwrap().ggml_type;
    assert_eq!(type_of("blk.0.ffn_down.weight"), GgmlType::Q8_0);
    assert_eq!(type_of("blk.0.ffn_up.weight"), GgmlType::F16);
    assert_eq!(type_of("token_embd.weight"), GgmlType::F16);
    assert_eq!(type_of("blk.0.ffn_up.bias"), GgmlType::F32);
    assert_eq!(file.get_u32("general.file_type"), Some(7));
    assert_eq!(file.get_u32("phi2.feed_forward_length"), Some(INNER as u32));
    assert_eq!(file.get_u32("phi2.rope.dimension_count"), Some(2));
    assert_eq!(files_in(out_dir.path()), ["tiny.gguf"]);
}

#[test]
fn missing_config() {
    let input = tiny_checkpoint(|_| {});
    std::fs::remove_file(input.path().join("config.json")).unwrap();
    let path = input.path().join("config.json");
    expect_failure(input.path(), &with_tokenizer(OutType::F16), &[&path.display().to_string(), "cannot read file"]);
}

#[test]
fn malformed_config() {
    let input = tiny_checkpoint(|_| {});
    std::fs::write(input.path().join("config.json"), "{\"hidden_size\": 8,").unwrap();
    expect_failure(input.path(), &with_tokenizer(OutType::F16), &["config.json: invalid JSON"]);
}

#[test]
fn unknown_model_type_and_unsupported_features() {
    let input = tiny_checkpoint(|_| {});
    let mut config = tiny_config();
    config["model_type"] = "llama".into();
    write_config(input.path(), &config);
    expect_failure(input.path(), &with_tokenizer(OutType::F16), &["config.json: unsupported model_type `llama`"]);

    let mut config = tiny_config();
    config["qk_layernorm"] = true.into();
    write_config(input.path(), &config);
    expect_failure(input.path(), &with_tokenizer(OutType::F16), &["config.json: unsupported: qk_layernorm"]);

    let mut config = tiny_config();
    config.as_object_mut().unwrap().remove("hidden_size");
    write_config(input.path(), &config);
    expect_failure(input.path(), &with_tokenizer(OutType::F16), &["config.json: missing key `hidden_size`"]);
}

#[test]
fn missing_tensor() {
    let input = tiny_checkpoint(|tensors| tensors.retain(|t| t.name != "model.layers.0.mlp.fc2.bias"));
    expect_failure(
        input.path(),
        &with_tokenizer(OutType::F16),
        &["model.safetensors: missing tensors: `model.layers.0.mlp.fc2.bias`"],
    );
}

#[test]
fn unexpected_tensors_are_never_dropped() {
    let input = tiny_checkpoint(|tensors| {
        tensors.push(f16_tensor("model.layers.0.mlp.gate.weight", &[4, HIDDEN]));
        // A layer the config does not have.
        tensors.push(f16_tensor("model.layers.1.input_layernorm.weight", &[HIDDEN]));
    });
    expect_failure(
        input.path(),
        &with_tokenizer(OutType::F16),
        &[
            "model.safetensors: unexpected tensors",
            "`model.layers.0.mlp.gate.weight`",
            "`model.layers.1.input_layernorm.weight`",
        ],
    );
}

#[test]
fn rotary_frequency_buffers_are_ignored() {
    let input = tiny_checkpoint(|tensors| {
        let mut inv_freq = f16_tensor("model.layers.0.self_attn.rotary_emb.inv_freq", &[1]);
        inv_freq.dtype = Dtype::F64; // not even a supported dtype: it is not read at all
        inv_freq.data = 1.0f64.to_le_bytes().to_vec();
        tensors.push(inv_freq);
    });
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("out.gguf");
    let summary = convert(input.path(), &output, &with_tokenizer(OutType::F16), &mut |_| {}).unwrap();
    assert_eq!(summary.tensor_count, 19);
}

#[test]
fn mixed_layouts() {
    let input = tiny_checkpoint(|tensors| tensors.push(f16_tensor("transformer.h.0.ln.weight", &[HIDDEN])));
    expect_failure(input.path(), &with_tokenizer(OutType::F16), &["model.safetensors: mixes transformers"]);
}

#[test]
fn shape_mismatch() {
    let input = tiny_checkpoint(|tensors| {
        let fc1 = tensors.iter_mut().find(|t| t.name == "model.layers.0.mlp.fc1.weight").unwrap();
        *fc1 = f16_tensor("model.layers.0.mlp.fc1.weight", &[INNER - 1, HIDDEN]);
    });
    expect_failure(
        input.path(),
        &with_tokenizer(OutType::F16),
        &["model.safetensors: tensor `model.layers.0.mlp.fc1.weight` has shape [31, 8], expected [32, 8]"],
    );
}

#[test]
fn truncated_safetensors_header() {
    let input = tiny_checkpoint(|_| {});
    let weights = input.path().join("model.safetensors");
    // A header length of 1000, then only 4 bytes of header.
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{\"a\"");
    std::fs::write(&weights, &bytes).unwrap();
    expect_failure(
        input.path(),
        &with_tokenizer(OutType::F16),
        &["model.safetensors: truncated header (file is 12 bytes"],
    );

    std::fs::write(&weights, b"abc").unwrap();
    expect_failure(
        input.path(),
        &with_tokenizer(OutType::F16),
        &["model.safetensors: truncated header (file is 3 bytes)"],
    );
}

#[test]
fn corrupt_safetensors_header() {
    let input = tiny_checkpoint(|_| {});
    let header = b"{this is not json}";
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    std::fs::write(input.path().join("model.safetensors"), &bytes).unwrap();
    expect_failure(input.path(), &with_tokenizer(OutType::F16), &["model.safetensors: corrupt header"]);
}

#[test]
fn unsupported_dtypes() {
    for (dtype, name, size) in [(Dtype::I32, "I32", 4), (Dtype::F64, "F64", 8)] {
        let input = tiny_checkpoint(|tensors| {
            let bias = tensors.iter_mut().find(|t| t.name == "model.layers.0.mlp.fc2.bias").unwrap();
            bias.dtype = dtype;
            bias.data = vec![0; HIDDEN * size];
        });
        expect_failure(
            input.path(),
            &with_tokenizer(OutType::F16),
            &[&format!(
                "model.safetensors: tensor `model.layers.0.mlp.fc2.bias` has dtype {name}; only F32, F16 and BF16"
            )],
        );
    }
}

#[test]
fn output_directory_missing_or_unusable() {
    let input = tiny_checkpoint(|_| {});
    let out_dir = tempfile::tempdir().unwrap();

    let missing = out_dir.path().join("missing-dir/out.gguf");
    let message = convert(input.path(), &missing, &with_tokenizer(OutType::F16), &mut |_| {}).unwrap_err().to_string();
    assert!(message.ends_with("missing-dir: output directory does not exist"), "{message}");

    let a_file = out_dir.path().join("file");
    std::fs::write(&a_file, b"").unwrap();
    let message = convert(input.path(), &a_file.join("out.gguf"), &with_tokenizer(OutType::F16), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(message.contains("file: output directory is not a directory"), "{message}");

    let message =
        convert(input.path(), out_dir.path(), &with_tokenizer(OutType::F16), &mut |_| {}).unwrap_err().to_string();
    assert!(message.contains("output is a directory"), "{message}");
    assert_eq!(files_in(out_dir.path()), ["file"]);
}

#[cfg(unix)]
#[test]
fn output_directory_not_writable() {
    use std::os::unix::fs::PermissionsExt;
    let input = tiny_checkpoint(|_| {});
    let out_dir = tempfile::tempdir().unwrap();
    let read_only = out_dir.path().join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o555)).unwrap();
    // root writes anywhere; then there is nothing to observe.
    let probe = read_only.join("probe");
    if std::fs::write(&probe, b"").is_ok() {
        std::fs::remove_file(&probe).unwrap();
        eprintln!("skipped: permissions are not enforced for this user");
        return;
    }
    let error =
        convert(input.path(), &read_only.join("out.gguf"), &with_tokenizer(OutType::F16), &mut |_| {}).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("read-only: cannot create a file in the output directory"), "{message}");
    assert!(files_in(&read_only).is_empty());
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn non_native_out_type() {
    let input = tiny_checkpoint(|_| {});
    let error = convert(input.path(), Path::new("/nonexistent/out.gguf"), &with_tokenizer(OutType::Q4KM), &mut |_| {})
        .unwrap_err();
    assert!(matches!(error, ConvertError::NonNativeOutType { .. }));
    expect_failure(
        input.path(),
        &with_tokenizer(OutType::Q4KM),
        &["out type `q4_k_m` is not written by the converter"],
    );
}

#[test]
fn tokenizer_missing_or_from_elsewhere() {
    let input = tiny_checkpoint(|_| {});
    let no_tokenizer = ConvertOptions { out_type: OutType::F16, tokenizer: None, fallback_tokenizer: None };
    expect_failure(
        input.path(),
        &no_tokenizer,
        &[&input.path().display().to_string(), "no tokenizer.json in the checkpoint"],
    );

    // An explicit tokenizer directory without tokenizer.json.
    let empty = tempfile::tempdir().unwrap();
    let options =
        ConvertOptions { tokenizer: Some(TokenizerSource::Dir(empty.path().to_path_buf())), ..no_tokenizer.clone() };
    expect_failure(
        input.path(),
        &options,
        &[&empty.path().join("tokenizer.json").display().to_string(), "cannot read tokenizer"],
    );

    // The fallback is used when the checkpoint has none.
    let tokenizer_json: &'static [u8] =
        Box::leak(std::fs::read(fixtures().join("tiny-phi/tokenizer.json")).unwrap().into_boxed_slice());
    let tokenizer_config_json: &'static [u8] =
        Box::leak(std::fs::read(fixtures().join("tiny-phi/tokenizer_config.json")).unwrap().into_boxed_slice());
    let options = ConvertOptions {
        fallback_tokenizer: Some(TokenizerSource::Bundled { tokenizer_json, tokenizer_config_json }),
        ..no_tokenizer
    };
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("out.gguf");
    let summary = convert(input.path(), &output, &options, &mut |_| {}).unwrap();
    assert_eq!(summary.tokenizer, TokenizerOrigin::Fallback("the bundled phi-1 tokenizer".to_owned()));
    let file = GgufFile::open(&output).unwrap();
    assert_eq!(file.get_u32("tokenizer.ggml.eos_token_id"), Some(50256));
}

#[test]
fn tokenizer_larger_than_the_vocabulary() {
    let input = tiny_checkpoint(|tensors| {
        for t in tensors.iter_mut().filter(|t| t.shape[0] == support::VOCAB) {
            let mut shape = t.shape.clone();
            shape[0] = 50000;
            *t = f16_tensor(&t.name, &shape);
        }
    });
    let mut config = tiny_config();
    config["vocab_size"] = 50000.into();
    write_config(input.path(), &config);
    expect_failure(
        input.path(),
        &with_tokenizer(OutType::F16),
        &["tokenizer.json: the tokenizer has token id 50294 but the model's vocab_size is 50000"],
    );
}

#[test]
fn inconsistent_shard_index() {
    let input = tiny_checkpoint(|_| {});
    let single = input.path().join("model.safetensors");
    let shard = input.path().join("model-00001-of-00001.safetensors");
    std::fs::rename(&single, &shard).unwrap();
    let mut weight_map: serde_json::Map<String, serde_json::Value> = support::tiny_tensor_shapes()
        .into_iter()
        .map(|(name, _)| (name, "model-00001-of-00001.safetensors".into()))
        .collect();
    weight_map.insert("lm_head.bias".into(), "model-00002-of-00002.safetensors".into());
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(input.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    expect_failure(
        input.path(),
        &with_tokenizer(OutType::F16),
        &["model.safetensors.index.json: tensor `lm_head.bias` is in model-00001-of-00001.safetensors but the index lists it in model-00002-of-00002.safetensors"],
    );

    weight_map.insert("lm_head.bias".into(), "model-00001-of-00001.safetensors".into());
    weight_map.insert("model.extra".into(), "model-00002-of-00002.safetensors".into());
    let index = serde_json::json!({ "weight_map": weight_map });
    std::fs::write(input.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    expect_failure(input.path(), &with_tokenizer(OutType::F16), &["model-00002-of-00002.safetensors: cannot open"]);
    weight_map.remove("model.extra");

    weight_map.insert("lm_head.bias".into(), "../elsewhere.safetensors".into());
    let index = serde_json::json!({ "weight_map": weight_map });
    std::fs::write(input.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    expect_failure(
        input.path(),
        &with_tokenizer(OutType::F16),
        &["model.safetensors.index.json", "not a file in this directory"],
    );

    weight_map.remove("lm_head.bias");
    let index = serde_json::json!({ "weight_map": weight_map });
    std::fs::write(input.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    expect_failure(
        input.path(),
        &with_tokenizer(OutType::F16),
        &["model.safetensors.index.json: tensor `lm_head.bias` in model-00001-of-00001.safetensors is not listed in the index"],
    );
}

#[test]
fn no_weights() {
    let input = tiny_checkpoint(|_| {});
    std::fs::remove_file(input.path().join("model.safetensors")).unwrap();
    std::fs::write(input.path().join("pytorch_model.bin"), b"").unwrap();
    expect_failure(
        input.path(),
        &with_tokenizer(OutType::F16),
        &["no model.safetensors", ".bin checkpoints are not supported"],
    );
}

/// A tiny phi-msft checkpoint with `kv_heads` key/value heads (2 query heads of 4 channels) and the Wqkv shape
/// the config implies, unless `qkv_rows` overrides it.
fn legacy_checkpoint(kv_heads: usize, qkv_rows: Option<usize>) -> tempfile::TempDir {
    let input = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "model_type": "phi-msft", "architectures": ["PhiForCausalLM"], "n_embd": HIDDEN, "n_layer": 1, "n_head": 2,
        "n_head_kv": kv_heads, "n_inner": INNER, "n_positions": 128, "rotary_dim": 2, "layer_norm_epsilon": 1e-5,
        "vocab_size": support::VOCAB
    });
    write_config(input.path(), &config);
    let qkv = qkv_rows.unwrap_or(HIDDEN + 2 * kv_heads * HIDDEN / 2);
    let tensors: Vec<StoredTensor> = [
        ("transformer.embd.wte.weight", vec![support::VOCAB, HIDDEN]),
        ("transformer.h.0.ln.weight", vec![HIDDEN]),
        ("transformer.h.0.ln.bias", vec![HIDDEN]),
        ("transformer.h.0.mixer.Wqkv.weight", vec![qkv, HIDDEN]),
        ("transformer.h.0.mixer.Wqkv.bias", vec![qkv]),
        ("transformer.h.0.mixer.out_proj.weight", vec![HIDDEN, HIDDEN]),
        ("transformer.h.0.mixer.out_proj.bias", vec![HIDDEN]),
        ("transformer.h.0.mlp.fc1.weight", vec![INNER, HIDDEN]),
        ("transformer.h.0.mlp.fc1.bias", vec![INNER]),
        ("transformer.h.0.mlp.fc2.weight", vec![HIDDEN, INNER]),
        ("transformer.h.0.mlp.fc2.bias", vec![HIDDEN]),
        ("lm_head.ln.weight", vec![HIDDEN]),
        ("lm_head.ln.bias", vec![HIDDEN]),
        ("lm_head.linear.weight", vec![support::VOCAB, HIDDEN]),
        ("lm_head.linear.bias", vec![support::VOCAB]),
    ]
    .iter()
    .map(|(name, shape)| f16_tensor(name, shape))
    .collect();
    write_safetensors(&input.path().join("model.safetensors"), &tensors);
    input
}

#[test]
fn legacy_fused_qkv_splits_into_row_blocks_also_with_fewer_kv_heads() {
    let input = legacy_checkpoint(1, None);
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("out.gguf");
    convert(input.path(), &output, &with_tokenizer(OutType::F16), &mut |_| {}).unwrap();
    let file = GgufFile::open(&output).unwrap();
    assert_eq!(file.get_u32("phi2.attention.head_count_kv"), Some(1));
    let wqkv = f16_tensor("w", &[HIDDEN + 4 + 4, HIDDEN]).data;
    let bias = f16_tensor("b", &[HIDDEN + 4 + 4]).data;
    let row_bytes = HIDDEN * 2;
    for (name, rows, dims) in [
        ("attn_q", 0..HIDDEN, vec![HIDDEN as u64, HIDDEN as u64]),
        ("attn_k", HIDDEN..HIDDEN + 4, vec![HIDDEN as u64, 4]),
        ("attn_v", HIDDEN + 4..HIDDEN + 8, vec![HIDDEN as u64, 4]),
    ] {
        let weight = file.tensor(&format!("blk.0.{name}.weight")).unwrap();
        assert_eq!(weight.dims, dims, "{name}");
        assert!(file.tensor_data(weight) == &wqkv[rows.start * row_bytes..rows.end * row_bytes], "{name}");
        // Biases are F32: the f16 values widened.
        let stored = &bias[rows.start * 2..rows.end * 2];
        let widened: Vec<u8> = stored
            .chunks_exact(2)
            .flat_map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32().to_le_bytes())
            .collect();
        assert_eq!(file.tensor_data(file.tensor(&format!("blk.0.{name}.bias")).unwrap()), &widened[..], "{name}");
    }
}

#[test]
fn legacy_fused_qkv_with_the_wrong_shape() {
    let input = legacy_checkpoint(2, Some(3 * HIDDEN - 1));
    expect_failure(
        input.path(),
        &with_tokenizer(OutType::F16),
        &["model.safetensors: tensor `transformer.h.0.mixer.Wqkv.bias` has shape [23], expected [24]"],
    );
}

#[test]
fn legacy_missing_tensors_are_named_in_the_legacy_layout() {
    let input = legacy_checkpoint(2, None);
    let tensors = vec![f16_tensor("transformer.embd.wte.weight", &[support::VOCAB, HIDDEN])];
    write_safetensors(&input.path().join("model.safetensors"), &tensors);
    expect_failure(
        input.path(),
        &with_tokenizer(OutType::F16),
        &["missing tensors", "`lm_head.linear.weight`", "`transformer.h.0.mixer.Wqkv.weight`"],
    );
}
