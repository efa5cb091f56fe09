//! Loading manifests offline: YAML files and directories become typed, validated objects.
//!
//! This module owns the user-facing error reporting of `relayctl validate`, `render`,
//! `run` and `plan`: every problem names the file, the document, the object, the field
//! path, the line where it can be found, and what to do. Unknown kinds of our API group and
//! unknown fields are errors (a typo must never silently drop a rule). Objects of other API
//! groups (a Namespace, a SealedSecret, a `kustomization.yaml` beside the manifests of a
//! GitOps folder) are refused by a strict load and set aside as [`Skipped`] by a lenient
//! one ([`LoadOptions`]); `v1` Secrets are read either way. Single-object rules are the CRD
//! schema's value validations (bounds such as `maxItems` and `maxLength`, patterns, enums:
//! [`crate::structural`], which kube's `cel` feature does not check) and its CEL rules,
//! evaluated through kube's `cel` feature, so offline validation and the API server agree
//! by construction.
//!
//! It does not resolve references between objects; `render` does.

use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use kube::CustomResourceExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{
    API_VERSION, IpAllowRange, MailRoute, Organization, RelayExpectation, SmtpRelaySetting,
};

/// Where an object came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Source {
    /// File name as given (or as found under a given directory).
    pub file: String,
    /// 1-based index of the YAML document in the file.
    pub document: usize,
    /// 1-based line where the document starts.
    pub line: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: document {} (line {})",
            self.file, self.document, self.line
        )
    }
}

/// A loaded object and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded<T> {
    pub source: Source,
    pub object: T,
}

/// Every object of a manifest set, by kind, in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ManifestSet {
    pub organizations: Vec<Loaded<Organization>>,
    pub settings: Vec<Loaded<SmtpRelaySetting>>,
    pub ranges: Vec<Loaded<IpAllowRange>>,
    pub routes: Vec<Loaded<MailRoute>>,
    /// `v1` Secrets (TLS certificates, AUTH credentials, CA roots), as kubectl applies them.
    pub secrets: Vec<Loaded<Secret>>,
    /// Policy test cases (`relayctl test`); they configure nothing and are not counted
    /// by [`ManifestSet::len`].
    pub expectations: Vec<Loaded<RelayExpectation>>,
    /// Objects of other API groups left out by a lenient load (always empty after a
    /// strict one).
    pub skipped: Vec<Skipped>,
}

/// A document (or a whole file) of another API group, left out of a lenient load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub source: Source,
    /// `Kind namespace/name (apiVersion)`, or `a Kustomization file` for a
    /// `kustomization.yaml`.
    pub what: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.source.document == 0 {
            write!(f, "{}: {}", self.source.file, self.what)
        } else {
            write!(f, "{}: {}", self.source, self.what)
        }
    }
}

/// How strictly a load treats objects that are not ours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Set aside objects of API groups other than `smtprelay.dev` (except `v1` Secrets)
    /// and `kustomization.yaml` files instead of refusing them.
    pub skip_foreign: bool,
}

impl LoadOptions {
    /// Refuse anything that is not ours: what the operator and the tests use.
    pub const STRICT: LoadOptions = LoadOptions {
        skip_foreign: false,
    };
    /// Set aside what is not ours: what `relayctl` does unless given `--strict`.
    pub const LENIENT: LoadOptions = LoadOptions { skip_foreign: true };
}

impl ManifestSet {
    /// Number of objects of all kinds.
    pub fn len(&self) -> usize {
        self.organizations.len()
            + self.settings.len()
            + self.ranges.len()
            + self.routes.len()
            + self.secrets.len()
    }

    /// True when no object was loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One problem in one document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ManifestError {
    /// File name.
    pub file: String,
    /// 1-based document index, 0 when the problem concerns the whole file.
    pub document: usize,
    /// 1-based line of the problem (or of the document start), 0 when unknown.
    pub line: usize,
    /// `Kind namespace/name` of the object, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Field path such as `spec.cidr`, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// All problems found in a manifest set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

/// The YAML files named by `paths`: files as given, directories searched recursively for
/// `*.yaml` and `*.yml`, in sorted order.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ManifestErrors> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        if path.is_dir() {
            if let Err(e) = walk(path, &mut files) {
                errors.push(file_error(path, format!("cannot read directory: {e}")));
            }
        } else if path.exists() {
            files.push(path.clone());
        } else {
            errors.push(file_error(path, "no such file or directory".into()));
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(ManifestErrors(errors))
    }
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, files)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(path);
        }
    }
    Ok(())
}

