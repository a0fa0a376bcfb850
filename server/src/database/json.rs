//! JSON stored in a TEXT column, as a typed value: encoded when a row is
//! written, decoded (or refused as a corrupt row) when one is read, so no
//! caller ever sees the text.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value kept in a column as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Json<T>(pub T);

impl<T: Serialize> Json<T> {
    /// The column's text.
    pub fn encode(&self) -> String {
        serde_json::to_string(&self.0).expect("plain data serialises to JSON")
    }
}

impl<T: DeserializeOwned> Json<T> {
    /// The value a column's text holds.
    pub fn decode(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_round_trips_through_its_column_text() {
        let value = Json(vec!["/nix/store/a-b".to_owned(), "c\"d".to_owned()]);
        let text = value.encode();
        assert_eq!(Json::<Vec<String>>::decode(&text).expect("decode"), value);
        assert!(Json::<Vec<String>>::decode("[1, 2]").is_err());
        assert!(Json::<Vec<String>>::decode("not json").is_err());
    }
}
