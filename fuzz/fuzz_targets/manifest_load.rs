//! The manifest loader on arbitrary text (YAML documents, any kind): it returns objects or
//! errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let sources = [("fuzz.yaml".to_string(), text.to_string())];
    let _ = crds::manifest::load_sources(&sources);
    // relayctl's default: objects of other API groups set aside instead of refused.
    let _ = crds::manifest::load_sources_with(&sources, crds::manifest::LoadOptions::LENIENT);
});