fn file_error(path: &Path, message: String) -> ManifestError {
    ManifestError {
        file: path.display().to_string(),
        document: 0,
        line: 0,
        object: None,
        field: None,
        message,
    }
}

/// Loads and validates every manifest under `paths`, refusing objects that are not ours.
/// Returns all objects, or every error found (not just the first).
pub fn load_paths(paths: &[PathBuf]) -> Result<ManifestSet, ManifestErrors> {
    load_paths_with(paths, LoadOptions::STRICT)
}

/// [`load_paths`] with a choice of what to do with objects that are not ours.
pub fn load_paths_with(
    paths: &[PathBuf],
    options: LoadOptions,
) -> Result<ManifestSet, ManifestErrors> {
    let files = collect_files(paths)?;
    let mut sources = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => sources.push((file.display().to_string(), text)),
            Err(e) => errors.push(file_error(&file, format!("cannot read file: {e}"))),
        }
    }
    match load_sources_with(&sources, options) {
        Ok(set) if errors.is_empty() => Ok(set),
        Ok(_) => Err(ManifestErrors(errors)),
        Err(ManifestErrors(more)) => {
            errors.extend(more);
            Err(ManifestErrors(errors))
        }
    }
}

/// Loads and validates manifests given as `(file name, text)` pairs (files read from a Git
/// revision, for instance), refusing objects that are not ours.
pub fn load_sources(sources: &[(String, String)]) -> Result<ManifestSet, ManifestErrors> {
    load_sources_with(sources, LoadOptions::STRICT)
}

/// [`load_sources`] with a choice of what to do with objects that are not ours.
pub fn load_sources_with(
    sources: &[(String, String)],
    options: LoadOptions,
) -> Result<ManifestSet, ManifestErrors> {
    let mut set = ManifestSet::default();
    let mut errors = Vec::new();
    for (file, text) in sources {
        if options.skip_foreign && is_kustomization(file) {
            set.skipped.push(Skipped {
                source: Source {
                    file: file.clone(),
                    document: 0,
                    line: 1,
                },
                what: "a Kustomization file".into(),
            });
            continue;
        }
        for doc in split_documents(text) {
            let source = Source {
                file: file.clone(),
                document: doc.index,
                line: doc.line,
            };
            if let Err(e) = load_document(&source, doc.text, options, &mut set) {
                errors.push(*e);
            }
        }
    }
    check_duplicates(&set, &mut errors);
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(ManifestErrors(errors))
    }
}

/// `kustomization.yaml` (or `.yml`, or `Kustomization`): kustomize's own file, which has
/// no `apiVersion` of ours and often none at all.
fn is_kustomization(file: &str) -> bool {
    matches!(
        Path::new(file).file_name().and_then(|n| n.to_str()),
        Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
    )
}

/// The API group of an `apiVersion` (`""` for the core group's `v1`).
fn api_group(api_version: &str) -> &str {
    api_version
        .rsplit_once('/')
        .map(|(group, _)| group)
        .unwrap_or("")
}

struct Document<'a> {
    index: usize,
    line: usize,
    text: &'a str,
}

/// Splits a YAML stream on `---` lines, keeping each document's first line number.
/// Documents holding only comments or whitespace are skipped; the others are numbered
/// from 1 in order, as a person counts them.
fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut chunks = Vec::new();
    let (mut start, mut start_line, mut offset) = (0usize, 1usize, 0usize);
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        let rest = trimmed.strip_prefix("---");
        if rest.is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t', '#'])) {
            chunks.push((start, offset, start_line));
            start = offset + line.len();
            start_line = n + 2;
        }
        offset += line.len();
    }
    chunks.push((start, text.len(), start_line));
    chunks
        .into_iter()
        .map(|(from, to, line)| (line, &text[from..to]))
        .filter(|(_, body)| {
            body.lines().any(|l| {
                let t = l.trim();
                !t.is_empty() && !t.starts_with('#') && t != "..."
            })
        })
        .enumerate()
        .map(|(i, (line, text))| Document {
            index: i + 1,
            line,
            text,
        })
        .collect()
}

