//! The VM factory server's gRPC API (`proto/factory.proto`): the generated messages, client
//! and server stubs, and the protocol version.

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

/// The generated types and stubs.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("sandbox_runtime.factory.v1");
}
