//! gemscope's integration tests: one binary, one module per topic (as ripgrep does).

mod local_server;
mod util;

mod attribution;
mod browser;
mod cli;
mod corpus;
mod eval;
mod faults;
mod generate;
mod hub;
mod hub_server;
mod labels;
mod neuronpedia_server;
mod parity;
