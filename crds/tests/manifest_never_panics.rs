//! The manifest loader never panics, whatever the text: arbitrary strings, and the shipped
//! examples cut, spliced and corrupted at random. The `fuzz/` target `manifest_load`
//! explores the same function for longer.

use proptest::prelude::*;

const EXAMPLES: [&str; 4] = [
    include_str!("../../examples/quickstart/relay.yaml"),
    include_str!("../../examples/multi-host-route/relay.yaml"),
    include_str!("../../examples/applications-smtp-auth/relay.yaml"),
    include_str!("../../examples/invalid/route-both-host-kinds.yaml"),
];

fn load(text: String) {
    let _ = crds::manifest::load_sources(&[("fuzz.yaml".to_string(), text)]);
}

/// Characters YAML gives meaning to, to make random edits hit the parser's corners.
const YAML_BITS: [&str; 14] = [
    ":", "- ", "\n", "  ", "---\n", "{", "}", "[", "]", "&a ", "*a", "!!str ", "'", "\"",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        load(text);
    }

    #[test]
    fn corrupted_examples_never_panic(
        which in 0..EXAMPLES.len(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0..YAML_BITS.len(), 0usize..8), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut text = EXAMPLES[which].to_string();
        for (at, bit, delete) in edits {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            let mut end = (i + delete).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.replace_range(i..end, YAML_BITS[bit]);
        }
        // Keep at least half, so most cases still reach the object decoders.
        let mut end = cut.index(text.len() + 1).max(text.len() / 2);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        load(text);
    }
}
