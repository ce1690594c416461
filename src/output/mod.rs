//! The views: each file formats one report struct for a reader and does nothing else (no flags,
//! no environment, no computation), as hyperfine's exporters do.
//!
//! - [`style`]: what every human view shares (colour, escaping, padding, wrapping, shades);
//! - [`json`]: JSON and JSONL, for every report;
//! - [`features`], [`eval`], [`generation`] (generate's stream, steer's columns), [`list_saes`]:
//!   the human views;
//! - [`html`] (escaping, the shade scale as CSS), [`dashboard`] and [`features_html`]: the HTML
//!   views, self-contained pages.

pub mod attribute;
pub mod card;
pub mod dashboard;
pub mod eval;
pub mod features;
pub mod features_html;
pub mod generation;
pub mod html;
pub mod json;
pub mod list_saes;
pub mod style;

pub use style::Style;
