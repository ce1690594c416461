//! The views: each file formats one report struct for a reader and does nothing else (no flags,
//! no environment, no computation), as hyperfine's exporters do.
//!
//! - [`style`]: what every human view shares (colour, escaping, padding, wrapping, shades);
//! - [`json`]: JSON and JSONL, for every report;
//! - [`features`], [`eval`], [`generation`] (generate's stream, steer's columns), [`list_saes`]:
//!   the human views.

pub mod attribute;
pub mod card;
pub mod eval;
pub mod features;
pub mod generation;
pub mod json;
pub mod list_saes;
pub mod style;

pub use style::Style;