const TOP_LEVEL_CRD: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];
const TOP_LEVEL_SECRET: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "data",
    "stringData",
    "type",
    "immutable",
];
const METADATA_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "generateName",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "ownerReferences",
    "managedFields",
    "selfLink",
];

fn load_document(
    source: &Source,
    text: &str,
    options: LoadOptions,
    set: &mut ManifestSet,
) -> Result<(), Box<ManifestError>> {
    let err = |line: usize, object: Option<String>, field: Option<String>, message: String| {
        Box::new(ManifestError {
            file: source.file.clone(),
            document: source.document,
            line: if line > 0 { line } else { source.line },
            object,
            field,
            message,
        })
    };
    let value: yaml_serde::Value = yaml_serde::from_str(text).map_err(|e| {
        let line = e
            .location()
            .map(|l| source.line + l.line() - 1)
            .unwrap_or(0);
        err(
            line,
            None,
            None,
            format!("not valid YAML: {}", strip_location(&e.to_string())),
        )
    })?;
    let map = value.as_mapping().ok_or_else(|| {
        err(
            0,
            None,
            None,
            "a manifest must be a mapping with apiVersion and kind".into(),
        )
    })?;
    let get = |k: &str| map.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let api_version = get("apiVersion").ok_or_else(|| {
        err(
            0,
            None,
            Some("apiVersion".into()),
            "missing apiVersion".into(),
        )
    })?;
    let kind =
        get("kind").ok_or_else(|| err(0, None, Some("kind".into()), "missing kind".into()))?;
    let meta = map.get("metadata").and_then(|m| m.as_mapping());
    let meta_str = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let name = meta_str("name");
    let namespace = meta_str("namespace").unwrap_or_else(|| "default".into());
    let object = Some(format!(
        "{kind} {namespace}/{}",
        name.as_deref().unwrap_or("<unnamed>")
    ));

    let (allowed, is_secret) = match (api_version.as_str(), kind.as_str()) {
        (
            API_VERSION,
            "Organization" | "SmtpRelaySetting" | "IpAllowRange" | "MailRoute" | "RelayExpectation",
        ) => (TOP_LEVEL_CRD, false),
        ("v1", "Secret") => (TOP_LEVEL_SECRET, true),
        _ if options.skip_foreign && api_group(&api_version) != crate::GROUP => {
            set.skipped.push(Skipped {
                source: source.clone(),
                what: format!(
                    "{kind} {namespace}/{} ({api_version})",
                    name.as_deref().unwrap_or("<unnamed>")
                ),
            });
            return Ok(());
        }
        _ => {
            return Err(err(
                0,
                object,
                Some("kind".into()),
                format!(
                    "unknown kind {kind} of apiVersion {api_version}: expected Organization, \
                     SmtpRelaySetting, IpAllowRange, MailRoute or RelayExpectation of \
                     {API_VERSION}, or a v1 Secret"
                ),
            ));
        }
    };
    for key in map.keys() {
        let key = key.as_str().unwrap_or("<non-string key>");
        if !allowed.contains(&key) {
            return Err(err(
                locate(text, &[key])
                    .map(|l| source.line + l - 1)
                    .unwrap_or(0),
                object,
                Some(key.into()),
                format!(
                    "unknown field `{key}` (expected one of: {})",
                    allowed.join(", ")
                ),
            ));
        }
    }
    let meta = meta.ok_or_else(|| {
        err(
            0,
            object.clone(),
            Some("metadata".into()),
            "missing metadata".into(),
        )
    })?;
    for key in meta.keys() {
        let key = key.as_str().unwrap_or("<non-string key>");
        if !METADATA_FIELDS.contains(&key) {
            return Err(err(
                locate(text, &["metadata", key])
                    .map(|l| source.line + l - 1)
                    .unwrap_or(0),
                object,
                Some(format!("metadata.{key}")),
                format!("unknown field `{key}` in metadata"),
            ));
        }
    }
    if name.as_deref().is_none_or(str::is_empty) {
        return Err(err(
            0,
            object,
            Some("metadata.name".into()),
            "missing metadata.name".into(),
        ));
    }

    if is_secret {
        let secret: Secret = typed(text, source, &object)?;
        set.secrets.push(Loaded {
            source: source.clone(),
            object: secret,
        });
        return Ok(());
    }
    match kind.as_str() {
        "Organization" => set.organizations.push(checked(text, source, &object)?),
        "SmtpRelaySetting" => set.settings.push(checked(text, source, &object)?),
        "IpAllowRange" => set.ranges.push(checked(text, source, &object)?),
        "RelayExpectation" => {
            let loaded: Loaded<RelayExpectation> = checked(text, source, &object)?;
            let cases = &loaded.object.spec.cases;
            for (i, case) in cases.iter().enumerate() {
                if cases[..i].iter().any(|c| c.name == case.name) {
                    return Err(err(
                        locate_value(text, "name", &case.name)
                            .map(|l| source.line + l - 1)
                            .unwrap_or(0),
                        object,
                        Some(format!("spec.cases[{i}].name")),
                        format!(
                            "duplicate case name {:?}: case names must be unique",
                            case.name
                        ),
                    ));
                }
            }
            set.expectations.push(loaded)
        }
        _ => set.routes.push(checked(text, source, &object)?),
    }
    Ok(())
}

