//! AutoNAT v2's wire messages (`/libp2p/autonat/2/dial-request` and `.../dial-back`), as
//! libp2p-autonat 0.16 generates them from the spec's `.proto` with prost-build (MIT,
//! <https://github.com/libp2p/rust-libp2p>, `protocols/autonat/src/v2/generated/structs.rs`),
//! copied so kith's own client speaks exactly the same bytes to libp2p's server.
#![allow(missing_docs, unreachable_pub, clippy::enum_variant_names)]

#[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
pub struct Message {
    #[prost(oneof = "message::Msg", tags = "1, 2, 3, 4")]
    pub msg: ::core::option::Option<message::Msg>,
}
/// Nested message and enum types in `Message`.
pub mod message {
    #[derive(Clone, PartialEq, Eq, Hash, ::prost::Oneof)]
    pub enum Msg {
        #[prost(message, tag = "1")]
        DialRequest(super::DialRequest),
        #[prost(message, tag = "2")]
        DialResponse(super::DialResponse),
        #[prost(message, tag = "3")]
        DialDataRequest(super::DialDataRequest),
        #[prost(message, tag = "4")]
        DialDataResponse(super::DialDataResponse),
    }
}
#[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
pub struct DialRequest {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub addrs: ::prost::alloc::vec::Vec<::prost::alloc::vec::Vec<u8>>,
    #[prost(fixed64, tag = "2")]
    pub nonce: u64,
}
#[derive(Clone, Copy, PartialEq, Eq, Hash, ::prost::Message)]
pub struct DialDataRequest {
    #[prost(uint32, tag = "1")]
    pub addr_idx: u32,
    #[prost(uint64, tag = "2")]
    pub num_bytes: u64,
}
#[derive(Clone, Copy, PartialEq, Eq, Hash, ::prost::Message)]
pub struct DialResponse {
    #[prost(enumeration = "dial_response::ResponseStatus", tag = "1")]
    pub status: i32,
    #[prost(uint32, tag = "2")]
    pub addr_idx: u32,
    #[prost(enumeration = "DialStatus", tag = "3")]
    pub dial_status: i32,
}
/// Nested message and enum types in `DialResponse`.
pub mod dial_response {
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
    #[repr(i32)]
    pub enum ResponseStatus {
        EInternalError = 0,
        ERequestRejected = 100,
        EDialRefused = 101,
        Ok = 200,
    }
    impl ResponseStatus {
        /// String value of the enum field names used in the ProtoBuf definition.
        ///
        /// The values are not transformed in any way and thus are considered stable
        /// (if the ProtoBuf definition does not change) and safe for programmatic use.
        pub fn as_str_name(&self) -> &'static str {
            match self {
                Self::EInternalError => "E_INTERNAL_ERROR",
                Self::ERequestRejected => "E_REQUEST_REJECTED",
                Self::EDialRefused => "E_DIAL_REFUSED",
                Self::Ok => "OK",
            }
        }
        /// Creates an enum from field names used in the ProtoBuf definition.
        pub fn from_str_name(value: &str) -> ::core::option::Option<Self> {
            match value {
                "E_INTERNAL_ERROR" => Some(Self::EInternalError),
                "E_REQUEST_REJECTED" => Some(Self::ERequestRejected),
                "E_DIAL_REFUSED" => Some(Self::EDialRefused),
                "OK" => Some(Self::Ok),
                _ => None,
            }
        }
    }
}
#[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
pub struct DialDataResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub data: ::prost::alloc::vec::Vec<u8>,
}
#[derive(Clone, Copy, PartialEq, Eq, Hash, ::prost::Message)]
pub struct DialBack {
    #[prost(fixed64, tag = "1")]
    pub nonce: u64,
}
#[derive(Clone, Copy, PartialEq, Eq, Hash, ::prost::Message)]
pub struct DialBackResponse {
    #[prost(enumeration = "dial_back_response::DialBackStatus", tag = "1")]
    pub status: i32,
}
/// Nested message and enum types in `DialBackResponse`.
pub mod dial_back_response {
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
    #[repr(i32)]
    pub enum DialBackStatus {
        Ok = 0,
    }
    impl DialBackStatus {
        /// String value of the enum field names used in the ProtoBuf definition.
        ///
        /// The values are not transformed in any way and thus are considered stable
        /// (if the ProtoBuf definition does not change) and safe for programmatic use.
        pub fn as_str_name(&self) -> &'static str {
            match self {
                Self::Ok => "OK",
            }
        }
        /// Creates an enum from field names used in the ProtoBuf definition.
        pub fn from_str_name(value: &str) -> ::core::option::Option<Self> {
            match value {
                "OK" => Some(Self::Ok),
                _ => None,
            }
        }
    }
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum DialStatus {
    Unused = 0,
    EDialError = 100,
    EDialBackError = 101,
    Ok = 200,
}
impl DialStatus {
    /// String value of the enum field names used in the ProtoBuf definition.
    ///
    /// The values are not transformed in any way and thus are considered stable
    /// (if the ProtoBuf definition does not change) and safe for programmatic use.
    pub fn as_str_name(&self) -> &'static str {
        match self {
            Self::Unused => "UNUSED",
            Self::EDialError => "E_DIAL_ERROR",
            Self::EDialBackError => "E_DIAL_BACK_ERROR",
            Self::Ok => "OK",
        }
    }
    /// Creates an enum from field names used in the ProtoBuf definition.
    pub fn from_str_name(value: &str) -> ::core::option::Option<Self> {
        match value {
            "UNUSED" => Some(Self::Unused),
            "E_DIAL_ERROR" => Some(Self::EDialError),
            "E_DIAL_BACK_ERROR" => Some(Self::EDialBackError),
            "OK" => Some(Self::Ok),
            _ => None,
        }
    }
}
