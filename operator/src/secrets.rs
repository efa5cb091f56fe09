//! Reading a Secret's values as a pod would see them mounted: shared by `render` (checking
//! a key before it names the file), `local` (writing the files for `relayctl run`),
//! `explain` and the controller.
//!
//! Not here: which Secrets a pod mounts (`controller::children`).

use k8s_openapi::api::core::v1::Secret;

/// The value of `key` in a Secret, from `stringData` or (base64-decoded) `data`;
/// `stringData` wins, as it does when the API server merges the two.
pub fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Some(v.as_bytes().to_vec());
    }
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
}
