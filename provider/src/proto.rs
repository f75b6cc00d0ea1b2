//! The generated gRPC types and services of both plugin protocols (see `build.rs`). Each
//! version keeps its own: their messages share names but not every field number.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// Plugin protocol 5 (5.10).
pub mod tfplugin5 {
    tonic::include_proto!("tfplugin5");
}

/// Plugin protocol 6 (6.10).
pub mod tfplugin6 {
    tonic::include_proto!("tfplugin6");
}

/// go-plugin's own services: the controller (shutdown), stdio and the broker.
pub mod plugin {
    tonic::include_proto!("plugin");
}
