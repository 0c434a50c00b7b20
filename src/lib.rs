//! phi-tui: a local, private code assistant around Microsoft's phi-1.
//!
//! The library holds everything the `phi-tui` binary wires together; see ARCHITECTURE.md for the map.

pub mod config;
pub mod convert;
pub mod datagen;
pub mod engine;
pub mod eval;
pub mod finetune;
pub mod hub;
pub mod logging;
pub mod lsp_backend;
pub mod models;
pub mod sandbox;
pub mod session;
pub mod tui;

/// The phi-1 tokenizer, bundled so that checkpoints shipped without one still convert.
pub mod bundled {
    pub const TOKENIZER_JSON: &[u8] = include_bytes!("../assets/tokenizer/tokenizer.json");
    pub const TOKENIZER_CONFIG_JSON: &[u8] = include_bytes!("../assets/tokenizer/tokenizer_config.json");
}