/// Deserializes a document into `T`, reporting the field path and line of any mismatch.
fn typed<T: DeserializeOwned>(
    text: &str,
    source: &Source,
    object: &Option<String>,
) -> Result<T, Box<ManifestError>> {
    let de = yaml_serde::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let line = inner
            .location()
            .map(|l| source.line + l.line() - 1)
            .unwrap_or(source.line);
        Box::new(ManifestError {
            file: source.file.clone(),
            document: source.document,
            line,
            object: object.clone(),
            message: strip_path_prefix(&strip_location(&inner.to_string())),
            field: (path != ".").then_some(path),
        })
    })
}

/// Deserializes a custom resource and evaluates its CEL rules.
fn checked<T>(
    text: &str,
    source: &Source,
    object: &Option<String>,
) -> Result<Loaded<T>, Box<ManifestError>>
where
    T: DeserializeOwned + Serialize + CustomResourceExt,
{
    let value: T = typed(text, source, object)?;
    let errors = object_errors(&value);
    if !errors.is_empty() {
        // Report the first failure with its own line; the rest follow as extra errors would
        // obscure the one to fix first. All failures of a document are joined.
        let mut messages = Vec::new();
        let mut first_field = None;
        for (field, message) in &errors {
            if first_field.is_none() && !field.is_empty() {
                first_field = Some(field.clone());
            }
            if field.is_empty() || Some(field) == first_field.as_ref() {
                messages.push(message.clone());
            } else {
                messages.push(format!("{field}: {message}"));
            }
        }
        let line = first_field
            .as_deref()
            .and_then(|f| locate(text, &field_segments(f)))
            .map(|l| source.line + l - 1)
            .unwrap_or(source.line);
        return Err(Box::new(ManifestError {
            file: source.file.clone(),
            document: source.document,
            line,
            object: object.clone(),
            field: first_field,
            message: messages.join("; "),
        }));
    }
    Ok(Loaded {
        source: source.clone(),
        object: value,
    })
}

/// The problems of one typed object, as `(field, message)`: first the value validations of
/// its CRD schema (bounds, patterns, enums: [`crate::structural`], which kube's CEL
/// evaluation does not check), then its CEL rules, the checks the API server makes.
fn object_errors<T>(object: &T) -> Vec<(String, String)>
where
    T: Serialize + CustomResourceExt,
{
    let mut errors: Vec<(String, String)> = match serde_json::to_value(object) {
        Ok(json) => crate::validate_object(&T::api_resource().kind, &json)
            .into_iter()
            .map(|e| (e.field, e.detail))
            .collect(),
        Err(_) => Vec::new(),
    };
    if let Err(cel) = kube::core::cel::validate_cel(object) {
        errors.extend(
            cel.iter()
                .map(|e| (e.field_path.clone(), e.message.clone())),
        );
    }
    errors
}

/// Validates one typed object as the API server would: the value validations of its CRD
/// schema, then its CEL rules. Returns `field: message` lines.
pub fn validate_object<T>(object: &T) -> Result<(), Vec<String>>
where
    T: Serialize + CustomResourceExt,
{
    let errors = object_errors(object);
    if errors.is_empty() {
        return Ok(());
    }
    Err(errors
        .into_iter()
        .map(|(field, message)| {
            if field.is_empty() {
                message
            } else {
                format!("{field}: {message}")
            }
        })
        .collect())
}

fn field_segments(path: &str) -> Vec<&str> {
    path.split('.')
        .map(|s| s.split('[').next().unwrap_or(s))
        .filter(|s| !s.is_empty())
        .collect()
}

