#!/usr/bin/env python3
"""Every key of the config model is exercised by a test.

Reads the schema (the serde structs under src/config/), walks it from the file's top-level
sections, and lists every key path (`engine.delivery.retry_base`, `policy.*.thresholds.tag`,
`tenant.delivery_rate`). A key counts as exercised when a test sets it:
- in TOML written by a test (tests/it/**, the fleet's generated configs in tests/fleet/, the
  unit tests after `#[cfg(test)]` in src/, and the files of `#[cfg(test)] mod x;`): `key = ...` under its `[section]` header, or inside
  an inline table `section = { key = ... }`;
- in Rust test code that builds the section's struct: `key: ...` in a `StructName { ... }`
  literal or `.key = ...` after a value of that struct is named in the same file.
- a policy key set for one tenant (`[policy.NAME.tenant.ID]` overrides any policy key) counts
  as that policy key;
- failing those, a test file that assigns the key's name (`key = `, `key: `) and names its parent
  section (`webmail`, `delivery`, `soa`…): tests often inject lines into a section of a template.
A section (a key holding a table) counts when any key inside it does.
A key no test sets is a key whose effect nobody checks: the script prints each one and exits 1,
except for the keys in ALLOWED below, each with the reason it is allowed for now.

Usage: python3 ops/check_config_keys.py [--list]   (--list prints every key with its witness)
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CONFIG = os.path.join(ROOT, "src", "config")

# Keys no test exercises yet, each with why. An entry here is a debt, not a pass: remove it
# with the change that makes the key do what it says (and its test).
ALLOWED = {}

# The file's top level: section -> (struct, how it repeats). Config itself is assembled by hand
# in load.rs, so it is listed here rather than parsed.
TOP = {
    "node": "NodeConfig",
    "ops": "OpsConfig",
    "geo": "GeoConfig",
    "regions": "map:RegionConfig",
    "silo": "list:SiloConfig",
    "tenant": "list:TenantConfig",
    "policy": "map:PolicyConfig",
    "edge": "EdgeConfig",
    "engine": "EngineConfig",
    "dns": "DnsConfig",
    "shared": "SharedConfig",
}
# Top-level keys that are not sections.
TOP_KEYS = ["include", "tenant_files"]


def strip_comments(text):
    return "\n".join(re.sub(r"(^|\s)//.*", "", l) for l in text.splitlines())


def parse_structs():
    """struct name -> list of (key, type) for serde structs under src/config/."""
    structs = {}
    for name in sorted(os.listdir(CONFIG)):
        if not name.endswith(".rs"):
            continue
        text = open(os.path.join(CONFIG, name), encoding="utf-8").read()
        for m in re.finditer(r"((?:#\[[^\]]*\]\s*)*)pub struct (\w+)\s*\{(.*?)\n\}", text, re.S):
            attrs, sname, body = m.group(1), m.group(2), m.group(3)
            if "Deserialize" not in attrs:
                continue
            fields = []
            pending = []
            for line in body.splitlines():
                s = line.strip()
                if s.startswith("#["):
                    pending.append(s)
                    continue
                fm = re.match(r"pub (\w+):\s*(.+?),?$", s)
                if fm:
                    key, ty = fm.group(1), fm.group(2)
                    joined = " ".join(pending)
                    if "flatten" in joined:
                        pending = []
                        continue
                    rm = re.search(r'rename\s*=\s*"([^"]+)"', joined)
                    if rm:
                        key = rm.group(1)
                    fields.append((key, ty))
                    pending = []
                elif s and not s.startswith("///"):
                    pending = []
            structs[sname] = fields
    return structs


def inner_type(ty, structs):
    """The struct a field's type leads to, and whether it is a map (dynamic key)."""
    for wrapper in ("Option<", "Vec<", "Box<"):
        while ty.startswith(wrapper):
            ty = ty[len(wrapper):-1]
    m = re.match(r"(?:BTreeMap|HashMap)<String,\s*(.+)>$", ty)
    if m:
        t, _ = inner_type(m.group(1), structs)
        return t, True
    ty = ty.split("::")[-1]
    return (ty if ty in structs else None), False


def key_paths(structs):
    """Every key path with the struct that holds it: ("engine.delivery.relay", "DeliveryConfig", "relay")."""
    out = [(k, None, k) for k in TOP_KEYS]
    seen = set()

    def walk(prefix, sname):
        if (prefix, sname) in seen:
            return
        seen.add((prefix, sname))
        for key, ty in structs.get(sname, []):
            path = f"{prefix}.{key}"
            out.append((path, sname, key))
            sub, is_map = inner_type(ty, structs)
            if sub:
                walk(f"{path}.*" if is_map else path, sub)

    for section, spec in TOP.items():
        kind, _, sname = spec.rpartition(":")
        walk(f"{section}.*" if kind == "map" else section, sname)
    return out


def test_texts():
    """(file, text) of everything that counts as a test."""
    texts = []
    for d in ("tests/it", "tests/fleet", "tests/browser", "bench"):
        for base, _, files in os.walk(os.path.join(ROOT, d)):
            for f in files:
                if f.endswith((".rs", ".py", ".toml", ".sh")):
                    p = os.path.join(base, f)
                    if d == "bench" and not f.endswith(".rs"):
                        continue  # bench scripts run configs, they do not assert on them
                    texts.append((p, open(p, encoding="utf-8").read()))
    test_modules = set()
    for base, _, files in os.walk(os.path.join(ROOT, "src")):
        for f in files:
            if f.endswith(".rs"):
                p = os.path.join(base, f)
                t = open(p, encoding="utf-8").read()
                i = t.find("#[cfg(test)]")
                if i >= 0:
                    texts.append((p, t[i:]))
                test_modules.update(test_module_files(p, t))
    for p in sorted(test_modules):
        if os.path.exists(p):
            texts.append((p, open(p, encoding="utf-8").read()))
    return texts


