//! YAML bodies (placeholder; being written).

use crate::codec::CodecError;
use crate::value::Value;

/// Reads a YAML body.
pub fn from_slice(_bytes: &[u8]) -> Result<Value, CodecError> {
    Err(CodecError::Yaml("not implemented yet".into()))
}

/// Writes a value as YAML.
pub fn to_vec(_value: &Value) -> Result<Vec<u8>, CodecError> {
    Err(CodecError::Yaml("not implemented yet".into()))
}
