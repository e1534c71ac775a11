//! File types by content (magic bytes), never by name; what a name's extension promises; and the
//! two things inside a file that policies care about: macros in Office documents and encryption
//! in archives.
//!
//! Pure functions over byte slices: they look at a bounded prefix (and, for OLE2 containers,
//! search a bounded window for VBA storage names), so their cost does not grow with the file.

/// A file type recognised by content. [`FileType::name`] is what policies write in
/// `attachments.blocked_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// Windows PE (`MZ`): .exe, .dll, .scr, .sys.
    Exe,
    Elf,
    /// Mach-O (thin); fat Mach-O shares its magic with Java classes: see `JavaClass`.
    MachO,
    JavaClass,
    /// Windows shortcut.
    Lnk,
    /// OLE2 compound file holding a Windows Installer database.
    Msi,
    /// OLE2 compound file: Office 97–2003 documents (.doc, .xls, .ppt), .msg.
    Ole2,
    Zip,
    /// Office Open XML (.docx, .xlsx, .pptx and their macro-enabled variants): a zip.
    Ooxml,
    /// Java archive: a zip with a manifest.
    Jar,
    OpenDocument,
    Rar,
    SevenZip,
    Gzip,
    Bzip2,
    Xz,
    Tar,
    Cab,
    Iso,
    Pdf,
    Rtf,
    Png,
    Jpeg,
    Gif,
    Bmp,
    Tiff,
    Webp,
    Html,
    /// An RFC 5322 message (e.g. an .eml attachment).
    Email,
    /// Script with a `#!` line.
    Script,
    Text,
    Unknown,
}

/// Every type name a policy may list, in [`FileType::name`] spelling.
pub const TYPE_NAMES: &[&str] = &[
    "exe",
    "elf",
    "macho",
    "java-class",
    "lnk",
    "msi",
    "ole2",
    "zip",
    "ooxml",
    "jar",
    "odf",
    "rar",
    "7z",
    "gzip",
    "bzip2",
    "xz",
    "tar",
    "cab",
    "iso",
    "pdf",
    "rtf",
    "png",
    "jpeg",
    "gif",
    "bmp",
    "tiff",
    "webp",
    "html",
    "email",
    "script",
    "text",
    "unknown",
];

impl FileType {
    pub fn name(self) -> &'static str {
        match self {
            FileType::Exe => "exe",
            FileType::Elf => "elf",
            FileType::MachO => "macho",
            FileType::JavaClass => "java-class",
            FileType::Lnk => "lnk",
            FileType::Msi => "msi",
            FileType::Ole2 => "ole2",
            FileType::Zip => "zip",
            FileType::Ooxml => "ooxml",
            FileType::Jar => "jar",
            FileType::OpenDocument => "odf",
            FileType::Rar => "rar",
            FileType::SevenZip => "7z",
            FileType::Gzip => "gzip",
            FileType::Bzip2 => "bzip2",
            FileType::Xz => "xz",
            FileType::Tar => "tar",
            FileType::Cab => "cab",
            FileType::Iso => "iso",
            FileType::Pdf => "pdf",
            FileType::Rtf => "rtf",
            FileType::Png => "png",
            FileType::Jpeg => "jpeg",
            FileType::Gif => "gif",
            FileType::Bmp => "bmp",
            FileType::Tiff => "tiff",
            FileType::Webp => "webp",
            FileType::Html => "html",
            FileType::Email => "email",
            FileType::Script => "script",
            FileType::Text => "text",
            FileType::Unknown => "unknown",
        }
    }

    /// A zip container whose entries we unpack and scan.
    pub fn is_zip_family(self) -> bool {
        matches!(
            self,
            FileType::Zip | FileType::Ooxml | FileType::Jar | FileType::OpenDocument
        )
    }

    /// Archives we recognise but do not unpack (their content is not scanned by the built-in
    /// scanners; clamd unpacks them).
    pub fn is_opaque_archive(self) -> bool {
        matches!(
            self,
            FileType::Rar
                | FileType::SevenZip
                | FileType::Gzip
                | FileType::Bzip2
                | FileType::Xz
                | FileType::Tar
                | FileType::Cab
                | FileType::Iso
        )
    }
}

