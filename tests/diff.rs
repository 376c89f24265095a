//! `wfs diff` run as a user runs it, on pairs written by torch, safetensors, gguf-py and Keras
//! (tests/fixtures/gen/make_diff.py, make_diff_keras.py): rows against numpy's statistics
//! (diff.expect.json), exit codes, the JSON schema, matching modes and the map.

use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Output, Stdio};

fn diff_fixture(name: &str) -> String {
    fixture("diff").join(name).to_str().unwrap().to_string()
}

fn run(args: &[&str]) -> Output {
    wfs().arg("diff").args(args).output().unwrap()
}

/// `wfs diff --json A B ARGS`: the document, after checking the exit status.
fn json_diff(a: &str, b: &str, args: &[&str], code: i32) -> Value {
    let out = run(&[&["--json", &diff_fixture(a), &diff_fixture(b)], args].concat());
    assert_eq!(out.status.code(), Some(code), "{a} {b} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The row pairing A's tensor `a` (and B's `b`, when given), else panics.
fn row<'a>(doc: &'a Value, a: &str, b: Option<&str>) -> &'a Value {
    doc["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["a"]["name"] == a && b.is_none_or(|b| r["b"]["name"] == b))
        .unwrap_or_else(|| panic!("no row for {a} {b:?} in {doc:#}"))
}

fn close_to(got: &Value, want: &Value) -> bool {
    match (got.as_f64(), want.as_f64()) {
        (Some(g), Some(w)) => (g - w).abs() <= 1e-9 * w.abs().max(1e-6),
        _ => got.is_null() && want.is_null(),
    }
}

/// A row against numpy's expectation: status, counts and transposition exactly, the
/// statistics to float64 summation order.
fn check_row(got: &Value, want: &Value, what: &str) {
    for key in ["status", "elements", "differing", "transposed"] {
        assert_eq!(got[key], want[key], "{what}: {key} in {got:#}");
    }
    for key in ["max_abs", "max_rel", "rms", "cosine"] {
        assert!(close_to(&got[key], &want[key]), "{what}: {key} is {} where numpy says {}", got[key], want[key]);
    }
}

fn expect() -> Value {
    load_json(&fixture("diff/diff.expect.json"))
}

#[test]
fn rows_match_numpy_for_every_pair() {
    let expect = expect();
    let mut checked = 0;
    for (pair, rows) in expect.as_object().unwrap().iter().filter(|(_, v)| v.is_object()) {
        let (a, b) = pair.split_once(' ').unwrap();
        let order = a.starts_with("order");
        let args: &[&str] = if order { &["--match", "order"] } else if a.starts_with("special") { &["--map", &diff_fixture("special.map")] } else { &[] };
        let differs = rows.as_object().unwrap().values().any(|r| r["status"] == "different") || a.starts_with("special");
        let doc = json_diff(a, b, args, if differs { 1 } else { 0 });
        for (key, want) in rows.as_object().unwrap() {
            let what = format!("{pair}: {key}");
            if let Some(name) = key.strip_suffix(" --nan-equal") {
                let doc = json_diff(a, b, &["--nan-equal", "--only", name], 0);
                check_row(row(&doc, name, None), want, &what);
            } else {
                let (name_a, name_b) = key.split_once(' ').map_or((key.as_str(), None), |(x, y)| (x, Some(y)));
                check_row(row(&doc, name_a, name_b), want, &what);
            }
            checked += 1;
        }
    }
    assert!(checked >= 34, "only {checked} rows checked");
}

#[test]
fn a_q8_0_quantization_stays_within_the_format_s_bound() {
    let expect = expect();
    let doc = json_diff("f32.gguf", "q8_0.gguf", &[], 1);
    for (name, want) in expect["f32.gguf q8_0.gguf"].as_object().unwrap() {
        let got = row(&doc, name, None);
        match want["bound"].as_f64() {
            Some(bound) => {
                assert_eq!(got["b"]["dtype"], "q8_0");
                assert!(got["max_abs"].as_f64().unwrap() <= bound, "{name}: {got:#}");
                // Within the bound as an absolute tolerance, the pair is close: exit status 0.
                let bound = bound.to_string();
                let doc = json_diff("f32.gguf", "q8_0.gguf", &["--only", name, "--rtol", "0", "--atol", &bound], 0);
                assert_eq!(row(&doc, name, None)["status"], "close");
            }
            None => assert_eq!(got["status"], "equal", "{name}"),
        }
    }
}

#[test]
fn the_text_report_has_a_row_per_tensor_and_a_summary() {
    let out = run(&["--map", &diff_fixture("special.map"), &diff_fixture("special_a.safetensors"), &diff_fixture("special_b.safetensors")]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 18, "{text}");
    assert_eq!(*lines.last().unwrap(), "17 tensors: 6 equal, 2 close, 6 different, 1 only in A, 1 only in B, 1 shapes differ, 0 dtypes incomparable");
    let line = |start: &str| *lines.iter().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no line {start}: {text}"));
    assert_eq!(line("equal      old.name = new.name"), "equal      old.name = new.name  float32 [7]");
    assert_eq!(line("equal      kernel "), "equal      kernel  float32 [3,5] -> float32 [5,3] (transposed)");
    assert_eq!(line("shape "), "shape      shape  float32 [2,6] -> float32 [3,4]");
    assert_eq!(line("only-a"), "only-a     only_a  float32 [3]");
    assert_eq!(line("only-b"), "only-b     only_b  float32 [3]");
    assert!(line("different  nan_same").contains("differing 2/6"), "{text}");
    assert!(line("close      to_half").starts_with("close      to_half  float32 [8] -> float16 [8]  differing 0/8"), "{text}");
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn json_has_the_sources_options_rows_and_summary() {
    let doc = json_diff("step0.safetensors", "step1.safetensors", &["--rtol", "0.5", "--atol", "0"], 1);
    let keys: Vec<&str> = doc.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["a", "b", "match", "rtol", "atol", "nan_equal", "tensors", "summary"]);
    assert_eq!((doc["a"].as_str().unwrap(), doc["match"].as_str().unwrap()), (diff_fixture("step0.safetensors").as_str(), "name"));
    assert_eq!((doc["rtol"].as_f64(), doc["atol"].as_f64(), doc["nan_equal"].as_bool()), (Some(0.5), Some(0.0), Some(false)));
    let summary = doc["summary"].as_object().unwrap();
    let keys: Vec<&str> = summary.keys().map(String::as_str).collect();
    assert_eq!(keys, ["tensors", "equal", "close", "different", "only_a", "only_b", "shape", "dtype"]);
    let count = |k: &str| summary[k].as_u64().unwrap();
    assert_eq!((count("tensors"), count("equal"), count("close") + count("different")), (6, 2, 4));
    for r in doc["tensors"].as_array().unwrap() {
        let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["status", "a", "b", "transposed", "elements", "differing", "max_abs", "max_rel", "rms", "cosine"]);
        let side: Vec<&str> = r["a"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(side, ["name", "path", "dtype", "shape"]);
    }
    // Tensors only on one side have the other side null and no statistics.
    let doc = json_diff("special_a.safetensors", "special_b.safetensors", &["--only", "only_*"], 1);
    let rows = doc["tensors"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0]["status"].as_str(), rows[0]["b"].is_null(), rows[0].get("rms")), (Some("only-a"), true, None));
    assert_eq!((rows[1]["status"].as_str(), rows[1]["a"].is_null(), rows[1]["b"]["name"].as_str()), (Some("only-b"), true, Some("only_b")));
}

