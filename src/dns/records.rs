//! Static records of `[[dns.record]]`: their values parsed into hickory's record data. The
//! schema (`config::dns`) checks names, types and clashes; the value syntax is hickory's, so it
//! is checked here, where the snapshot is built ([`check_records`], called by `node`), and again
//! when the zone is built.

use hickory_proto::rr::{RData, RecordType};

use crate::config::dns::STATIC_TYPES;
use crate::config::{Config, ConfigError};

/// Parses one static record's value. TXT values without quotes are taken as one string.
pub fn parse_rdata(rtype: &str, value: &str) -> Result<RData, String> {
    let upper = rtype.to_ascii_uppercase();
    if !STATIC_TYPES.contains(&upper.as_str()) {
        return Err(format!(
            "type {rtype:?} is not served from [[dns.record]] (allowed: {})",
            STATIC_TYPES.join(", ")
        ));
    }
    let rt: RecordType = upper
        .parse()
        .map_err(|_| format!("unknown record type {rtype:?}"))?;
    if rt == RecordType::TXT && !value.trim_start().starts_with('"') {
        let pieces = value
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        return Ok(RData::TXT(hickory_proto::rr::rdata::TXT::new(pieces)));
    }
    RData::try_from_str(rt, value).map_err(|e| format!("{upper} value {value:?}: {e}"))
}

/// Every `[[dns.record]]` value that does not parse, with its path.
pub fn check_records(c: &Config) -> Vec<ConfigError> {
    c.dns
        .records
        .iter()
        .enumerate()
        .filter(|(_, r)| STATIC_TYPES.contains(&r.rtype.to_ascii_uppercase().as_str()))
        .filter_map(|(i, r)| {
            parse_rdata(&r.rtype, &r.value)
                .err()
                .map(|e| ConfigError::new(format!("dns.record[{i}].value"), e))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_values_parse() {
        assert!(matches!(
            parse_rdata("txt", "v=spf1 -all"),
            Ok(RData::TXT(_))
        ));
        let long = "x".repeat(600);
        let Ok(RData::TXT(t)) = parse_rdata("TXT", &long) else {
            panic!("a long TXT value parses")
        };
        assert_eq!(t.txt_data.len(), 3, "split into 255-byte strings");
        assert!(parse_rdata("CAA", "0 issue \"letsencrypt.org\"").is_ok());
        assert!(parse_rdata("MX", "10 mail.example.net.").is_ok());
        assert!(parse_rdata("A", "not-an-ip").is_err());
        assert!(parse_rdata("SOA", "x").unwrap_err().contains("not served"));
    }
}