/// The type of `data` by its content.
pub fn detect(data: &[u8]) -> FileType {
    let starts = |m: &[u8]| data.starts_with(m);
    if starts(b"MZ") && data.len() >= 64 {
        return FileType::Exe;
    }
    if starts(b"\x7fELF") {
        return FileType::Elf;
    }
    if starts(&[0xfe, 0xed, 0xfa, 0xce])
        || starts(&[0xfe, 0xed, 0xfa, 0xcf])
        || starts(&[0xce, 0xfa, 0xed, 0xfe])
        || starts(&[0xcf, 0xfa, 0xed, 0xfe])
    {
        return FileType::MachO;
    }
    if starts(&[0xca, 0xfe, 0xba, 0xbe]) {
        return FileType::JavaClass;
    }
    if starts(&[0x4c, 0, 0, 0, 0x01, 0x14, 0x02, 0]) {
        return FileType::Lnk;
    }
    if starts(&[0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1]) {
        return if contains(window(data), &MSI_CLSID) {
            FileType::Msi
        } else {
            FileType::Ole2
        };
    }
    if starts(b"PK\x03\x04") || starts(b"PK\x05\x06") || starts(b"PK\x07\x08") {
        return zip_flavour(data);
    }
    if starts(b"Rar!\x1a\x07") {
        return FileType::Rar;
    }
    if starts(&[b'7', b'z', 0xbc, 0xaf, 0x27, 0x1c]) {
        return FileType::SevenZip;
    }
    if starts(&[0x1f, 0x8b]) {
        return FileType::Gzip;
    }
    if starts(b"BZh") {
        return FileType::Bzip2;
    }
    if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return FileType::Xz;
    }
    if starts(b"MSCF") {
        return FileType::Cab;
    }
    if data.get(257..262) == Some(b"ustar") {
        return FileType::Tar;
    }
    if data.get(0x8001..0x8006) == Some(b"CD001") {
        return FileType::Iso;
    }
    if starts(b"%PDF-") {
        return FileType::Pdf;
    }
    if starts(b"{\\rtf") {
        return FileType::Rtf;
    }
    if starts(b"\x89PNG\r\n\x1a\n") {
        return FileType::Png;
    }
    if starts(&[0xff, 0xd8, 0xff]) {
        return FileType::Jpeg;
    }
    if starts(b"GIF87a") || starts(b"GIF89a") {
        return FileType::Gif;
    }
    if starts(b"BM") && data.len() >= 26 && data.get(6..10) == Some(&[0, 0, 0, 0]) {
        return FileType::Bmp;
    }
    if starts(b"II*\0") || starts(b"MM\0*") {
        return FileType::Tiff;
    }
    if starts(b"RIFF") && data.get(8..12) == Some(b"WEBP") {
        return FileType::Webp;
    }
    if starts(b"#!") {
        return FileType::Script;
    }
    text_flavour(data)
}

/// `{D0CF11E0…}` containers whose root CLSID is `000C1084-0000-0000-C000-000000000046`.
const MSI_CLSID: [u8; 16] = [
    0x84, 0x10, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x46,
];

/// How far into a file name searches look (OLE2 directories of small documents sit early;
/// macro-bearing ones are found in practice well within this).
const SEARCH_WINDOW: usize = 4 << 20;

fn window(data: &[u8]) -> &[u8] {
    &data[..data.len().min(SEARCH_WINDOW)]
}

fn zip_flavour(data: &[u8]) -> FileType {
    // Local file names are in the clear in the first headers of the archive.
    let head = &data[..data.len().min(64 << 10)];
    if contains(head, b"[Content_Types].xml") {
        FileType::Ooxml
    } else if contains(head, b"META-INF/MANIFEST.MF") {
        FileType::Jar
    } else if data.get(30..38) == Some(b"mimetype") && contains(head, b"application/vnd.oasis") {
        FileType::OpenDocument
    } else {
        FileType::Zip
    }
}

fn text_flavour(data: &[u8]) -> FileType {
    let head = &data[..data.len().min(1024)];
    if head.is_empty() {
        return FileType::Unknown;
    }
    let trimmed = trim_start(head);
    let lower: Vec<u8> = trimmed
        .iter()
        .take(15)
        .map(u8::to_ascii_lowercase)
        .collect();
    if lower.starts_with(b"<!doctype html") || lower.starts_with(b"<html") {
        return FileType::Html;
    }
    let printable = head
        .iter()
        .filter(|&&b| b >= 0x20 || matches!(b, b'\t' | b'\r' | b'\n' | 0x0c))
        .count();
    if printable * 100 < head.len() * 95 {
        return FileType::Unknown;
    }
    if looks_like_email(head) {
        FileType::Email
    } else {
        FileType::Text
    }
}

fn looks_like_email(head: &[u8]) -> bool {
    let mut fields = 0;
    for line in head.split(|&b| b == b'\n').take(8) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| b.is_ascii_graphic()) {
            return false;
        }
        let known = [
            &b"from"[..],
            b"received",
            b"return-path",
            b"subject",
            b"to",
            b"date",
            b"message-id",
            b"mime-version",
            b"delivered-to",
        ];
        if known.iter().any(|k| name.eq_ignore_ascii_case(k)) {
            fields += 1;
        }
    }
    fields >= 2
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    // A UTF-8 byte order mark.
    let b = &b[n..];
    b.strip_prefix(b"\xef\xbb\xbf").unwrap_or(b)
}

/// Whether an OLE2 or OOXML document carries VBA macros.
pub fn has_macros(kind: FileType, data: &[u8]) -> bool {
    match kind {
        // Directory entries are UTF-16LE names: the `_VBA_PROJECT` stream or `Macros` storage.
        FileType::Ole2 => {
            let w = window(data);
            contains(w, &utf16le("_VBA_PROJECT")) || contains(w, &utf16le("Macros"))
        }
        // Entry names are in the clear in local headers and the central directory.
        FileType::Ooxml => contains(window(data), b"vbaProject.bin"),
        _ => false,
    }
}

