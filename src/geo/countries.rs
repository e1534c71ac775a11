//! The country table shipped in `geo/countries.csv`: ISO code, name, continent and one
//! representative point per country, so any address the database places in a country has
//! coordinates for distance ordering. Embedded at build time; the file is the source of truth.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::Point;

#[derive(Debug, Clone, PartialEq)]
pub struct Country {
    /// ISO 3166-1 alpha-2, upper case.
    pub iso: String,
    pub name: String,
    /// AF AN AS EU NA OC SA.
    pub continent: String,
    pub point: Point,
}

/// Lookup by ISO code (case-insensitive).
#[derive(Debug)]
pub struct Countries {
    by_iso: HashMap<String, Country>,
}

const EMBEDDED: &str = include_str!("../../geo/countries.csv");

impl Countries {
    /// The table compiled into the binary.
    pub fn embedded() -> &'static Countries {
        static TABLE: OnceLock<Countries> = OnceLock::new();
        TABLE.get_or_init(|| {
            Countries::parse(EMBEDDED).expect("geo/countries.csv is checked by a unit test")
        })
    }

    pub fn get(&self, iso: &str) -> Option<&Country> {
        self.by_iso.get(&iso.to_ascii_uppercase())
    }

    pub fn len(&self) -> usize {
        self.by_iso.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_iso.is_empty()
    }

    /// Parses `iso,name,continent,lat,lon` CSV (a header line first; fields may be quoted).
    pub fn parse(text: &str) -> Result<Countries, String> {
        let mut by_iso = HashMap::new();
        for (n, line) in text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let f = split_csv(line);
            let bad = |what: &str| format!("countries.csv line {}: {what}", n + 1);
            if f.len() != 5 {
                return Err(bad("expected 5 fields"));
            }
            let lat: f64 = f[3].trim().parse().map_err(|_| bad("bad lat"))?;
            let lon: f64 = f[4].trim().parse().map_err(|_| bad("bad lon"))?;
            let point = Point::new(lat, lon).ok_or_else(|| bad("lat/lon out of range"))?;
            let iso = f[0].trim().to_ascii_uppercase();
            let c = Country {
                iso: iso.clone(),
                name: f[1].trim().to_owned(),
                continent: f[2].trim().to_owned(),
                point,
            };
            if by_iso.insert(iso, c).is_some() {
                return Err(bad("duplicate ISO code"));
            }
        }
        Ok(Countries { by_iso })
    }
}

fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_table_parses_and_covers_the_world() {
        let t = Countries::embedded();
        assert!(t.len() >= 240, "only {} countries", t.len());
        let gb = t.get("gb").unwrap();
        assert_eq!(gb.continent, "EU");
        assert!((49.0..61.0).contains(&gb.point.lat), "{gb:?}");
        assert!(t.get("US").unwrap().point.lon < -60.0);
        assert!(t.get("ZZ").is_none());
    }

    #[test]
    fn quoted_fields_with_commas() {
        let t =
            Countries::parse("iso,name,continent,lat,lon\nKR,\"Korea, Republic of\",AS,37.5,127\n")
                .unwrap();
        assert_eq!(t.get("KR").unwrap().name, "Korea, Republic of");
        assert!(Countries::parse("iso,name,continent,lat,lon\nXX,x,EU,95,0\n").is_err());
    }
}