/// Finds the 1-based line of a key path in a YAML document by following indentation.
/// Best effort: used only to point a person at the right line.
fn locate(text: &str, path: &[&str]) -> Option<usize> {
    let mut from = 0usize;
    let mut min_indent = 0usize;
    let mut found = None;
    let lines: Vec<&str> = text.lines().collect();
    for segment in path {
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(from) {
            let indent = line.len() - line.trim_start().len();
            let body = line.trim_start().trim_start_matches("- ");
            if found.is_some() && indent < min_indent && !line.trim().is_empty() {
                break;
            }
            if indent >= min_indent
                && (body.starts_with(&format!("{segment}:"))
                    || body.starts_with(&format!("\"{segment}\":")))
            {
                hit = Some((i, indent));
                break;
            }
        }
        // A key inside a flow mapping (`{host: a, port: 465}`) is not on a line of its
        // own: point at the deepest enclosing key found.
        let Some((i, indent)) = hit else { return found };
        found = Some(i + 1);
        from = i + 1;
        min_indent = indent + 1;
    }
    found
}

/// The 1-based line of the last `key: value` line (list item or not) whose value is
/// `value`, quoted or not. Best effort, for pointing at a repeated value.
fn locate_value(text: &str, key: &str, value: &str) -> Option<usize> {
    let quoted = format!("{value:?}");
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let body = line.trim_start().trim_start_matches("- ");
            body.strip_prefix(key)
                .and_then(|r| r.strip_prefix(':'))
                .is_some_and(|v| {
                    let v = v.trim();
                    v == value || v == quoted || v == format!("'{value}'")
                })
        })
        .map(|(i, _)| i + 1)
        .last()
}

/// yaml_serde starts some messages with the path of the enclosing mapping
/// (`spec.authentication: unknown field ...`); the error carries the full path already.
fn strip_path_prefix(message: &str) -> String {
    match message.split_once(": ") {
        Some((head, rest)) if !head.is_empty() && !head.contains(' ') && head != "invalid type" => {
            rest.to_string()
        }
        _ => message.to_string(),
    }
}

/// yaml_serde appends " at line L column C"; we print our own line.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn check_duplicates(set: &ManifestSet, errors: &mut Vec<ManifestError>) {
    fn dup<T: kube::Resource>(kind: &str, items: &[Loaded<T>], errors: &mut Vec<ManifestError>) {
        let mut seen = std::collections::BTreeMap::new();
        for item in items {
            let meta = item.object.meta();
            let key = (
                meta.namespace.clone().unwrap_or_else(|| "default".into()),
                meta.name.clone().unwrap_or_default(),
            );
            if let Some(first) = seen.insert(key.clone(), item.source.clone()) {
                errors.push(ManifestError {
                    file: item.source.file.clone(),
                    document: item.source.document,
                    line: item.source.line,
                    object: Some(format!("{kind} {}/{}", key.0, key.1)),
                    field: Some("metadata.name".into()),
                    message: format!("duplicate object: also defined at {first}"),
                });
            }
        }
    }
    dup("Organization", &set.organizations, errors);
    dup("SmtpRelaySetting", &set.settings, errors);
    dup("IpAllowRange", &set.ranges, errors);
    dup("MailRoute", &set.routes, errors);
    dup("Secret", &set.secrets, errors);
    dup("RelayExpectation", &set.expectations, errors);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_line_numbers() {
        let text = "# header\n---\na: 1\n---\n\n---\nb: 2\nc: 3\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 2);
        assert_eq!(
            (docs[0].index, docs[0].line, docs[0].text),
            (1, 3, "a: 1\n")
        );
        assert_eq!((docs[1].index, docs[1].line), (2, 7));
    }

    #[test]
    fn a_single_document_without_separator_is_read() {
        let docs = split_documents("a: 1\n");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].line, 1);
    }

    #[test]
    fn locate_follows_indentation() {
        let text = "kind: X\nspec:\n  tls:\n    requireTls: true\n  cidr: a\n";
        assert_eq!(locate(text, &["spec", "cidr"]), Some(5));
        assert_eq!(locate(text, &["spec", "tls", "requireTls"]), Some(4));
        assert_eq!(
            locate(text, &["spec", "missing"]),
            Some(2),
            "the deepest key found"
        );
        assert_eq!(locate(text, &["nothing"]), None);
    }
}