def test_module_files(path, text):
    """Files of the `#[cfg(test)] mod NAME;` declarations in `path` (with `#[path]` when given):
    unit tests kept in a file of their own, all of it test code."""
    here = os.path.dirname(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    # `mod x;` in foo.rs lives in foo/x.rs; in mod.rs, lib.rs or main.rs beside it.
    mod_dir = here if stem in ("mod", "lib", "main") else os.path.join(here, stem)
    out = []
    for m in re.finditer(r'#\[cfg\(test\)\]\s*(?:#\[path\s*=\s*"([^"]+)"\]\s*)?mod\s+(\w+)\s*;', text):
        explicit, name = m.group(1), m.group(2)
        if explicit:
            out.append(os.path.join(here, explicit))
        else:
            out.append(os.path.join(mod_dir, f"{name}.rs"))
            out.append(os.path.join(mod_dir, name, "mod.rs"))
    return out


DYNAMIC_AFTER = {"policy": 1, "regions": 1}


def normalise(section):
    """A TOML header path with its dynamic segments (policy names, tenant ids) as `*`."""
    parts = [p.strip().strip('"') for p in section.split(".") if p.strip()]
    out = []
    i = 0
    while i < len(parts):
        out.append(parts[i])
        if parts[i] in ("policy", "regions") and len(out) == 1 and i + 1 < len(parts):
            out.append("*")
            i += 1
        elif parts[i] == "tenant" and len(out) >= 2 and out[0] in ("policy", "dns") and i + 1 < len(parts):
            out.append("*")
            i += 1
        elif parts[i] == "user" and len(out) >= 4 and out[0] == "policy" and i + 1 < len(parts):
            out.append("*")
            i += 1
        i += 1
    return ".".join(out)


def toml_keys(text):
    """Key paths set in TOML fragments of a text: `[a.b]` headers followed by `k = v` lines, and
    inline tables `k = { x = 1, y = { z = 2 } }`."""
    found = set()
    section = ""
    for raw in text.splitlines():
        # A line may open a Rust string (`"`, `r"`, `r#"`) before its TOML.
        line = re.sub(r'^(?:r#*)?"', "", raw.strip()).strip()
        for piece in re.split(r"\\n", line):
            piece = piece.strip()
            hm = re.match(r"^\[\[?\s*([A-Za-z0-9_.\"-]+)\s*\]\]?", piece)
            if hm:
                section = normalise(hm.group(1))
                continue
            km = re.match(r'^([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*)$', piece)
            if not km:
                continue
            key, rest = km.group(1), km.group(2)
            full = normalise(f"{section}.{key}" if section else key)
            found.add(full)
            # inline tables, one level of nesting is enough for our configs
            for im in re.finditer(r"\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}", rest):
                for ik in re.findall(r"(?:^|[,{]\s*)([A-Za-z_][A-Za-z0-9_]*)\s*=", im.group(1)):
                    found.add(f"{full}.{ik}")
                for nk, nbody in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*\{([^{}]*)\}", im.group(1)):
                    for ik in re.findall(r"(?:^|,)\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", nbody):
                        found.add(f"{full}.{nk}.{ik}")
    # `[policy.NAME.tenant.ID]` sets any policy key for one tenant (`dns.attempts`, `urls.…`):
    # such a key is the policy's key. Its own lists (allow, block, user) are keys of their own.
    for k in list(found):
        m = re.match(r"policy\.\*\.tenant\.\*\.(.+)$", k)
        if m and m.group(1).split(".")[0] not in ("allow", "block", "user"):
            found.add(f"policy.*.{m.group(1)}")
    return found


def main():
    structs = parse_structs()
    paths = key_paths(structs)
    texts = test_texts()
    toml_found = {}
    for f, t in texts:
        for k in toml_keys(t):
            toml_found.setdefault(k, f)
    missing = []
    report = []
    witnesses = {}
    for path, sname, key in paths:
        witness = toml_found.get(path)
        if not witness and sname:
            lit = re.compile(rf"\b{sname}\s*\{{[^}}]*\b{key}\s*:", re.S)
            field = re.compile(rf"\.{key}\s*=[^=]")
            for f, t in texts:
                if f.endswith(".rs") and (lit.search(t) or (sname in t and field.search(t))):
                    witness = f
                    break
        if not witness:
            parent = [seg for seg in path.split(".")[:-1] if seg != "*"]
            assign = re.compile(rf"(^|[\s\\n\"{{,]){re.escape(key)}\s*=[^=]", re.M)
            named = re.compile(rf"\b{re.escape(parent[-1])}\b") if parent else None
            for f, t in texts:
                if assign.search(t) and (named is None or named.search(t)):
                    witness = f
                    break
        witnesses[path] = witness
    # A section counts when anything inside it does.
    for path, _, _ in paths:
        if not witnesses[path]:
            inner = [w for p, w in witnesses.items() if p.startswith(path + ".") and w]
            if inner:
                witnesses[path] = inner[0]
    for path, _, _ in paths:
        witness = witnesses[path]
        rel = os.path.relpath(witness, ROOT) if witness else None
        report.append((path, rel))
        if not witness and path not in ALLOWED:
            missing.append(path)
    if "--list" in sys.argv:
        for p, w in report:
            print(f"{p:55} {w or '-'}")
    for p, why in sorted(ALLOWED.items()):
        print(f"allowed for now: {p} ({why})")
    for p in missing:
        print(f"FAIL: no test sets config key {p}")
    print(f"{len(paths)} keys, {len(paths) - len(missing) - len(ALLOWED)} exercised by tests, "
          f"{len(ALLOWED)} allowed, {len(missing)} missing")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
