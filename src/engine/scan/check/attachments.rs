//! Attachments: blocked file types (by content) and extensions, at any depth (inside archives
//! and forwarded messages too); names whose extension lies about the content; encrypted
//! archives (their content cannot be scanned); Office documents carrying macros; archives we
//! recognise but do not unpack.
//!
//! Findings are per object but bounded: at most [`PER_NAME`] of each name per message, so a zip
//! of a thousand executables yields a short verdict.

use std::collections::HashSet;

use super::{Check, Subject};
use crate::config::policy::AttachmentConfig;
use crate::engine::policy::finding::{Category, CheckError, Finding, Outcome};
use crate::engine::scan::magic::{self, FileType};

const NAME: &str = "attachments";
/// Findings of one name kept per message.
const PER_NAME: usize = 5;

#[derive(Debug)]
pub struct AttachmentCheck {
    types: HashSet<String>,
    extensions: HashSet<String>,
}

impl AttachmentCheck {
    pub fn new(c: &AttachmentConfig) -> AttachmentCheck {
        AttachmentCheck {
            types: c
                .blocked_types
                .iter()
                .map(|t| t.to_ascii_lowercase())
                .collect(),
            extensions: c
                .blocked_extensions
                .iter()
                .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
                .collect(),
        }
    }
}

#[async_trait::async_trait]
impl Check for AttachmentCheck {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn check(&self, s: &Subject<'_>) -> Result<Outcome, CheckError> {
        let mut out = Outcome::default();
        let mut push = |name: &str, category: Category, detail: String| {
            if out.findings.iter().filter(|f| f.name == name).count() < PER_NAME {
                out.findings
                    .push(Finding::builtin(NAME, name, category, detail));
            }
        };
        for o in &s.decoded.objects {
            let ext = o.name.as_deref().and_then(magic::extension);
            if let Some(ext) = ext.as_deref().filter(|e| self.extensions.contains(*e)) {
                push(
                    "attachment.blocked_extension",
                    Category::Attachment,
                    format!("{} (.{ext})", o.path),
                );
            }
            if self.types.contains(o.kind.name()) {
                push(
                    "attachment.blocked_type",
                    Category::Attachment,
                    format!("{} is {}", o.path, o.kind.name()),
                );
            }
            if let Some(name) = &o.name
                && magic::mismatch(name, o.kind)
            {
                push(
                    "attachment.name_mismatch",
                    Category::Spam,
                    format!("{} is {}", o.path, o.kind.name()),
                );
            }
            if o.encrypted {
                push(
                    "attachment.encrypted",
                    Category::EncryptedArchive,
                    format!("{} is encrypted", o.path),
                );
            }
            if o.macros {
                push(
                    "attachment.macro",
                    Category::Macro,
                    format!("{} carries macros", o.path),
                );
            }
            if o.kind.is_opaque_archive() && o.kind != FileType::Gzip {
                push(
                    "attachment.unscanned_archive",
                    Category::Spam,
                    format!("{} is {} (not unpacked)", o.path, o.kind.name()),
                );
            }
        }
        Ok(out)
    }
}