fn utf16le(s: &str) -> Vec<u8> {
    s.bytes().flat_map(|b| [b, 0]).collect()
}

/// Naive search; callers pass bounded windows.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    memchr::memmem::find(haystack, needle)
}

/// The lower-case extension of a file name (`"Invoice.PDF.exe"` -> `"exe"`).
pub fn extension(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let (stem, ext) = base.rsplit_once('.')?;
    if stem.is_empty() && !base.starts_with('.') || ext.is_empty() || ext.len() > 10 {
        return None;
    }
    Some(ext.trim().to_ascii_lowercase())
}

/// The types a file with this extension should have; `None` for extensions we do not judge.
pub fn expected_types(ext: &str) -> Option<&'static [FileType]> {
    use FileType::*;
    Some(match ext {
        "pdf" => &[Pdf],
        "jpg" | "jpeg" | "jpe" => &[Jpeg],
        "png" => &[Png],
        "gif" => &[Gif],
        "bmp" => &[Bmp],
        "tif" | "tiff" => &[Tiff],
        "webp" => &[Webp],
        "zip" => &[Zip, Ooxml, Jar, OpenDocument],
        "docx" | "xlsx" | "pptx" | "docm" | "xlsm" | "pptm" | "dotx" | "dotm" | "xltm" => &[Ooxml],
        "doc" | "dot" => &[Ole2, Rtf],
        "xls" | "ppt" | "msg" | "xlt" | "pps" => &[Ole2],
        "odt" | "ods" | "odp" => &[OpenDocument],
        "rtf" => &[Rtf],
        "rar" => &[Rar],
        "7z" => &[SevenZip],
        "gz" | "tgz" => &[Gzip],
        "bz2" => &[Bzip2],
        "xz" => &[Xz],
        "tar" => &[Tar],
        "cab" => &[Cab],
        "iso" => &[Iso],
        "exe" | "dll" | "scr" | "sys" | "cpl" => &[Exe],
        "msi" => &[Msi],
        "jar" => &[Jar, Zip],
        "lnk" => &[Lnk],
        "txt" | "csv" | "log" => &[Text, Email],
        "htm" | "html" => &[Html, Text],
        "eml" => &[Email, Text],
        _ => return None,
    })
}

/// A name whose extension promises something other than what the content is. Unknown
/// contents and unjudged extensions never mismatch.
pub fn mismatch(name: &str, kind: FileType) -> bool {
    if kind == FileType::Unknown {
        return false;
    }
    match extension(name).as_deref().and_then(expected_types) {
        Some(types) => !types.contains(&kind),
        None => false,
    }
}

/// Whether a zip's entry is encrypted: bit 0 of the general-purpose flags of a local header
/// (checked again per entry by the unpacker).
pub fn zip_local_encrypted(data: &[u8]) -> bool {
    data.starts_with(b"PK\x03\x04") && data.get(6).is_some_and(|f| f & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_by_content_not_name() {
        let mut exe = b"MZ".to_vec();
        exe.resize(128, 0);
        assert_eq!(detect(&exe), FileType::Exe);
        assert_eq!(detect(b"%PDF-1.7\n"), FileType::Pdf);
        assert_eq!(detect(b"\x89PNG\r\n\x1a\n...."), FileType::Png);
        assert_eq!(detect(b"  <!DOCTYPE html><p>"), FileType::Html);
        assert_eq!(detect(b"hello there\r\n"), FileType::Text);
        assert_eq!(detect(&[0, 1, 2, 3, 4, 5, 6, 7]), FileType::Unknown);
        assert_eq!(
            detect(b"From: a@b.example\r\nTo: c@d.example\r\nSubject: x\r\n\r\nhi"),
            FileType::Email
        );
    }

    #[test]
    fn extension_mismatch() {
        let mut exe = b"MZ".to_vec();
        exe.resize(128, 0);
        assert!(mismatch("invoice.pdf", detect(&exe)));
        assert!(!mismatch("invoice.pdf", FileType::Pdf));
        assert!(!mismatch("notes.weird", FileType::Exe));
        assert!(!mismatch("data.pdf", FileType::Unknown));
        assert_eq!(extension("a.PDF.Exe").as_deref(), Some("exe"));
        assert_eq!(extension("noext"), None);
        assert_eq!(extension(".bashrc").as_deref(), Some("bashrc"));
    }

    #[test]
    fn macros_in_ole2_and_ooxml() {
        let mut ole = vec![0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1];
        ole.resize(512, 0);
        assert_eq!(detect(&ole), FileType::Ole2);
        assert!(!has_macros(FileType::Ole2, &ole));
        ole.extend(utf16le("_VBA_PROJECT"));
        assert!(has_macros(FileType::Ole2, &ole));
        assert!(has_macros(
            FileType::Ooxml,
            b"PK\x03\x04....[Content_Types].xml....word/vbaProject.bin"
        ));
    }

    #[test]
    fn find_is_exact() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"aaaa", b"aa"), Some(0));
        assert_eq!(find(b"xyz", b""), None);
    }
}
