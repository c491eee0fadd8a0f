//! Token counting for context assembly, per model family.
//!
//! OpenAI publishes its encodings: `o200k_base` (GPT-4o, GPT-4.1, GPT-5, the o
//! series) and `cl100k_base` (GPT-4, GPT-3.5), counted exactly with tiktoken.
//! Other families (Claude, Qwen, Llama) have no tokenizer available offline for
//! every model, so they get a conservative estimate that over-counts ordinary
//! text: the window keeps headroom instead of overflowing.

use serde::Deserialize;

use crate::config::ProviderKind;

/// A model's `tokenizer` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerChoice {
    #[default]
    Auto,
    O200kBase,
    Cl100kBase,
    Estimate,
}

/// How one model's prompts are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokenizer {
    O200kBase,
    Cl100kBase,
    Estimate,
}

impl Tokenizer {
    /// The tokenizer of a model, by its setting, provider and model name.
    pub fn of(choice: TokenizerChoice, provider: ProviderKind, model: &str) -> Self {
        match choice {
            TokenizerChoice::O200kBase => Tokenizer::O200kBase,
            TokenizerChoice::Cl100kBase => Tokenizer::Cl100kBase,
            TokenizerChoice::Estimate => Tokenizer::Estimate,
            TokenizerChoice::Auto if provider != ProviderKind::Openai => Tokenizer::Estimate,
            TokenizerChoice::Auto => {
                let name = model.rsplit('/').next().unwrap_or(model);
                if [
                    "gpt-4o",
                    "gpt-4.1",
                    "gpt-4.5",
                    "gpt-5",
                    "o1",
                    "o3",
                    "o4",
                    "chatgpt-4o",
                ]
                .iter()
                .any(|p| name.starts_with(p))
                {
                    Tokenizer::O200kBase
                } else if name.starts_with("gpt-4") || name.starts_with("gpt-3.5") {
                    Tokenizer::Cl100kBase
                } else {
                    Tokenizer::Estimate
                }
            }
        }
    }

    /// The one tokenizer for several candidates of a route: theirs when they agree,
    /// the estimate (which over-counts for all of them) when they don't.
    pub fn common(tokenizers: impl IntoIterator<Item = Tokenizer>) -> Self {
        let mut all = tokenizers.into_iter();
        let first = all.next().unwrap_or(Tokenizer::Estimate);
        if all.all(|t| t == first) {
            first
        } else {
            Tokenizer::Estimate
        }
    }

    pub fn count(self, text: &str) -> u64 {
        match self {
            Tokenizer::O200kBase => tiktoken_rs::o200k_base_singleton().count_ordinary(text) as u64,
            Tokenizer::Cl100kBase => {
                tiktoken_rs::cl100k_base_singleton().count_ordinary(text) as u64
            }
            Tokenizer::Estimate => estimate(text),
        }
    }
}

/// A conservative count: one token per three ASCII bytes, two per three bytes
/// of anything else (two a CJK character). Published tokenizers run about four
/// ASCII characters a token in English and one or two tokens a CJK character.
pub fn estimate(text: &str) -> u64 {
    let ascii = text.bytes().filter(u8::is_ascii).count() as u64;
    let other = text.len() as u64 - ascii;
    ascii.div_ceil(3) + (other * 2).div_ceil(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &[&str] = &[
        "Hello, how are you today?",
        "The quick brown fox jumps over the lazy dog. It's 9:30am in Paris; see https://example.com/a?b=c.",
        "fn main() { println!(\"{}\", 40 + 2); }",
        "東京の天気は晴れです。明日は雨が降るでしょう。",
        "Привет, как дела? Всё хорошо.",
    ];

    #[test]
    fn counts_openai_encodings_exactly() {
        assert_eq!(Tokenizer::O200kBase.count("Hello, how are you today?"), 7);
        assert_eq!(Tokenizer::Cl100kBase.count("Hello, how are you today?"), 7);
        assert_eq!(Tokenizer::O200kBase.count(""), 0);
    }

    #[test]
    fn the_estimate_never_under_counts_the_published_encodings() {
        for sample in SAMPLES {
            let estimate = Tokenizer::Estimate.count(sample);
            for exact in [Tokenizer::O200kBase, Tokenizer::Cl100kBase] {
                assert!(
                    estimate >= exact.count(sample),
                    "{sample:?}: estimate {estimate} < {exact:?} {}",
                    exact.count(sample)
                );
            }
        }
    }

    #[test]
    fn picks_the_tokenizer_by_model_family() {
        let auto = |provider, model| Tokenizer::of(TokenizerChoice::Auto, provider, model);
        assert_eq!(
            auto(ProviderKind::Openai, "gpt-4o-mini"),
            Tokenizer::O200kBase
        );
        assert_eq!(
            auto(ProviderKind::Openai, "openai/gpt-5"),
            Tokenizer::O200kBase
        );
        assert_eq!(
            auto(ProviderKind::Openai, "gpt-4-turbo"),
            Tokenizer::Cl100kBase
        );
        assert_eq!(auto(ProviderKind::Openai, "qwen-plus"), Tokenizer::Estimate);
        assert_eq!(
            auto(ProviderKind::Anthropic, "claude-sonnet-4-5"),
            Tokenizer::Estimate
        );
        assert_eq!(
            Tokenizer::of(TokenizerChoice::Cl100kBase, ProviderKind::Openai, "llama3"),
            Tokenizer::Cl100kBase
        );
        assert_eq!(
            Tokenizer::common([Tokenizer::O200kBase, Tokenizer::Cl100kBase]),
            Tokenizer::Estimate
        );
    }
}