#[test]
fn pairing_by_path_order_shape_and_map() {
    // Keras h5 and .keras: the same names; the PyTorch layout of the same weights pairs by
    // order and by shape, kernels transposed.
    let keras = load_json(&fixture("diff/keras.expect.json"));
    let doc = json_diff("keras_model.h5", "keras_model.keras", &[], 0);
    assert_eq!(doc["summary"]["equal"], 4);
    for by in ["order", "shape"] {
        let doc = json_diff("keras_model.keras", "keras_as_torch.npz", &["--match", by], 0);
        let rows = doc["tensors"].as_array().unwrap();
        assert_eq!(rows.len(), 4, "{by}");
        for (r, (w, torch_name)) in rows.iter().zip(keras["weights"].as_array().unwrap().iter().zip(keras["torch_names"].as_array().unwrap())) {
            assert_eq!((&r["status"], &r["b"]["name"], &r["a"]["shape"]), (&Value::from("equal"), torch_name, &w["shape"]), "{by}: {r:#}");
            assert_eq!(r["transposed"], w["shape"].as_array().unwrap().len() == 2, "{by}: {r:#}");
        }
    }
    // By name the two layouts share nothing.
    let doc = json_diff("keras_model.keras", "keras_as_torch.npz", &[], 1);
    assert_eq!((doc["summary"]["only_a"].as_u64(), doc["summary"]["only_b"].as_u64()), (Some(4), Some(4)));
    // Paths are the tree's: the same for two safetensors files of one model.
    let doc = json_diff("step0.safetensors", "step1.safetensors", &["--match", "path"], 1);
    assert_eq!(row(&doc, "embed.weight", None)["a"]["path"], "tensors/embed/weight");
    assert_eq!(doc["summary"]["tensors"], 6);
    // The map pairs first, by name or tree path; the rest by --match.
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("map");
    std::fs::write(&map, "tensors/a0/kernel\tb2.weight\n").unwrap();
    let doc = json_diff("order_a.safetensors", "order_b.safetensors", &["--map", map.to_str().unwrap(), "--match", "order"], 1);
    assert_eq!(row(&doc, "a0.kernel", Some("b2.weight"))["status"], "shape");
    assert_eq!(row(&doc, "a1.bias", Some("b0.weight"))["status"], "shape");
    assert_eq!(row(&doc, "a2.kernel", Some("b1.bias"))["status"], "shape");
}

