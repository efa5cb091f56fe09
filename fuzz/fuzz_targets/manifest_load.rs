//! The manifest loader on arbitrary text (YAML documents, any kind): it returns objects or
//! errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = crds::manifest::load_sources(&[("fuzz.yaml".to_string(), text.to_string())]);
});
