//! The output grammar every `relayctl` command shares: the `-o/--output` formats, the three
//! exit codes, how a result is written in each format, and the one-line notes on stderr
//! (objects skipped, deprecated flags).
//!
//! It owns no result: each command builds its own (a serializable value and its text form)
//! and hands it here, so that `-o json` and `-o yaml` are the same document everywhere and
//! stdout holds only the result (notes, warnings and errors go to stderr).

use std::process::ExitCode;

use serde::Serialize;

/// `-o/--output` of a command that prints a result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For people.
    #[default]
    Text,
    /// One JSON document.
    Json,
    /// One YAML document.
    Yaml,
}

/// `-o/--output` of `plan` and `explain`, which also write Markdown (a pull-request
/// comment).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ReviewFormat {
    /// For people.
    #[default]
    Text,
    /// A Markdown section for a pull-request comment.
    Markdown,
    /// One JSON document.
    Json,
    /// One YAML document.
    Yaml,
}

/// `-o/--output` of `crds` and `install`, which print Kubernetes objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ObjectsFormat {
    /// A multi-document YAML stream.
    #[default]
    Yaml,
    /// One JSON `v1` List holding every object.
    Json,
}

/// Exit code: done (valid, rendered, answered, every case passed).
pub const DONE: u8 = 0;
/// Exit code: the answer is no (a case failed, a host did not verify, a plan gate tripped,
/// the relay refused).
pub const NO: u8 = 1;
/// Exit code: invalid input (arguments, manifests, key files).
pub const INVALID: u8 = 2;

/// `code` as a process exit code.
pub fn exit(code: u8) -> ExitCode {
    ExitCode::from(code)
}

/// `value` as pretty JSON, ending in a newline.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<String, String> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(|e| format!("cannot write JSON: {e}"))
}

/// `value` as one YAML document: the JSON document's structure, so that both say the same
/// thing and any YAML reader gets it (enums as plain mappings, not YAML tags).
pub fn yaml<T: Serialize + ?Sized>(value: &T) -> Result<String, String> {
    let value = serde_json::to_value(value).map_err(|e| format!("cannot write YAML: {e}"))?;
    yaml_serde::to_string(&value).map_err(|e| format!("cannot write YAML: {e}"))
}

/// Prints `value` in `format` (`text` for [`Format::Text`]) and returns `code`; a value
/// that cannot be serialized is an error (exit 1), never half a document.
pub fn print<T: Serialize + ?Sized>(
    format: Format,
    value: &T,
    text: impl FnOnce() -> String,
    code: u8,
) -> ExitCode {
    let out = match format {
        Format::Text => Ok(text()),
        Format::Json => json(value),
        Format::Yaml => yaml(value),
    };
    match out {
        Ok(out) => {
            print!("{out}");
            exit(code)
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit(NO)
        }
    }
}

impl From<Format> for ReviewFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Text => ReviewFormat::Text,
            Format::Json => ReviewFormat::Json,
            Format::Yaml => ReviewFormat::Yaml,
        }
    }
}

/// A YAML stream of Kubernetes objects as `format`: unchanged for YAML, one `v1` List for
/// JSON (which `kubectl apply -f -` reads as well).
pub fn objects(stream: &str, format: ObjectsFormat) -> Result<String, String> {
    match format {
        ObjectsFormat::Yaml => Ok(stream.to_string()),
        ObjectsFormat::Json => {
            let mut items = Vec::new();
            for doc in yaml_serde::Deserializer::from_str(stream) {
                let value = <serde_json::Value as serde::Deserialize>::deserialize(doc)
                    .map_err(|e| format!("cannot read YAML: {e}"))?;
                if !value.is_null() {
                    items.push(value);
                }
            }
            json(&serde_json::json!({
                "apiVersion": "v1",
                "kind": "List",
                "items": items,
            }))
        }
    }
}

/// One line on stderr for each object a lenient load set aside.
pub fn note_skipped(set: &crds::manifest::ManifestSet) {
    for s in &set.skipped {
        eprintln!(
            "note: skipped {s}: not an {} object (--strict refuses it)",
            crds::GROUP
        );
    }
}

/// One line on stderr for a deprecated flag that still works.
pub fn note_deprecated(old: &str, new: &str) {
    eprintln!("note: {old} is deprecated and will be removed; use {new}");
}

/// Render's findings on stderr, one line each.
pub fn warn_findings(findings: &[crate::render::Finding]) {
    for f in findings {
        eprintln!("warning: {f}");
    }
}