#[test]
fn a_mount_s_model_safetensors_equals_its_source() {
    for source in ["keras_model.h5", "torch_sd.pt", "f32.gguf"] {
        let mount = Mount::new(Path::new(&diff_fixture(source)), &[]);
        let out = run(&[&diff_fixture(source), mount.path("model.safetensors").to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{source}: {text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.lines().rev().skip(1).all(|l| l.starts_with("equal ")), "{source}: {text}");
    }
}

#[test]
fn standard_input_is_either_side() {
    let file = std::fs::File::open(diff_fixture("torch_sd.safetensors")).unwrap();
    let out = wfs().args(["diff", "-", &diff_fixture("torch_sd.pt")]).stdin(Stdio::from(file)).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["-", "-"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only one of A and B can be standard input"));
}

#[test]
fn mistakes_are_one_line_with_an_exit_code_of_2_and_up() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (diff_fixture("order_a.safetensors"), diff_fixture("order_b.safetensors"));
    let bad_map = dir.path().join("bad.map");
    std::fs::write(&bad_map, "a0.kernel\n").unwrap();
    let absent_map = dir.path().join("absent.map");
    std::fs::write(&absent_map, "a0.kernel nothing\n").unwrap();
    let not_a_model = dir.path().join("notes.txt");
    std::fs::write(&not_a_model, "not a model\n").unwrap();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["--match", "size", &a, &b], 2, "invalid value 'size'"),
        (vec!["--rtol=-1", &a, &b], 2, "invalid tolerance '-1'"),
        (vec![&a], 2, "required"),
        (vec!["--map", bad_map.to_str().unwrap(), &a, &b], 2, "line 1: expected two names"),
        (vec!["--map", absent_map.to_str().unwrap(), &a, &b], 2, "\"nothing\" names no tensor of B"),
        (vec!["--map", "/nonexistent/map", &a, &b], 2, "/nonexistent/map"),
        (vec![&a, "/nonexistent/model.safetensors"], 3, "/nonexistent/model.safetensors"),
        (vec![not_a_model.to_str().unwrap(), &b], 4, "notes.txt"),
    ];
    for (args, code, says) in cases {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn a_file_against_itself_is_equal_and_nan_only_with_nan_equal() {
    let a = diff_fixture("special_a.safetensors");
    let out = run(&[&a, &a]);
    let text = String::from_utf8_lossy(&out.stdout);
    // nan_same and nan_one hold NaN: they differ from themselves, as numpy.array_equal says.
    assert_eq!(out.status.code(), Some(1), "{text}");
    let different: Vec<&str> = text.lines().filter(|l| l.starts_with("different")).map(|l| l.split_whitespace().nth(1).unwrap()).collect();
    assert_eq!(different, ["nan_one", "nan_same"], "{text}");
    let out = run(&["--nan-equal", &a, &a]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}
