// The same Git revision for `--version` as the relay binary: one script for both crates.
include!("../relay/build.rs");
