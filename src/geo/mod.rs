//! Where an address is: the only module that names `maxminddb` types.
//!
//! Lifecycle: a [`Database`] is opened from a MaxMind DB file (GeoIP2/GeoLite2 Country or City, or
//! the flat `country_code` shape of the shipped database) and held in a [`DatabaseHandle`]
//! (`ArcSwapOption`); [`DatabaseHandle::reload_if_changed`] swaps in a new reader when the file
//! is replaced (by rename — never rewrite an mmdb in place). A [`Locator`] is built per config
//! snapshot: CIDR overrides first (most specific wins), then the local-silo rule for loopback and
//! private addresses, then the database, then the country table for coordinates.

pub mod countries;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use ipnetwork::IpNetwork;
use serde::Deserialize;

pub use countries::{Countries, Country};

/// A point on the globe in decimal degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub lat: f64,
    pub lon: f64,
}

impl Point {
    /// `None` when out of range or not finite.
    pub fn new(lat: f64, lon: f64) -> Option<Point> {
        ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon))
            .then_some(Point { lat, lon })
    }

    /// Great-circle distance in kilometres (haversine, mean Earth radius).
    pub fn distance_km(self, other: Point) -> f64 {
        const R: f64 = 6371.0;
        let (p1, p2) = (self.lat.to_radians(), other.lat.to_radians());
        let dp = p2 - p1;
        let dl = (other.lon - self.lon).to_radians();
        let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        2.0 * R * a.sqrt().min(1.0).asin()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("cannot open geo database {path}: {source}")]
    Open {
        path: PathBuf,
        source: maxminddb::MaxMindDbError,
    },
    #[error("cannot read geo database {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An opened MaxMind DB file.
pub struct Database {
    reader: maxminddb::Reader<Vec<u8>>,
    path: PathBuf,
    identity: FileIdentity,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.path)
            .field("type", &self.reader.metadata().database_type)
            .finish()
    }
}

/// What identifies one version of a file: replaced-by-rename gives a new inode or mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn identity(path: &Path) -> std::io::Result<FileIdentity> {
    let m = std::fs::metadata(path)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(FileIdentity {
        modified: m.modified().ok(),
        len: m.len(),
        inode,
    })
}

/// The shapes we read: flat `country_code`, GeoIP2 `country.iso_code` (or `registered_country`),
/// and City's `location`.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
    #[serde(borrow, default)]
    country: Option<IsoRecord<'a>>,
    #[serde(borrow, default)]
    registered_country: Option<IsoRecord<'a>>,
    #[serde(default)]
    location: Option<LocationRecord>,
}

#[derive(Deserialize)]
struct IsoRecord<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct LocationRecord {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
}

/// What the database says about one address.
#[derive(Debug, Clone, PartialEq)]
pub struct DbAnswer {
    pub country: Option<String>,
    pub point: Option<Point>,
    /// Prefix length of the database network that matched (what the answer depends on).
    pub prefix_len: u8,
}

