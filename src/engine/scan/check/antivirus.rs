//! Built-in antivirus: the EICAR test file, wherever it is (body, attachment, archive entry,
//! forwarded message). Real signatures are clamd's job (`clamd.rs`).

use super::{Check, Subject};
use crate::engine::policy::finding::{Category, CheckError, Finding, Outcome};
use crate::engine::scan::magic;

const NAME: &str = "antivirus";

/// The 68-byte EICAR test string (the file may be followed by whitespace, up to 128 bytes).
pub const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// How far into an object the string is looked for (text bodies may wrap it in a few lines).
const WINDOW: usize = 4096;

#[derive(Debug)]
pub struct Eicar;

#[async_trait::async_trait]
impl Check for Eicar {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn check(&self, s: &Subject<'_>) -> Result<Outcome, CheckError> {
        let mut out = Outcome::default();
        for o in &s.decoded.objects {
            let head = &o.data[..o.data.len().min(WINDOW)];
            if magic::contains(head, EICAR) {
                out.findings.push(Finding::builtin(
                    NAME,
                    "virus.eicar",
                    Category::Virus,
                    format!("Eicar-Test-Signature in {}", o.path),
                ));
                break;
            }
        }
        Ok(out)
    }
}
