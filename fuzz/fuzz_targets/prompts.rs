//! Fuzzes the prompts-file parser (text lines or JSONL) and tokenizing what it returns.
#![no_main]

use gemscope::cli::parse_prompt_lines;
use gemscope::tokenizer::PromptTokenizer;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn tokenizer() -> &'static PromptTokenizer {
    static TOKENIZER: OnceLock<PromptTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/tokenizer.json");
        PromptTokenizer::from_file(&path, 2).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(prompts) = parse_prompt_lines(data) else { return };
    for prompt in prompts {
        assert!(!prompt.trim().is_empty(), "blank prompts are skipped");
        let ids = tokenizer().encode(&prompt).unwrap();
        assert_eq!(ids[0], 2, "BOS first");
        for id in ids {
            let _ = tokenizer().piece(id);
        }
    }
});
