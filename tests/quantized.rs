//! Quantized layers (docs/tree.md 7.3): the fixtures of tests/fixtures/quant/gen_quant.py (made
//! by bitsandbytes, compressed-tensors and the reproduced AutoGPTQ, AutoAWQ and MLX packings),
//! mounted for real; each `dequantized/` weight read with `cat`-like whole reads and at odd
//! offsets against the reference dequantizer's float32 values; `model.safetensors` mirrors the
//! stored parts; `wfs convert --dequantize` read back by the `safetensors` package
//! (tests/safetensors_check.py) holds the mount's values in place of the parts.

use crate::common::*;
use serde_json::Value;
use std::process::Command;

const CASES: [&str; 11] =
    ["gptq4", "gptq3", "gptq2_v2", "gptq8", "awq", "bnb", "ct_w4_group_asym", "ct_w8_channel_sym", "ct_fp8_channel", "fp8_block", "mlx"];

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// `got` equals `want` exactly, or rounds to it in the reference's own dtype (the reference
/// computed in float16 or bfloat16: within half a unit in its last place).
fn assert_values(got: &[f32], want: &[f32], tolerance: &str, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: element count");
    let mantissa = match tolerance {
        "exact" => None,
        "float16" => Some(10),
        "bfloat16" => Some(7),
        other => panic!("unknown tolerance {other}"),
    };
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = match mantissa {
            None => g.to_bits() == w.to_bits(),
            Some(m) => (g - w).abs() <= w.abs().max(f32::MIN_POSITIVE) * 2f32.powi(-m - 1) * 1.0001,
        };
        assert!(ok, "{what}[{i}]: {g} where the reference gives {w} ({tolerance})");
    }
}

fn tree_path(name: &str) -> String {
    format!("dequantized/{}", name.replace('.', "/"))
}

fn expect(case: &str) -> Value {
    load_json(&fixture(&format!("quant/{case}/expect.json")))
}

fn want_values(case: &str, name: &str) -> Vec<f32> {
    floats(&std::fs::read(fixture(&format!("quant/{case}/expect/{name}.f32"))).unwrap())
}

#[test]
fn dequantized_weights_equal_the_reference_dequantizers() {
    for case in CASES {
        let expect = expect(case);
        let mount = Mount::new(&fixture(&format!("quant/{case}/model.safetensors")), &[]);
        let tsv = mount.text("tensors.tsv");
        for layer in expect["layers"].as_array().unwrap() {
            let name = layer["name"].as_str().unwrap();
            let path = tree_path(name);
            let shape: Vec<String> = layer["shape"].as_array().unwrap().iter().map(|d| d.to_string()).collect();
            let want = want_values(case, name);
            let raw = mount.read(&format!("{path}.raw"));
            assert_values(&floats(&raw), &want, layer["tolerance"].as_str().unwrap(), &format!("{case} {name}"));
            let npy = mount.read(&format!("{path}.npy"));
            assert_eq!(&npy[npy.len() - raw.len()..], &raw[..], "{case} {name}: .npy data = .raw");
            assert_eq!(mount.text(&format!("{path}.shape")), format!("{}\n", shape.join(",")));
            assert_eq!(mount.text(&format!("{path}.dtype")), "float32\n");
            let row = format!("{path}.npy\tfloat32\t{}\t{}\t{name}\n", shape.join(","), raw.len());
            assert!(tsv.contains(&row), "{case}: tensors.tsv lacks {row:?}");
            assert_eq!(xattr_text(&mount.path(&format!("{path}.npy")), "user.wfs.name"), name);
            // Reads at odd offsets and lengths decode the same values as one whole read.
            let file = std::fs::File::open(mount.path(&format!("{path}.raw"))).unwrap();
            for (offset, len) in [(1usize, 7usize), (raw.len() / 3, 4099), (raw.len().saturating_sub(5), 5)] {
                let len = len.min(raw.len() - offset);
                let mut part = vec![0u8; len];
                std::os::unix::fs::FileExt::read_exact_at(&file, &mut part, offset as u64).unwrap();
                assert_eq!(part, raw[offset..offset + len], "{case} {name} at {offset}+{len}");
            }
        }
        let info: Value = serde_json::from_slice(&mount.read("info.json")).unwrap();
        for (key, value) in expect["quantization"].as_object().unwrap() {
            assert_eq!(&info["quantization"][key], value, "{case}: info.json quantization.{key}");
        }
        assert_eq!(info["quantization"]["layers"], expect["layers"].as_array().unwrap().len(), "{case}");
        let skipped: Vec<&str> = info.get("skipped").and_then(Value::as_array).into_iter().flatten().map(|s| s["name"].as_str().unwrap()).collect();
        let want_skipped: Vec<&str> = expect["skipped"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        assert_eq!(skipped, want_skipped, "{case}: skipped layers");
        // The stored parts stay, byte for byte, in tensors/.
        for part in expect["parts"].as_array().unwrap() {
            assert!(tsv.contains(&format!("\t{}\n", part.as_str().unwrap())), "{case}: {part} not in tensors.tsv");
        }
    }
}

/// What tests/safetensors_check.py reads from a file: its keys and each tensor's sha256.
fn checked(path: &std::path::Path) -> Vec<(String, String)> {
    let out = Command::new("python3").arg(repo().join("tests/safetensors_check.py")).arg(path).output().unwrap();
    assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["tensors"].as_array().unwrap().iter().map(|t| (t["name"].as_str().unwrap().to_string(), t["sha256"].as_str().unwrap().to_string())).collect()
}

#[test]
fn model_safetensors_mirrors_the_parts_and_convert_dequantize_writes_the_values() {
    for case in CASES {
        let expect = expect(case);
        let source = fixture(&format!("quant/{case}/model.safetensors"));
        let mount = Mount::new(&source, &[]);
        let layers: Vec<&str> = expect["layers"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
        let parts: Vec<&str> = expect["parts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();

        // Every tensor of the tree by name: the sha256 of its .raw, and whether it is dequantized.
        let tree: Vec<(String, String, bool)> = tsv_rows(&mount)
            .into_iter()
            .map(|row| {
                let raw = mount.read(&format!("{}.raw", row[0].rsplit_once('.').unwrap().0));
                (row[4].clone(), sha256_hex(&raw), row[0].starts_with("dequantized/"))
            })
            .collect();

        // The mount's model.safetensors holds what the source stores, nothing dequantized.
        let mut mirrored = checked(&mount.path("model.safetensors"));
        let mut stored: Vec<(String, String)> = tree.iter().filter(|t| !t.2).map(|t| (t.0.clone(), t.1.clone())).collect();
        mirrored.sort();
        stored.sort();
        assert_eq!(mirrored, stored, "{case}: model.safetensors mirrors the stored tensors");

        let out = mount.dir.path().join("dequantized.safetensors");
        let status = wfs().arg("convert").arg("--dequantize").arg(&source).arg(&out).status().unwrap();
        assert!(status.success(), "{case}: convert --dequantize");
        let written = checked(&out);
        for (name, sha) in &written {
            let dequantized = layers.contains(&name.as_str());
            assert!(dequantized || !parts.contains(&name.as_str()), "{case}: {name} is a stored part");
            assert!(tree.iter().any(|(n, s, d)| n == name && s == sha && *d == dequantized), "{case}: {name} holds the mount's bytes");
        }
        for layer in &layers {
            assert!(written.iter().any(|(n, _)| n == layer), "{case}: convert --dequantize lacks {layer}");
        }
    }
}