impl Database {
    pub fn open(path: &Path) -> Result<Database, GeoError> {
        let io = |source| GeoError::Io {
            path: path.to_path_buf(),
            source,
        };
        let identity = identity(path).map_err(io)?;
        let bytes = std::fs::read(path).map_err(io)?;
        let reader = maxminddb::Reader::from_source(bytes).map_err(|source| GeoError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Database {
            reader,
            path: path.to_path_buf(),
            identity,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `database_type` from the file's metadata, e.g. `GeoLite2-Country`.
    pub fn kind(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// Looks an address up. Lookup errors (a corrupt node) are treated as "not found".
    pub fn lookup(&self, ip: IpAddr) -> Option<DbAnswer> {
        let result = self.reader.lookup(ip).ok()?;
        let prefix_len = result.network().map(|n| n.prefix()).unwrap_or(0);
        let rec: Record = result.decode().ok()??;
        let country = rec
            .country_code
            .or(rec.country.and_then(|c| c.iso_code))
            .or(rec.registered_country.and_then(|c| c.iso_code))
            .map(str::to_ascii_uppercase);
        let point = rec
            .location
            .and_then(|l| Point::new(l.latitude?, l.longitude?));
        (country.is_some() || point.is_some()).then_some(DbAnswer {
            country,
            point,
            prefix_len,
        })
    }
}

/// A database that can be swapped when its file is replaced. Shared across config snapshots
/// whose `geo.database` path is the same, so a config reload does not re-read the file.
#[derive(Debug)]
pub struct DatabaseHandle {
    path: PathBuf,
    current: ArcSwapOption<Database>,
}

impl DatabaseHandle {
    pub fn open(path: &Path) -> Result<Arc<DatabaseHandle>, GeoError> {
        let db = Database::open(path)?;
        Ok(Arc::new(DatabaseHandle {
            path: path.to_path_buf(),
            current: ArcSwapOption::from_pointee(db),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn current(&self) -> Option<Arc<Database>> {
        self.current.load_full()
    }

    /// Re-opens the file when its identity changed. `Ok(true)` when a new reader is in force;
    /// on error the old reader stays.
    pub fn reload_if_changed(&self) -> Result<bool, GeoError> {
        let now = identity(&self.path).map_err(|source| GeoError::Io {
            path: self.path.clone(),
            source,
        })?;
        if self
            .current
            .load()
            .as_ref()
            .is_some_and(|db| db.identity == now)
        {
            return Ok(false);
        }
        let db = Database::open(&self.path)?;
        self.current.store(Some(Arc::new(db)));
        Ok(true)
    }
}

/// Why a location was chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A configured CIDR override.
    Override(IpNetwork),
    /// Loopback or private address: the local silo.
    Local,
    Database,
    /// Nothing knew the address.
    Unknown,
}

/// The answer for one address.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub country: Option<String>,
    pub point: Option<Point>,
    pub source: Source,
    /// How many leading bits of the address the answer depended on (for ECS scope).
    pub prefix_len: u8,
}

/// One configured override, resolved to a point.
#[derive(Debug, Clone)]
pub struct Override {
    pub net: IpNetwork,
    pub country: String,
    pub point: Point,
}

/// Places addresses for one config snapshot.
#[derive(Debug, Clone)]
pub struct Locator {
    db: Option<Arc<DatabaseHandle>>,
    /// Sorted most specific first.
    overrides: Vec<Override>,
    local: Option<Point>,
    countries: &'static Countries,
}

impl Locator {
    pub fn new(
        db: Option<Arc<DatabaseHandle>>,
        mut overrides: Vec<Override>,
        local: Option<Point>,
    ) -> Locator {
        overrides.sort_by_key(|o| std::cmp::Reverse(o.net.prefix()));
        Locator {
            db,
            overrides,
            local,
            countries: Countries::embedded(),
        }
    }

    pub fn database(&self) -> Option<&Arc<DatabaseHandle>> {
        self.db.as_ref()
    }

    pub fn countries(&self) -> &'static Countries {
        self.countries
    }

    pub fn locate(&self, ip: IpAddr) -> Located {
        let ip = ip.to_canonical();
        if let Some(o) = self.overrides.iter().find(|o| o.net.contains(ip)) {
            return Located {
                country: Some(o.country.clone()),
                point: Some(o.point),
                source: Source::Override(o.net),
                prefix_len: o.net.prefix(),
            };
        }
        if is_local(ip) {
            return Located {
                country: None,
                point: self.local,
                source: Source::Local,
                prefix_len: local_prefix(ip),
            };
        }
        if let Some(ans) = self.db.as_ref().and_then(|h| h.current()?.lookup(ip)) {
            let point = ans.point.or_else(|| {
                ans.country
                    .as_deref()
                    .and_then(|c| self.countries.get(c))
                    .map(|c| c.point)
            });
            return Located {
                country: ans.country,
                point,
                source: Source::Database,
                prefix_len: ans.prefix_len,
            };
        }
        Located {
            country: None,
            point: None,
            source: Source::Unknown,
            prefix_len: 0,
        }
    }
}

/// Loopback, private (RFC 1918, ULA), link-local, CGNAT and unspecified addresses: never in a
/// geo database, answered as the local silo.
pub fn is_local(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (s & 0xfe00) == 0xfc00
                || (s & 0xffc0) == 0xfe80
        }
    }
}

/// The prefix that defines each local range, so an ECS scope never claims more than it knows.
fn local_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => 8,
        IpAddr::V4(v4) if v4.octets()[0] == 10 => 8,
        IpAddr::V4(_) => 16,
        IpAddr::V6(v6) if v6.is_loopback() => 128,
        IpAddr::V6(_) => 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_are_great_circle_km() {
        let london = Point::new(51.5074, -0.1278).unwrap();
        let frankfurt = Point::new(50.1109, 8.6821).unwrap();
        let new_york = Point::new(40.7128, -74.0060).unwrap();
        let d = london.distance_km(frankfurt);
        assert!((630.0..660.0).contains(&d), "{d}");
        let d = london.distance_km(new_york);
        assert!((5550.0..5600.0).contains(&d), "{d}");
        assert_eq!(london.distance_km(london), 0.0);
        assert!(Point::new(91.0, 0.0).is_none());
        assert!(Point::new(f64::NAN, 0.0).is_none());
    }

    #[test]
    fn overrides_beat_local_and_most_specific_wins() {
        let local = Point::new(51.5, -0.1);
        let de = Point::new(50.1, 8.7).unwrap();
        let us = Point::new(40.7, -74.0).unwrap();
        let loc = Locator::new(
            None,
            vec![
                Override {
                    net: "127.0.0.0/8".parse().unwrap(),
                    country: "DE".into(),
                    point: de,
                },
                Override {
                    net: "127.0.0.3/32".parse().unwrap(),
                    country: "US".into(),
                    point: us,
                },
            ],
            local,
        );
        let a = loc.locate("127.0.0.3".parse().unwrap());
        assert_eq!(a.country.as_deref(), Some("US"));
        assert_eq!(a.prefix_len, 32);
        let b = loc.locate("127.0.0.9".parse().unwrap());
        assert_eq!(b.country.as_deref(), Some("DE"));
        let c = loc.locate("192.168.1.1".parse().unwrap());
        assert_eq!((c.source, c.point), (Source::Local, local));
        let d = loc.locate("::ffff:127.0.0.3".parse().unwrap());
        assert_eq!(
            d.country.as_deref(),
            Some("US"),
            "v4-mapped v6 is the v4 address"
        );
        let e = loc.locate("8.8.8.8".parse().unwrap());
        assert_eq!(e.source, Source::Unknown);
    }

    #[test]
    fn local_ranges() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.0.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(is_local(a.parse().unwrap()), "{a}");
        }
        for a in ["81.2.69.160", "8.8.8.8", "2001:db8::1", "100.128.0.1"] {
            assert!(!is_local(a.parse().unwrap()), "{a}");
        }
    }
}
